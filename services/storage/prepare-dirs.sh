#!/bin/sh
# Create and keep the NFS directory layout: homes private, project folders shared by their group.
#
# usage: prepare-dirs.sh ROOT LAYOUT_FILE [LOOP_SECONDS]
#        prepare-dirs.sh --uids LAYOUT_FILE NAME...     print "NAME UID" (the id scheme, for checks)
#
# Each non-comment line of LAYOUT_FILE is "MODE UID GID RELPATH" (octal mode, numeric ids, a path
# relative to ROOT; parents listed before children), or a directive:
#   @homes RELPATH   the homes root: every entry under it is the private home of the user it names
#   @uid NAME UID    a pinned uid (aiinfn:storage.uidOverrides) that replaces NAME's hash-derived one
# A missing directory is created; an existing one gets its owner and mode set back (not recursively:
# file contents are never touched). With LOOP_SECONDS the layout is re-read and re-applied forever,
# so a user or project added to the stack config gets its directory without restarting the NFS
# server (the ConfigMap volume updates in place).
#
# Homes are self-service: the homes root is root 1733 (anyone may create an entry, nobody may list
# or remove another's), and a notebook's init container, running as the user, creates its own home.
# Every pass enforces, on EVERY entry under the homes root, owner uid(name):uid(name) and mode 0700,
# with uid(name) = 100000 + (first 8 bytes of sha256("user:NAME")) mod 800000 unless pinned by @uid
# (the scheme of aiinfn/config/storage.py; a test checks that the two agree). So a directory that
# someone made under another user's name is handed to that user within one pass; if the squatter
# left anything inside it (files, links that could plant configuration), the whole directory is
# moved to .system/quarantine (root only) and an empty home is made instead. Entries that are not a
# directory, or whose name is not a user name, are quarantined too. Nothing is ever deleted.
set -eu

USER_ID_MIN=100000
USER_ID_SPAN=800000
overrides=" "
homes_rel=""
qn=0

# uid of a user name: the @uid pin if any, else the hash (digit-by-digit mod in awk: the 64-bit
# prefix does not fit a shell or awk number).
user_uid() {
    case "$overrides" in
        *" $1="*) v=${overrides#* "$1"=}; echo "${v%% *}"; return 0 ;;
    esac
    printf 'user:%s' "$1" | sha256sum | cut -c1-16 | awk -v min="$USER_ID_MIN" -v span="$USER_ID_SPAN" '{
        r = 0
        for (i = 1; i <= 16; i++) r = (r * 16 + index("0123456789abcdef", substr($1, i, 1)) - 1) % span
        printf "%d\n", min + r
    }'
}

# a POSIX user name as aiinfn:storage.users accepts it: [a-z0-9][a-z0-9._-]{0,63}
valid_name() {
    case "$1" in ''|[!a-z0-9]*|*[!a-z0-9._-]*) return 1 ;; esac
    [ "${#1}" -le 64 ]
}

read_directives() {
    overrides=" "
    homes_rel=""
    while read -r key a b extra; do
        case "$key" in
            @homes) homes_rel=$a ;;
            @uid)
                if valid_name "${a:-}" && [ -n "${b:-}" ] && [ -z "${extra:-}" ]; then
                    case "$b" in *[!0-9]*) echo "prepare-dirs: bad uid $b for $a" >&2 ;; *) overrides="$overrides$a=$b " ;; esac
                else
                    echo "prepare-dirs: malformed line: $key ${a:-} ${b:-}" >&2
                fi ;;
        esac
    done < "$1"
}

if [ "${1:-}" = "--uids" ]; then
    read_directives "${2:?usage: prepare-dirs.sh --uids LAYOUT_FILE NAME...}"
    shift 2
    for n in "$@"; do echo "$n $(user_uid "$n")"; done
    exit 0
fi

root=${1:?usage: prepare-dirs.sh ROOT LAYOUT_FILE [LOOP_SECONDS]}
layout=${2:?usage: prepare-dirs.sh ROOT LAYOUT_FILE [LOOP_SECONDS]}
loop=${3:-}

[ -d "$root" ] || { echo "prepare-dirs: $root is not a directory (is the data volume mounted?)" >&2; exit 1; }

# The storage node writes this mark when it formats the NFS data volume; a tree without it is the
# boot disk's own directory (the volume did not attach or mount): never serve or back it up.
require_volume_mark() {
    [ -f "$1/.aiinfn-nfs-volume" ] && return 0
    echo "prepare-dirs: $1 has no .aiinfn-nfs-volume mark: the NFS data volume is not mounted there; refusing" >&2
    exit 1
}
require_volume_mark "$root"

apply() {
    status=0
    while read -r mode uid gid rel extra; do
        case "$mode" in ''|'#'*|@*) continue ;; esac
        if [ -n "${extra:-}" ] || [ -z "${rel:-}" ]; then
            echo "prepare-dirs: malformed line: $mode $uid $gid ${rel:-} ${extra:-}" >&2; status=1; continue
        fi
        case "$mode" in *[!0-7]*) echo "prepare-dirs: bad mode $mode for $rel" >&2; status=1; continue ;; esac
        case "$uid$gid" in *[!0-9]*) echo "prepare-dirs: bad owner $uid:$gid for $rel" >&2; status=1; continue ;; esac
        case "$rel" in
            /*|..|../*|*/..|*/../*) echo "prepare-dirs: refusing path outside the root: $rel" >&2; status=1; continue ;;
        esac
        dir="$root/$rel"
        if [ -n "$homes_rel" ] && [ "${rel%/*}" = "$homes_rel" ] && [ "$rel" != "$homes_rel" ]; then
            # A listed user's home: made here if missing (root-owned until the chown, so nobody can
            # swap it in between); an existing one is left to sweep_homes, which checks its owner.
            if [ ! -e "$dir" ] && [ ! -L "$dir" ]; then
                if mkdir -m "$mode" "$dir" 2>/dev/null && chown "$uid:$gid" "$dir"; then
                    echo "prepare-dirs: created $rel ($mode $uid:$gid)"
                fi
            fi
            continue
        fi
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

# Move an entry of the homes root out of reach (root-only .system/quarantine); never delete it.
quarantine() {
    q="$root/.system/quarantine"
    [ -d "$q" ] || { mkdir -p "$q" && chown 0:0 "$q" && chmod 0700 "$q"; } || return 1
    qn=$((qn + 1))
    dest="$q/$(date -u +%Y%m%dT%H%M%SZ).$$.$qn.$2"
    if [ -e "$dest" ] || [ -L "$dest" ]; then return 1; fi  # never move into an existing directory
    mv -- "$1" "$dest" || return 1
    echo "prepare-dirs: QUARANTINED ${1#"$root"/} ($3) -> ${dest#"$root"/}" >&2
}

# Check one home, working from inside it: "." cannot be swapped for a symlink between the check and
# the chown/chmod. Exit status 2: owned by someone else and not empty (the caller quarantines it).
fix_home() {  # HOMES_PHYSICAL NAME UID
    (
        cd "$1/$2" 2>/dev/null || exit 0  # gone meanwhile
        [ "$(pwd -P)" = "$1/$2" ] || { echo "prepare-dirs: $homes_rel/$2 changed while checked; next pass" >&2; exit 1; }
        set -- "$1" "$2" "$3" $(stat -c '%u %g %a' .)
        if [ "$4" != "$3" ]; then
            [ -z "$(ls -A .)" ] || exit 2
            echo "prepare-dirs: handing $homes_rel/$2 (made by uid $4) to its owner, uid $3"
        fi
        if [ "$4:$5" != "$3:$3" ]; then chown "$3:$3" . || exit 1; fi
        if [ "$6" != 700 ]; then chmod 0700 . || exit 1; fi
    )
}

sweep_homes() {
    [ -n "$homes_rel" ] || return 0
    homes="$root/$homes_rel"
    if [ -L "$homes" ] || [ ! -d "$homes" ]; then return 0; fi
    hphys=$(cd "$homes" && pwd -P)
    st=0
    for entry in "$homes"/* "$homes"/.[!.]* "$homes"/..?*; do
        [ -e "$entry" ] || [ -L "$entry" ] || continue  # an unmatched glob
        name=${entry##*/}
        if ! valid_name "$name"; then
            quarantine "$entry" "not-a-user" "not a user name" || st=1; continue
        fi
        if [ -L "$entry" ] || [ ! -d "$entry" ]; then
            quarantine "$entry" "$name" "not a directory" || st=1; continue
        fi
        uid=$(user_uid "$name")
        hrc=0
        fix_home "$hphys" "$name" "$uid" || hrc=$?
        if [ "$hrc" = 2 ]; then
            # Someone else's directory with contents under this user's name: the contents are not the
            # user's (and could plant configuration or links): set it aside, make an empty home.
            if quarantine "$entry" "$name" "made by another uid, not empty"; then
                if mkdir -m 0700 "$entry" 2>/dev/null && chown "$uid:$uid" "$entry"; then
                    echo "prepare-dirs: made an empty $homes_rel/$name for uid $uid"
                fi
            else
                st=1
            fi
        elif [ "$hrc" != 0 ]; then
            st=1
        fi
    done
    return $st
}

pass() {
    read_directives "$layout"
    rc=0
    apply || rc=1
    sweep_homes || rc=1
    return $rc
}

if [ -z "$loop" ]; then
    if pass; then exit 0; fi
    exit 1
fi
while :; do
    require_volume_mark "$root"
    pass || echo "prepare-dirs: some entries failed; retrying in ${loop}s" >&2
    sleep "$loop"
done
