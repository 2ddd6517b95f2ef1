#!/bin/sh
# Create and keep the NFS directory layout: homes private, project folders shared by their group.
#
# usage: prepare-dirs.sh ROOT LAYOUT_FILE [LOOP_SECONDS]
#
# Each non-comment line of LAYOUT_FILE is "MODE UID GID RELPATH" (octal mode, numeric ids, a path
# relative to ROOT; parents listed before children). A missing directory is created; an existing one
# gets its owner and mode set back (not recursively: file contents are never touched). With
# LOOP_SECONDS the layout is re-read and re-applied forever, so a user or project added to the stack
# config gets its directory without restarting the NFS server (the ConfigMap volume updates in place).
set -eu

root=${1:?usage: prepare-dirs.sh ROOT LAYOUT_FILE [LOOP_SECONDS]}
layout=${2:?usage: prepare-dirs.sh ROOT LAYOUT_FILE [LOOP_SECONDS]}
loop=${3:-}

[ -d "$root" ] || { echo "prepare-dirs: $root is not a directory (is the data volume mounted?)" >&2; exit 1; }

apply() {
    status=0
    while read -r mode uid gid rel extra; do
        case "$mode" in ''|'#'*) continue ;; esac
        if [ -n "${extra:-}" ] || [ -z "${rel:-}" ]; then
            echo "prepare-dirs: malformed line: $mode $uid $gid ${rel:-} ${extra:-}" >&2; status=1; continue
        fi
        case "$mode" in *[!0-7]*) echo "prepare-dirs: bad mode $mode for $rel" >&2; status=1; continue ;; esac
        case "$uid$gid" in *[!0-9]*) echo "prepare-dirs: bad owner $uid:$gid for $rel" >&2; status=1; continue ;; esac
        case "$rel" in
            /*|..|../*|*/..|*/../*) echo "prepare-dirs: refusing path outside the root: $rel" >&2; status=1; continue ;;
        esac
        dir="$root/$rel"
        if [ -L "$dir" ]; then
            echo "prepare-dirs: refusing symlink $rel" >&2; status=1; continue
        fi
        if [ ! -d "$dir" ]; then
            mkdir "$dir" || { status=1; continue; }
            echo "prepare-dirs: created $rel ($mode $uid:$gid)"
        fi
        chown "$uid:$gid" "$dir" && chmod "$mode" "$dir" || status=1
    done < "$layout"
    return $status
}

if [ -z "$loop" ]; then
    apply
    exit $?
fi
while :; do
    apply || echo "prepare-dirs: some entries failed; retrying in ${loop}s" >&2
    sleep "$loop"
done
