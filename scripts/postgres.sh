#!/usr/bin/env bash
# A throwaway PostgreSQL for the tests: a fresh cluster in a temp dir, listening on 127.0.0.1
# on a free port, fsync off, trust authentication. Uses the machine's PostgreSQL binaries
# (/usr/lib/postgresql/*/bin, or pg_ctl on PATH); as root it runs them as the `postgres` user.
#
#   eval "$(bash scripts/postgres.sh start)"   # exports DOOZ_TEST_POSTGRES and DOOZ_PG_DIR
#   bash scripts/postgres.sh stop "$DOOZ_PG_DIR"
#
# DOOZ_PG_DURABLE=1 keeps PostgreSQL's durable defaults (fsync, synchronous_commit) for
# benchmarks (benches/src/bin/scaleout.rs).
set -euo pipefail

bindir() {
    local d
    for d in /usr/lib/postgresql/*/bin; do
        if [ -x "$d/pg_ctl" ]; then
            echo "$d"
            return
        fi
    done
    if command -v pg_ctl >/dev/null 2>&1; then
        dirname "$(command -v pg_ctl)"
        return
    fi
    echo "PostgreSQL is not installed: apt-get install postgresql (the tests need its binaries)" >&2
    exit 1
}

as_owner() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

case "${1:-}" in
start)
    BIN="$(bindir)"
    DIR="$(mktemp -d /tmp/dooz-pg.XXXXXX)"
    if [ "$(id -u)" = 0 ]; then
        chown postgres "$DIR"
    fi
    PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
    as_owner "$BIN/initdb" -D "$DIR/data" -U postgres -A trust --no-sync >"$DIR/initdb.log" 2>&1 \
        || { cat "$DIR/initdb.log" >&2; exit 1; }
    # Many connections: each test store has a pool, and two-instance tests run several servers.
    FAST="-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    if [ "${DOOZ_PG_DURABLE:-0}" = 1 ]; then
        FAST=""
    fi
    as_owner "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w -o \
        "-c listen_addresses=127.0.0.1 -p $PORT -k $DIR $FAST -c max_connections=500" \
        start >/dev/null \
        || { cat "$DIR/server.log" >&2; exit 1; }
    echo "export DOOZ_TEST_POSTGRES=postgres://postgres@127.0.0.1:$PORT/postgres"
    echo "export DOOZ_PG_DIR=$DIR"
    ;;
stop)
    DIR="${2:?usage: postgres.sh stop DIR}"
    BIN="$(bindir)"
    as_owner "$BIN/pg_ctl" -D "$DIR/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$DIR"
    ;;
*)
    echo "usage: postgres.sh start | stop DIR" >&2
    exit 2
    ;;
esac
