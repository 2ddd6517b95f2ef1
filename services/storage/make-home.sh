#!/bin/sh
# Init container of every notebook: make the user's private home on first spawn.
#
# usage: make-home.sh HOMES_ROOT USER
#
# Runs AS THE USER (their uid and private gid, non-root, no capabilities), with the NFS homes root
# mounted at HOMES_ROOT. That root is root-owned 1733 on the server: anyone may create an entry,
# nobody may list the others or remove one that is not theirs. A missing home is created 0700; an
# existing one must belong to this uid, or the spawn fails here, before the notebook mounts it (the
# NFS server's directory keeper hands a squatted home to its rightful owner within one pass, and the
# kubelet retries this container, so the notebook then starts).
set -u

fail() { echo "aiinfn-home: $*" >&2; exit 1; }

root=${1:-}
user=${2:-}
[ -n "$root" ] && [ -n "$user" ] || fail "usage: make-home.sh HOMES_ROOT USER"
case "$user" in ''|[!a-z0-9]*|*[!a-z0-9._-]*) fail "'$user' is not a POSIX user name" ;; esac
uid=$(id -u)
[ "$uid" != 0 ] || fail "refusing to run as root (the home would belong to nobody)"
[ -d "$root" ] || fail "the homes share is not mounted at $root"
home="$root/$user"

if [ ! -e "$home" ] && [ ! -L "$home" ]; then
    if mkdir -m 0700 "$home" 2>/dev/null; then
        echo "aiinfn-home: created the home of $user (uid $uid, mode 0700)"
        exit 0
    fi
    # made by someone else meanwhile: checked below like any existing entry
fi
[ ! -L "$home" ] || fail "the home of $user is a symbolic link, not a directory: refusing it; the storage keeper sets it aside within a minute, then this retries"
[ -d "$home" ] || fail "the home of $user is not a directory: refusing it; the storage keeper sets it aside within a minute, then this retries"
owner=$(stat -c %u "$home") || fail "cannot read the owner of the home of $user"
if [ "$owner" != "$uid" ]; then
    fail "the home directory of $user exists but belongs to uid $owner, not to $user (uid $uid): refusing to start on it. The storage keeper gives it back to $user within a minute and this retries; if it persists, tell the operators."
fi
chmod 0700 "$home" || fail "cannot set mode 0700 on the home of $user"
echo "aiinfn-home: the home of $user is ready (uid $uid, mode 0700)"
