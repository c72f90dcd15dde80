#!/usr/bin/env bash
# PostgreSQL and Redis for the test suite: the machine's when they answer, else private ones.
#
#   scripts/test_services.sh STATE_DIR CMD [ARG...]   run CMD with the services it needs, then stop ours
#
# PostgreSQL: when a server answers at $RETRAIN_PG_HOST:$RETRAIN_PG_PORT (127.0.0.1:5432) it is used as
# it is (trust auth for user postgres, as on the CI machines). Otherwise this script starts a PRIVATE
# cluster: initdb in STATE_DIR/pg (trust auth, loopback only, a free port, its socket in STATE_DIR),
# run as the `postgres` user when we are root (initdb refuses root). Redis likewise at
# $RETRAIN_REDIS_HOST:$RETRAIN_REDIS_PORT (127.0.0.1:6379), else a private redis-server on a free
# loopback port with no persistence. Missing binaries are installed from Debian packages
# (postgresql, postgresql-client, redis-server; root or sudo), with service starts blocked during the
# install (a temporary /usr/sbin/policy-rc.d, only when none exists) so the packages do not start the
# system-wide services on 5432/6379.
#
# CMD runs with RETRAIN_PG_HOST/RETRAIN_PG_PORT (+ PGHOST/PGPORT for psql) and
# RETRAIN_REDIS_HOST/RETRAIN_REDIS_PORT pointing at what is used. The private servers belong to this
# script: they are stopped by their PIDs when CMD ends (also on failure or Ctrl-C); the machine's
# servers are never stopped or reconfigured. Exit status: CMD's.
set -euo pipefail

die() { echo "test_services.sh: $*" >&2; exit 1; }
note() { echo "test_services.sh: $*" >&2; }
[[ $# -ge 2 ]] || die "usage: $0 STATE_DIR CMD [ARG...]"
STATE_DIR=$1; shift
mkdir -p "$STATE_DIR"
STATE_DIR=$(cd "$STATE_DIR" && pwd -P)

PG_HOST=${RETRAIN_PG_HOST:-127.0.0.1}
PG_PORT=${RETRAIN_PG_PORT:-5432}
REDIS_HOST=${RETRAIN_REDIS_HOST:-127.0.0.1}
REDIS_PORT=${RETRAIN_REDIS_PORT:-6379}
OURS=()  # "name pid" of the servers this script started
CLEAN=()  # directories to remove once they are stopped

listening() { timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO="sudo"

apt_install() {  # apt_install PKG... with service starts blocked (see the header)
  command -v apt-get >/dev/null 2>&1 || die "need $* and there is no apt-get to install them"
  local policy=/usr/sbin/policy-rc.d ours_policy=""
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null && $SUDO chmod 755 "$policy" && ours_policy=1
  fi
  note "installing $* (Debian packages; log $STATE_DIR/apt.log)"
  local rc=0
  { $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" \
      || { $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive \
           apt-get install -y -qq --no-install-recommends "$@"; }; } >"$STATE_DIR/apt.log" 2>&1 || rc=$?
  [[ -z $ours_policy ]] || $SUDO rm -f "$policy"
  [[ $rc -eq 0 ]] || die "apt-get install $* failed (see $STATE_DIR/apt.log)"
}

pg_bindir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }

stop_ours() {
  local entry name pid dir
  for entry in "${OURS[@]}"; do
    name=${entry% *}; pid=${entry#* }
    kill -0 "$pid" 2>/dev/null || continue
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then note "$name (pid $pid) ignored SIGTERM: SIGKILL"; kill -KILL "$pid" || true; fi
    note "stopped private $name (pid $pid)"
  done
  for dir in "${CLEAN[@]}"; do rm -rf "$dir"; done
}
trap stop_ours EXIT
trap 'exit 130' INT TERM

start_postgres() {
  if [[ -z $(pg_bindir) ]] || ! command -v psql >/dev/null 2>&1; then apt_install postgresql postgresql-client; fi
  local bin data=$STATE_DIR/pg run_as=()
  bin=$(pg_bindir)
  [[ -n $bin ]] || die "no /usr/lib/postgresql/*/bin after installing postgresql"
  PG_HOST=127.0.0.1; PG_PORT=$(free_port)
  rm -rf "$data" && mkdir -p "$data"
  if [[ $(id -u) -eq 0 ]]; then
    # The postgres user may not be able to reach STATE_DIR (e.g. under a 0700 home or pytest tmp):
    # the data directory then lives in a fresh /tmp directory of its own, removed at the end.
    id postgres >/dev/null 2>&1 || die "running as root and there is no 'postgres' user to run initdb as"
    data=$(mktemp -d /tmp/retrain-pg.XXXXXX); CLEAN+=("$data")
    chown postgres "$data"; chmod 700 "$data"; run_as=(runuser -u postgres --)
  fi
  "${run_as[@]}" "$bin/initdb" -D "$data" -U postgres --auth=trust -E UTF8 >"$STATE_DIR/initdb.log" 2>&1 \
    || die "initdb failed (see $STATE_DIR/initdb.log)"
  "${run_as[@]}" "$bin/postgres" -D "$data" -h 127.0.0.1 -p "$PG_PORT" -k "$data" \
    -c fsync=off -c max_connections=200 >"$STATE_DIR/postgres.log" 2>&1 &
  local launcher=$! pid=""
  OURS+=("postgres $launcher")
  for _ in $(seq 150); do listening "$PG_HOST" "$PG_PORT" && break; sleep 0.2; done
  listening "$PG_HOST" "$PG_PORT" || die "private postgres did not start (see $STATE_DIR/postgres.log)"
  # The postmaster's own PID (under runuser, $! is runuser's): stop that one, then the launcher.
  pid=$(head -1 "$data/postmaster.pid")
  [[ $pid == "$launcher" ]] || OURS=("postgres $pid" "${OURS[@]}")
  note "private PostgreSQL on 127.0.0.1:$PG_PORT (pid $pid, data $data)"
}

start_redis() {
  command -v redis-server >/dev/null 2>&1 || apt_install redis-server
  REDIS_HOST=127.0.0.1; REDIS_PORT=$(free_port)
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no --protected-mode yes \
    --dir "$STATE_DIR" >"$STATE_DIR/redis.log" 2>&1 &
  local pid=$!
  OURS+=("redis $pid")
  for _ in $(seq 100); do listening "$REDIS_HOST" "$REDIS_PORT" && break; sleep 0.1; done
  listening "$REDIS_HOST" "$REDIS_PORT" || die "private redis did not start (see $STATE_DIR/redis.log)"
  note "private Redis on 127.0.0.1:$REDIS_PORT (pid $pid)"
}

if listening "$PG_HOST" "$PG_PORT"; then note "PostgreSQL: using the one at $PG_HOST:$PG_PORT"; else start_postgres; fi
if listening "$REDIS_HOST" "$REDIS_PORT"; then note "Redis: using the one at $REDIS_HOST:$REDIS_PORT"; else start_redis; fi
export RETRAIN_PG_HOST=$PG_HOST RETRAIN_PG_PORT=$PG_PORT PGHOST=$PG_HOST PGPORT=$PG_PORT
export RETRAIN_REDIS_HOST=$REDIS_HOST RETRAIN_REDIS_PORT=$REDIS_PORT
rc=0
"$@" || rc=$?
exit $rc
