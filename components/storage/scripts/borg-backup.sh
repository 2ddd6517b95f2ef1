#!/bin/sh
# Back up the NFS data with BorgBackup into an encrypted (repokey) repository, then prune.
#
#   borg-backup.sh backup               create an archive of $BACKUP_SOURCE, prune, compact
#   borg-backup.sh restore ARCHIVE DIR  extract ARCHIVE ("latest" = newest) into the empty DIR
#   borg-backup.sh prune                apply the retention only
#   borg-backup.sh list                 list the archives
#
# Environment: BORG_REPO, BORG_PASSPHRASE (required); BACKUP_SOURCE (backup), ARCHIVE_PREFIX
# (default "nfs"), KEEP_DAILY/KEEP_WEEKLY/KEEP_MONTHLY (7/4/6), COMPRESSION (zstd,3), BORG_RSH for ssh.
# Any failure exits non-zero, so the Kubernetes Job fails and kube-state-metrics reports it.
set -eu

: "${BORG_REPO:?BORG_REPO is not set}"
: "${BORG_PASSPHRASE:?BORG_PASSPHRASE is not set}"
export BORG_REPO BORG_PASSPHRASE
export BORG_RELOCATED_REPO_ACCESS_IS_OK=no
export BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=no
prefix=${ARCHIVE_PREFIX:-nfs}

log() { echo "borg-backup: $(date -u +%Y-%m-%dT%H:%M:%SZ) $*"; }

ensure_repo() {
    err=$(mktemp)
    if borg info >/dev/null 2>"$err"; then
        rm -f "$err"; return 0
    fi
    if grep -q "does not exist" "$err"; then
        rm -f "$err"
        log "repository $BORG_REPO does not exist: creating it (repokey encryption)"
        borg init --encryption=repokey-blake2
        return 0
    fi
    cat "$err" >&2; rm -f "$err"
    log "cannot open repository $BORG_REPO"
    return 1
}

# The storage node writes this mark when it formats the NFS data volume; a tree without it is the
# boot disk's own directory (the volume did not attach or mount): never serve or back it up.
require_volume_mark() {
    [ -f "$1/.aiinfn-nfs-volume" ] && return 0
    log "source $1 has no .aiinfn-nfs-volume mark: the NFS data volume is not mounted there; refusing to back up"
    exit 1
}

backup() {
    : "${BACKUP_SOURCE:?BACKUP_SOURCE is not set}"
    [ -d "$BACKUP_SOURCE" ] || { log "source $BACKUP_SOURCE is not a directory"; exit 1; }
    require_volume_mark "$BACKUP_SOURCE"
    ensure_repo
    name="$prefix-$(date -u +%Y-%m-%dT%H:%M:%S)"
    log "creating archive $name from $BACKUP_SOURCE"
    # Paths are stored relative to the source so a restore lands directly in the target dir.
    (cd "$BACKUP_SOURCE" && borg create --stats --one-file-system --exclude-caches \
        --compression "${COMPRESSION:-zstd,3}" "::$name" .)
    prune
    log "done: $name"
}

prune() {
    # Only this site's archives ($prefix-*): another prefix in the same repository is never touched.
    log "pruning $prefix-* (daily ${KEEP_DAILY:-7}, weekly ${KEEP_WEEKLY:-4}, monthly ${KEEP_MONTHLY:-6})"
    borg prune --list --glob-archives "$prefix-*" \
        --keep-daily "${KEEP_DAILY:-7}" --keep-weekly "${KEEP_WEEKLY:-4}" --keep-monthly "${KEEP_MONTHLY:-6}"
    borg compact
}

restore() {
    archive=${1:?usage: borg-backup.sh restore ARCHIVE|latest DIR}
    target=${2:?usage: borg-backup.sh restore ARCHIVE|latest DIR}
    if [ "$archive" = latest ]; then
        archive=$(borg list --short --glob-archives "$prefix-*" --sort-by timestamp --last 1)
        [ -n "$archive" ] || { log "no $prefix-* archive in $BORG_REPO"; exit 1; }
    fi
    mkdir -p "$target"
    if [ -n "$(ls -A "$target")" ]; then
        log "refusing to restore into $target: it is not empty"; exit 1
    fi
    log "restoring $archive into $target"
    (cd "$target" && borg extract --numeric-ids "::$archive")
    log "restored $archive"
}

cmd=${1:-backup}
[ $# -gt 0 ] && shift
case "$cmd" in
    backup) backup ;;
    restore) restore "$@" ;;
    prune) prune ;;
    list) borg list --glob-archives "$prefix-*" ;;
    *) echo "usage: borg-backup.sh backup | prune | restore ARCHIVE|latest DIR | list" >&2; exit 2 ;;
esac
