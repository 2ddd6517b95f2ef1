#!/bin/sh
# Back up the NFS data and consistent dumps of the platform's databases with BorgBackup into an
# encrypted (repokey) repository.
#
#   borg-backup.sh dump-postgres DIR    pg_dump (custom format) of $PGDATABASE (libpq PG* variables) into DIR
#   borg-backup.sh dump-redis DIR       a point-in-time RDB snapshot of Redis (redis-cli --rdb; REDIS_HOST,
#                                       REDIS_PORT, REDISCLI_AUTH) into DIR: JuiceFS' metadata
#   borg-backup.sh dump-sqlite DB DIR   SQLite's online backup of DB into DIR (the hub's database)
#   borg-backup.sh collect-dump FILE DIR MINUTES  copy FILE into DIR, refused if older than MINUTES
#   borg-backup.sh backup               archive $DUMP_DIR (if it holds dumps) as $DB_ARCHIVE_PREFIX-<time>,
#                                       then $BACKUP_SOURCE as $ARCHIVE_PREFIX-<time>; prune only if PRUNE=yes
#   borg-backup.sh restore ARCHIVE DIR  extract ARCHIVE ("latest" = newest data archive) into the empty DIR
#   borg-backup.sh restore-db ARCHIVE DIR  the same for the database dumps ("latest" = newest dump archive)
#   borg-backup.sh prune                apply the retention (from a trusted host: the client key is append-only)
#   borg-backup.sh list                 list the archives
#
# Environment: BORG_REPO, BORG_PASSPHRASE (required); BACKUP_SOURCE (backup), DUMP_DIR, ARCHIVE_PREFIX
# (default "nfs"), DB_ARCHIVE_PREFIX (default "$ARCHIVE_PREFIX-db"), KEEP_DAILY/KEEP_WEEKLY/KEEP_MONTHLY
# (7/4/6), COMPRESSION (zstd,3), PRUNE, BORG_RSH for ssh.
# Any failure exits non-zero, so the Kubernetes Job fails and kube-state-metrics reports it.
set -eu

prefix=${ARCHIVE_PREFIX:-nfs}
dbprefix=${DB_ARCHIVE_PREFIX:-$prefix-db}

log() { echo "borg-backup: $(date -u +%Y-%m-%dT%H:%M:%SZ) $*"; }

need_repo() {
    : "${BORG_REPO:?BORG_REPO is not set}"
    : "${BORG_PASSPHRASE:?BORG_PASSPHRASE is not set}"
    export BORG_REPO BORG_PASSPHRASE
    export BORG_RELOCATED_REPO_ACCESS_IS_OK=no
    export BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=no
}

collect_dump() {
    file=${1:?usage: borg-backup.sh collect-dump FILE DIR MINUTES}
    dir=${2:?usage: borg-backup.sh collect-dump FILE DIR MINUTES}
    age=${3:?usage: borg-backup.sh collect-dump FILE DIR MINUTES}
    [ -f "$file" ] || { log "no dump at $file"; exit 1; }
    [ -n "$(find "$file" -mmin "-$age")" ] || { log "the dump $file is older than $age minutes"; exit 1; }
    mkdir -p "$dir"
    cp "$file" "$dir/.$(basename "$file").part"
    mv "$dir/.$(basename "$file").part" "$dir/$(basename "$file")"
}

# Each dump is written under a temporary name and renamed only when complete: a failed dump never
# leaves a file that looks good.
dump_postgres() {
    dir=${1:?usage: borg-backup.sh dump-postgres DIR}
    : "${PGDATABASE:?PGDATABASE is not set}"
    mkdir -p "$dir"
    log "pg_dump of $PGDATABASE at ${PGHOST:-local}"
    pg_dump --format=custom --no-owner --file "$dir/.$PGDATABASE.pgdump.part"
    mv "$dir/.$PGDATABASE.pgdump.part" "$dir/$PGDATABASE.pgdump"
}

dump_redis() {
    dir=${1:?usage: borg-backup.sh dump-redis DIR}
    mkdir -p "$dir"
    log "RDB snapshot of Redis at ${REDIS_HOST:-127.0.0.1}:${REDIS_PORT:-6379}"
    # --rdb asks the server for the snapshot a new replica would get: one consistent point in time,
    # taken by a forked child while Redis keeps serving (as BGSAVE does).
    redis-cli -h "${REDIS_HOST:-127.0.0.1}" -p "${REDIS_PORT:-6379}" --rdb "$dir/.redis.rdb.part" >/dev/null
    mv "$dir/.redis.rdb.part" "$dir/redis.rdb"
}

dump_sqlite() {
    db=${1:?usage: borg-backup.sh dump-sqlite DB DIR}
    dir=${2:?usage: borg-backup.sh dump-sqlite DB DIR}
    [ -f "$db" ] || { log "no SQLite database at $db"; exit 1; }
    mkdir -p "$dir"
    out="$dir/$(basename "$db")"
    log "SQLite online backup of $db"
    # The online backup API copies a consistent snapshot while the hub keeps writing.
    if command -v sqlite3 >/dev/null; then
        sqlite3 "$db" ".backup '$out.part'"
    else
        python3 -c 'import sqlite3, sys
src = sqlite3.connect(sys.argv[1]); dst = sqlite3.connect(sys.argv[2])
src.backup(dst); dst.close(); src.close()' "$db" "$out.part"
    fi
    mv "$out.part" "$out"
}

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
    stamp=$(date -u +%Y-%m-%dT%H:%M:%S)
    if [ -n "${DUMP_DIR:-}" ]; then
        # Dumps first (small, consistent); the data archive follows. A dump step that failed has
        # already failed the Job (init containers), so an empty dump directory here is an error.
        [ -n "$(ls -A "$DUMP_DIR" 2>/dev/null)" ] || { log "no database dumps in $DUMP_DIR"; exit 1; }
        log "creating archive $dbprefix-$stamp from $DUMP_DIR"
        (cd "$DUMP_DIR" && borg create --stats --compression "${COMPRESSION:-zstd,3}" "::$dbprefix-$stamp" .)
    fi
    name="$prefix-$stamp"
    log "creating archive $name from $BACKUP_SOURCE"
    # Paths are stored relative to the source so a restore lands directly in the target dir.
    (cd "$BACKUP_SOURCE" && borg create --stats --one-file-system --exclude-caches \
        --compression "${COMPRESSION:-zstd,3}" "::$name" .)
    # The cluster's key is append-only at the server (borg serve --append-only): pruning is the
    # trusted backup host's job. Only a repository that is not remote (no such boundary) prunes here.
    if [ "${PRUNE:-no}" = yes ]; then prune; fi
    log "done: $name"
}

prune() {
    # Only this site's archives: data ($prefix-<time>) and dumps ($dbprefix-<time>) are pruned as two
    # series (each keeps its own dailies); another prefix in the same repository is never touched.
    log "pruning $prefix-* (daily ${KEEP_DAILY:-7}, weekly ${KEEP_WEEKLY:-4}, monthly ${KEEP_MONTHLY:-6})"
    borg prune --list --glob-archives "$prefix-[0-9]*" \
        --keep-daily "${KEEP_DAILY:-7}" --keep-weekly "${KEEP_WEEKLY:-4}" --keep-monthly "${KEEP_MONTHLY:-6}"
    borg prune --list --glob-archives "$dbprefix-[0-9]*" \
        --keep-daily "${KEEP_DAILY:-7}" --keep-weekly "${KEEP_WEEKLY:-4}" --keep-monthly "${KEEP_MONTHLY:-6}"
    borg compact
}

restore() {
    series=$1; shift
    archive=${1:?usage: borg-backup.sh restore|restore-db ARCHIVE|latest DIR}
    target=${2:?usage: borg-backup.sh restore|restore-db ARCHIVE|latest DIR}
    if [ "$archive" = latest ]; then
        archive=$(borg list --short --glob-archives "$series-[0-9]*" --sort-by timestamp --last 1)
        [ -n "$archive" ] || { log "no $series-* archive in $BORG_REPO"; exit 1; }
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
    dump-postgres) dump_postgres "$@" ;;
    dump-redis) dump_redis "$@" ;;
    dump-sqlite) dump_sqlite "$@" ;;
    collect-dump) collect_dump "$@" ;;
    backup) need_repo; backup ;;
    restore) need_repo; restore "$prefix" "$@" ;;
    restore-db) need_repo; restore "$dbprefix" "$@" ;;
    prune) need_repo; prune ;;
    list) need_repo; borg list --glob-archives "$prefix-*" ;;
    *) echo "usage: borg-backup.sh dump-postgres DIR | dump-redis DIR | dump-sqlite DB DIR | backup | prune |" \
            "restore ARCHIVE|latest DIR | restore-db ARCHIVE|latest DIR | list" >&2; exit 2 ;;
esac
