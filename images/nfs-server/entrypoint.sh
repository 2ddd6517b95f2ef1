#!/bin/sh
# Start the kernel NFS server for the exports in /etc/exports, stop it cleanly on TERM.
# Runs privileged on the storage node's network (the Deployment in components/storage/nfs.py).
set -eu

stop() {
  echo "nfs-server: stopping"
  rpc.nfsd 0 || true          # no more nfsd threads: clients retry (hard mounts) until we are back
  exportfs -ua || true
  [ -n "${mountd_pid:-}" ] && kill "$mountd_pid" 2>/dev/null || true
  exit 0
}
trap stop TERM INT

if ! grep -qs " /proc/fs/nfsd " /proc/mounts; then
  mount -t nfsd nfsd /proc/fs/nfsd
fi
[ -s /etc/exports ] || { echo "nfs-server: /etc/exports is empty" >&2; exit 1; }
exportfs -ra                  # fails on a syntax error in /etc/exports: better than serving nothing
rpc.mountd --foreground &     # export cache upcalls of nfsd (NFSv4 needs them too)
mountd_pid=$!
rpc.nfsd                      # versions, transports and threads from /etc/nfs.conf
echo "nfs-server: serving $(exportfs -s | wc -l) exports (NFSv4 only)"
while kill -0 "$mountd_pid" 2>/dev/null; do
  sleep 5 &
  wait $! || true
done
echo "nfs-server: rpc.mountd exited" >&2
exit 1
