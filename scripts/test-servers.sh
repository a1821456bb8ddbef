#!/usr/bin/env bash
# Runs a command with a PostgreSQL and a Redis server available to the tests.
#
#   scripts/test-servers.sh cargo test -p persistent-map-postgres
#
# For each server it uses, in order:
#   1. the one named by PERSISTENT_MAP_POSTGRES_URL / PERSISTENT_MAP_REDIS_URL
#      (it must answer, or the script fails);
#   2. a local one on the standard port: 127.0.0.1:5432, database `test`,
#      trust auth, user `postgres` or `root`; 127.0.0.1:6379;
#   3. a throwaway one started here, on 127.0.0.1 only and a free port, from
#      the Debian packages (installed with apt-get if missing): PostgreSQL's
#      initdb + pg_ctl in a temporary directory, as an unprivileged user;
#      redis-server without persistence.
# PERSISTENT_MAP_FORCE_THROWAWAY=1 skips steps 1 and 2 (to check step 3).
# It exports both URLs, runs the command, and stops (and deletes) whatever it
# started, however the command ends. The command's exit status is the script's.
set -euo pipefail

if [ "$#" -eq 0 ]; then
    echo "usage: $0 <command> [args...]" >&2
    exit 2
fi

say() { printf 'test-servers: %s\n' "$*" >&2; }

WORK_DIR=""
PG_STARTED=""   # "<bindir> <datadir>" of a server started here
REDIS_STARTED="" # "<port> <pidfile>"

cleanup() {
    local status=$?
    if [ -n "$PG_STARTED" ]; then
        read -r bindir datadir <<<"$PG_STARTED"
        say "stopping the throwaway PostgreSQL server"
        as_pg_user "$bindir/pg_ctl" -D "$datadir" -m fast -w stop >/dev/null 2>&1 || true
    fi
    if [ -n "$REDIS_STARTED" ]; then
        read -r port pidfile <<<"$REDIS_STARTED"
        say "stopping the throwaway Redis server"
        redis-cli -h 127.0.0.1 -p "$port" shutdown nosave >/dev/null 2>&1 \
            || { [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null; } || true
    fi
    if [ -n "$WORK_DIR" ]; then
        rm -rf "$WORK_DIR"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

work_dir() {
    if [ -z "$WORK_DIR" ]; then
        WORK_DIR="$(mktemp -d "${TMPDIR:-/tmp}/persistent-map-servers.XXXXXX")"
        chmod 755 "$WORK_DIR"
    fi
}

# Whether something accepts TCP connections on host $1, port $2.
port_open() {
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

free_port() {
    local port
    for _ in $(seq 1 200); do
        port=$((20000 + RANDOM % 40000))
        if ! port_open 127.0.0.1 "$port"; then
            echo "$port"
            return 0
        fi
    done
    say "no free port found"
    return 1
}

# host and port of a URL: scheme://[user[:password]@]host[:port][/...]
url_host() { local a="${1#*://}"; a="${a%%/*}"; a="${a##*@}"; echo "${a%%:*}"; }
url_port() {
    local a="${1#*://}"; a="${a%%/*}"; a="${a##*@}"
    case "$a" in *:*) echo "${a##*:}" ;; *) echo "$2" ;; esac
}

apt_install() {
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
            say "cannot install $* without root; install it, or set the server URLs"
            return 1
        fi
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        say "no apt-get to install $*; install it, or set the server URLs"
        return 1
    fi
    say "installing $* with apt-get"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

# ---------------------------------------------------------------- PostgreSQL

PG_USER=""
as_pg_user() {
    if [ -n "$PG_USER" ]; then
        runuser -u "$PG_USER" -- "$@"
    else
        "$@"
    fi
}

pg_answers() { # url
    if command -v psql >/dev/null 2>&1; then
        psql "$1" -Atqc 'SELECT 1' >/dev/null 2>&1
    else
        port_open "$(url_host "$1")" "$(url_port "$1" 5432)"
    fi
}

pg_bindir() {
    local dir
    dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
    if [ -n "$dir" ] && [ -x "$dir/initdb" ]; then
        echo "$dir"
    fi
}

start_postgres() {
    local bindir port datadir
    bindir="$(pg_bindir)"
    if [ -z "$bindir" ]; then
        apt_install postgresql
        bindir="$(pg_bindir)"
        [ -n "$bindir" ] || { say "PostgreSQL server binaries not found after install"; return 1; }
    fi
    work_dir
    datadir="$WORK_DIR/pg"
    mkdir -p "$datadir"
    if [ "$(id -u)" -eq 0 ]; then
        # root cannot run postgres: use the package's unprivileged user.
        PG_USER=postgres
        id "$PG_USER" >/dev/null 2>&1 || useradd --system --no-create-home "$PG_USER"
        chown "$PG_USER" "$datadir"
    fi
    port="$(free_port)"
    say "starting a throwaway PostgreSQL ($bindir) on 127.0.0.1:$port"
    as_pg_user "$bindir/initdb" -D "$datadir" -A trust -U postgres --no-sync >/dev/null
    as_pg_user "$bindir/pg_ctl" -D "$datadir" -l "$datadir/server.log" -w -t 60 \
        -o "-p $port -c listen_addresses=127.0.0.1 -k $datadir" start >/dev/null
    PG_STARTED="$bindir $datadir"
    as_pg_user "$bindir/createdb" -h 127.0.0.1 -p "$port" -U postgres test
    PERSISTENT_MAP_POSTGRES_URL="postgres://postgres@127.0.0.1:$port/test"
}

FORCE="${PERSISTENT_MAP_FORCE_THROWAWAY:-0}"
if [ "$FORCE" = 1 ]; then
    unset PERSISTENT_MAP_POSTGRES_URL PERSISTENT_MAP_REDIS_URL
    start_postgres
elif [ -n "${PERSISTENT_MAP_POSTGRES_URL:-}" ]; then
    pg_answers "$PERSISTENT_MAP_POSTGRES_URL" \
        || { say "PERSISTENT_MAP_POSTGRES_URL is set but the server does not answer"; exit 1; }
    say "PostgreSQL: using PERSISTENT_MAP_POSTGRES_URL"
else
    for user in postgres root; do
        if pg_answers "postgres://$user@127.0.0.1:5432/test"; then
            PERSISTENT_MAP_POSTGRES_URL="postgres://$user@127.0.0.1:5432/test"
            say "PostgreSQL: using the local server on 127.0.0.1:5432 as $user"
            break
        fi
    done
    if [ -z "${PERSISTENT_MAP_POSTGRES_URL:-}" ]; then
        start_postgres
    fi
fi
export PERSISTENT_MAP_POSTGRES_URL

# --------------------------------------------------------------------- Redis

redis_answers() { # host port: any reply to PING (even NOAUTH) means a Redis answers
    local reply=""
    { exec 4<>"/dev/tcp/$1/$2"; } 2>/dev/null || return 1
    printf 'PING\r\n' >&4
    read -r -t 2 reply <&4 || true
    exec 4<&- 4>&-
    case "$reply" in "+PONG"* | "-"*) return 0 ;; *) return 1 ;; esac
}

start_redis() {
    local port pidfile
    if ! command -v redis-server >/dev/null 2>&1; then
        apt_install redis-server
    fi
    work_dir
    port="$(free_port)"
    pidfile="$WORK_DIR/redis.pid"
    say "starting a throwaway Redis on 127.0.0.1:$port"
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
        --daemonize yes --pidfile "$pidfile" --dir "$WORK_DIR" \
        --logfile "$WORK_DIR/redis.log"
    REDIS_STARTED="$port $pidfile"
    for _ in $(seq 1 100); do
        redis_answers 127.0.0.1 "$port" && break
        sleep 0.1
    done
    redis_answers 127.0.0.1 "$port" || { say "the throwaway Redis does not answer"; exit 1; }
    PERSISTENT_MAP_REDIS_URL="redis://127.0.0.1:$port"
}

if [ "$FORCE" = 1 ]; then
    start_redis
elif [ -n "${PERSISTENT_MAP_REDIS_URL:-}" ]; then
    redis_answers "$(url_host "$PERSISTENT_MAP_REDIS_URL")" "$(url_port "$PERSISTENT_MAP_REDIS_URL" 6379)" \
        || { say "PERSISTENT_MAP_REDIS_URL is set but the server does not answer"; exit 1; }
    say "Redis: using PERSISTENT_MAP_REDIS_URL"
elif redis_answers 127.0.0.1 6379; then
    PERSISTENT_MAP_REDIS_URL="redis://127.0.0.1:6379"
    say "Redis: using the local server on 127.0.0.1:6379"
else
    start_redis
fi
export PERSISTENT_MAP_REDIS_URL

# ------------------------------------------------------------------- command

# Not exec: the trap must run after the command to stop the servers.
"$@"
