#!/usr/bin/env bash
# Local, project-private PostgreSQL cluster (Debian's server binaries, no Docker, no systemd).
#
# Usage: deploy/local/postgres.sh start|stop|crash|restart|status|psql [psql args...]
#
# How it works:
#   * Server binaries: the newest /usr/lib/postgresql/<ver>/bin; if there is none, `apt-get install
#     postgresql` (as root). The system cluster ("main", port 5432) is never touched.
#   * initdb/postgres refuse to run as root, so when run as root they run as the `postgres` OS user
#     (runuser -u postgres --). As a non-root user they simply run as that user.
#   * Cluster location (PGDIR), chosen once:
#       - $UTS_PG_DIR if set, else
#       - $UTS_LOCAL_DIR/pg (owned by postgres, mode 700) when the postgres user can traverse every
#         parent directory of it (this script makes $UTS_LOCAL_DIR itself traversable, but never
#         touches directories above it), else
#       - /var/tmp/uts-pg-$UTS_PG_PORT (e.g. when the repo lives under a private /root).
#     Inside PGDIR: data/ (PGDATA), run/ (unix socket), postgres.log.
#   * Listens on 127.0.0.1:$UTS_PG_PORT only; unix socket in PGDIR/run (mode 0700), not /var/run.
#     max_connections=200; settings live in data/uts-local.conf, regenerated on every start.
#   * Auth: unix socket = trust (only postgres/root can reach it); TCP = scram-sha-256 password.
#   * Every start ensures role `uts` (password `uts`, LOGIN, CREATEDB - sqlx::test creates
#     throwaway databases) and database `uts` owned by it. Idempotent.
#   * `start` returns once a real query over TCP as uts succeeds (deadline PG_START_TIMEOUT, 60 s).
#   * `stop` = pg_ctl stop -m fast (falls back to -m immediate after PG_STOP_TIMEOUT, 60 s).
#   * `crash` = pg_ctl stop -m immediate: every backend killed, no checkpoint, crash recovery on
#     the next start (the fault tests).
#   * `status` exits 0 when the server is running, 3 when it is not.
set -euo pipefail

# shellcheck source=deploy/local/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PG_START_TIMEOUT="${PG_START_TIMEOUT:-60}"
PG_STOP_TIMEOUT="${PG_STOP_TIMEOUT:-60}"
PG_USER=uts
PG_PASSWORD=uts
PG_DB=uts
PG_OS_USER=postgres

# ---------------------------------------------------------------------------------------------

find_bindir() { # -> newest /usr/lib/postgresql/<ver>/bin that has the server binaries, or ""
  find /usr/lib/postgresql -mindepth 3 -maxdepth 3 -path '*/bin/initdb' -printf '%h\n' 2>/dev/null |
    while read -r d; do [[ -x "$d/pg_ctl" && -x "$d/postgres" ]] && printf '%s\n' "$d"; done |
    sort -t/ -k5,5V | tail -n 1 || true
}

ensure_server_binaries() {
  PG_BINDIR="$(find_bindir)"
  if [[ -z "$PG_BINDIR" ]]; then
    log_warn "PostgreSQL server binaries not found (no /usr/lib/postgresql/*/bin/initdb)"
    apt_install postgresql
    PG_BINDIR="$(find_bindir)"
    [[ -n "$PG_BINDIR" ]] || die "installed 'postgresql' but still no /usr/lib/postgresql/*/bin/initdb"
  fi
  [[ -x "$PG_BINDIR/psql" && -x "$PG_BINDIR/pg_isready" ]] || apt_install "postgresql-client-$(basename "$(dirname "$PG_BINDIR")")"
  if is_root && ! id -u "$PG_OS_USER" >/dev/null 2>&1; then
    die "OS user '$PG_OS_USER' does not exist (it comes with Debian's postgresql-common package; try 'apt-get install --reinstall postgresql-common')"
  fi
}

# as_pg CMD... -> run CMD as the OS user owning the cluster (postgres when we are root).
as_pg() {
  if is_root; then
    (cd / && runuser -u "$PG_OS_USER" -- "$@")
  else
    (cd / && "$@")
  fi
}

pg_can_use_dir() { # DIR -> can the cluster owner create/enter things in DIR?
  as_pg test -d "$1" -a -x "$1" -a -w "$1" 2>/dev/null
}

choose_pgdir() {
  if [[ -n "${UTS_PG_DIR:-}" ]]; then
    PGDIR="$UTS_PG_DIR"
    return
  fi
  local primary="$UTS_LOCAL_DIR/pg" fallback="/var/tmp/uts-pg-$UTS_PG_PORT"
  if [[ -f "$primary/data/PG_VERSION" ]] || ! is_root; then
    PGDIR="$primary"
  elif [[ -f "$fallback/data/PG_VERSION" ]]; then
    PGDIR="$fallback"
  else
    # Not initialised yet: try the primary location, fall back if postgres cannot reach it.
    ensure_local_dir
    chmod a+x "$UTS_LOCAL_DIR"
    mkdir -p "$primary"
    chown "$PG_OS_USER:" "$primary"
    chmod 700 "$primary"
    if pg_can_use_dir "$primary"; then
      PGDIR="$primary"
    else
      log_warn "the '$PG_OS_USER' user cannot reach $primary (a parent directory is not traversable);"
      log_warn "using $fallback for the PostgreSQL cluster instead (or set UTS_PG_DIR)"
      rmdir "$primary" 2>/dev/null || true
      PGDIR="$fallback"
    fi
  fi
}

set_paths() {
  choose_pgdir
  PGDATA_DIR="$PGDIR/data"
  SOCK_DIR="$PGDIR/run"
  # unix socket paths are limited to 107 bytes
  if ((${#SOCK_DIR} + 20 > 100)); then
    SOCK_DIR="/tmp/uts-pg-sock-$UTS_PG_PORT"
  fi
  PG_LOG="$PGDIR/postgres.log"
}

prepare_dirs() {
  if is_root; then
    mkdir -p "$PGDIR" "$SOCK_DIR"
    [[ "$PGDIR" == "$UTS_LOCAL_DIR"/* ]] && chmod a+x "$UTS_LOCAL_DIR"
    chown "$PG_OS_USER:" "$PGDIR" "$SOCK_DIR"
    chmod 700 "$PGDIR" "$SOCK_DIR"
    pg_can_use_dir "$PGDIR" ||
      die "the '$PG_OS_USER' user cannot write to $PGDIR (check the permissions of its parent directories, or set UTS_PG_DIR)"
  else
    mkdir -p "$PGDIR" "$SOCK_DIR"
    chmod 700 "$PGDIR" "$SOCK_DIR"
  fi
}

ensure_initdb() {
  if [[ -f "$PGDATA_DIR/PG_VERSION" ]]; then
    return 0
  fi
  local locale_opt=(--no-locale)
  if locale -a 2>/dev/null | grep -qiE '^c\.utf-?8$'; then
    locale_opt=(--locale=C.UTF-8)
  fi
  log_info "initialising a new PostgreSQL cluster in $PGDATA_DIR ($("$PG_BINDIR/postgres" --version))"
  if ! as_pg "$PG_BINDIR/initdb" -D "$PGDATA_DIR" -U postgres -E UTF8 "${locale_opt[@]}" \
    --auth-local=trust --auth-host=scram-sha-256 >"$PGDIR/initdb.log.tmp" 2>&1; then
    cat "$PGDIR/initdb.log.tmp" >&2 || true
    die "initdb failed (output above)"
  fi
  mv -f "$PGDIR/initdb.log.tmp" "$PGDIR/initdb.log"
  # our own pg_hba.conf: socket = trust (the socket dir is private), TCP 127.0.0.1 = password
  write_as_pg "$PGDATA_DIR/pg_hba.conf" <<'EOF'
# Generated by deploy/local/postgres.sh
# TYPE  DATABASE  USER  ADDRESS        METHOD
local   all       all                  trust
host    all       all   127.0.0.1/32   scram-sha-256
EOF
  printf "\n# deploy/local/postgres.sh settings (listen address, port, socket dir, ...)\ninclude_if_exists = 'uts-local.conf'\n" |
    as_pg tee -a "$PGDATA_DIR/postgresql.conf" >/dev/null
}

# write_as_pg FILE < content -> write a file inside the cluster directory as its owner.
write_as_pg() {
  as_pg tee "$1" >/dev/null
}

write_conf() {
  write_as_pg "$PGDATA_DIR/uts-local.conf" <<EOF
# Generated by deploy/local/postgres.sh on every start (edits are overwritten).
listen_addresses = '$UTS_BIND_HOST'
port = $UTS_PG_PORT
unix_socket_directories = '$SOCK_DIR'
unix_socket_permissions = 0700
max_connections = 200
# Sized for a write-heavy service (docs/architecture.md, "PostgreSQL settings"): with the
# defaults (128MB, max_wal_size 1GB) a full load forces a checkpoint every few seconds, and
# the full-page images after each one double the WAL. Durability is untouched (fsync and
# synchronous_commit stay on).
shared_buffers = 1GB
max_wal_size = 8GB
min_wal_size = 1GB
checkpoint_timeout = 15min
checkpoint_completion_target = 0.9
wal_compression = lz4
fsync = on
# Per-statement time and WAL (the benchmark prints the statements that write the most WAL).
shared_preload_libraries = 'pg_stat_statements'
pg_stat_statements.track = top
password_encryption = 'scram-sha-256'
log_line_prefix = '%m [%p] %q%u@%d '
EOF
  if [[ -n "${UTS_PG_TLS_DIR:-}" ]]; then
    # TLS only (deploy/local/secure.sh): the server's certificate, and TCP without TLS refused.
    write_as_pg "$PGDATA_DIR/server.crt" <"$UTS_PG_TLS_DIR/server.crt"
    write_as_pg "$PGDATA_DIR/server.key" <"$UTS_PG_TLS_DIR/server.key"
    as_pg chmod 600 "$PGDATA_DIR/server.key"
    printf "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\nssl_min_protocol_version = 'TLSv1.2'\n" |
      as_pg tee -a "$PGDATA_DIR/uts-local.conf" >/dev/null
    write_as_pg "$PGDATA_DIR/pg_hba.conf" <<'EOF'
# Generated by deploy/local/postgres.sh (UTS_PG_TLS_DIR: TLS only over TCP)
# TYPE     DATABASE  USER  ADDRESS        METHOD
local      all       all                  trust
hostssl    all       all   127.0.0.1/32   scram-sha-256
hostnossl  all       all   0.0.0.0/0      reject
EOF
  fi
}

pg_running() {
  [[ -f "$PGDATA_DIR/PG_VERSION" ]] || return 1
  as_pg "$PG_BINDIR/pg_ctl" -D "$PGDATA_DIR" status >/dev/null 2>&1
}

psql_super() { # psql as the superuser over the private unix socket
  as_pg "$PG_BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -h "$SOCK_DIR" -p "$UTS_PG_PORT" -U postgres "$@"
}

super_query_ok() { psql_super -d postgres -Atc 'select 1' >/dev/null 2>&1; }

app_query_ok() {
  PGPASSWORD="$PG_PASSWORD" PGCONNECT_TIMEOUT=5 "$PG_BINDIR/psql" -X -q \
    "postgresql://$PG_USER@$UTS_BIND_HOST:$UTS_PG_PORT/$PG_DB" -Atc 'select 1' >/dev/null 2>&1
}

ensure_role_and_db() {
  psql_super -d postgres <<SQL
DO \$\$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = '$PG_USER') THEN
    CREATE ROLE $PG_USER LOGIN CREATEDB PASSWORD '$PG_PASSWORD';
    RAISE NOTICE 'created role $PG_USER';
  ELSE
    ALTER ROLE $PG_USER LOGIN CREATEDB;
  END IF;
END
\$\$;
SQL
  if [[ "$(psql_super -d postgres -Atc "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'")" != 1 ]]; then
    log_info "creating database $PG_DB owned by $PG_USER"
    psql_super -d postgres -c "CREATE DATABASE $PG_DB OWNER $PG_USER"
  fi
  # The benchmark reports what PostgreSQL did under load: pg_stat_statements (in template1
  # too, so every database made later has the view) and pg_read_all_stats, which shows uts the
  # checkpointer and autovacuum.
  local db
  for db in template1 "$PG_DB"; do
    psql_super -d "$db" -c "SET client_min_messages = warning" -c "CREATE EXTENSION IF NOT EXISTS pg_stat_statements"
  done
  psql_super -d postgres -c "GRANT pg_read_all_stats TO $PG_USER"
}

lock() {
  ensure_local_dir
  exec 9>"$UTS_LOCAL_DIR/.pg.lock"
  flock -w 180 9 || die "another postgres.sh is busy (lock $UTS_LOCAL_DIR/.pg.lock)"
}

postmaster_pid() { head -n 1 "$PGDATA_DIR/postmaster.pid" 2>/dev/null || true; }

# postmaster_lingers -> 0 while the pid in postmaster.pid still exists in any form, zombie included
# (a killed postmaster stays a zombie until init reaps it); postgres refuses to start over it.
postmaster_lingers() {
  local pid
  pid="$(postmaster_pid)"
  [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null
}

pg_really_running() { # pg_ctl says running and the postmaster is not a zombie
  pg_running && pid_alive "$(postmaster_pid)"
}

cmd_start() {
  lock
  ensure_server_binaries
  set_paths
  if pg_really_running; then
    if app_query_ok; then
      log_info "PostgreSQL already running ($PGDATA_DIR) on $UTS_BIND_HOST:$UTS_PG_PORT - nothing to do"
      return 0
    fi
    log_info "PostgreSQL is running ($PGDATA_DIR) but does not answer yet; waiting up to ${PG_START_TIMEOUT}s"
    _answers_or_gone() { super_query_ok || ! pg_really_running; }
    wait_until "$PG_START_TIMEOUT" 0.2 _answers_or_gone || true
    if ! super_query_ok && pg_really_running; then
      tail -n 30 "$PG_LOG" >&2 || true
      die "PostgreSQL ($PGDATA_DIR) runs but does not answer queries; see $PG_LOG (try '$0 stop' then '$0 start')"
    fi
  fi
  if ! pg_really_running; then
    if port_open "$UTS_BIND_HOST" "$UTS_PG_PORT"; then
      die "port $UTS_BIND_HOST:$UTS_PG_PORT is already in use by another process (not this cluster: $PGDATA_DIR). Free it or set UTS_PG_PORT."
    fi
    prepare_dirs
    ensure_initdb
    write_conf
    if [[ -f "$PGDATA_DIR/postmaster.pid" ]] && postmaster_lingers; then
      log_info "waiting for the previous (killed) postmaster to disappear"
      wait_until 30 0.2 eval '! postmaster_lingers' || die "old postmaster $(postmaster_pid) does not go away"
    fi
    log_info "starting PostgreSQL on $UTS_BIND_HOST:$UTS_PG_PORT (data $PGDATA_DIR, log $PG_LOG)"
    # pg_ctl -w polls until the postmaster reports ready (or fails); setsid detaches it from our session.
    if ! as_pg setsid -w "$PG_BINDIR/pg_ctl" -D "$PGDATA_DIR" -l "$PG_LOG" -w -t "$PG_START_TIMEOUT" -s start \
      </dev/null >/dev/null 2>"$PGDIR/pg_ctl.err" 9>&-; then
      cat "$PGDIR/pg_ctl.err" >&2 || true
      log_error "pg_ctl start failed; last lines of $PG_LOG:"
      tail -n 30 "$PG_LOG" >&2 || true
      exit 1
    fi
    wait_until "$PG_START_TIMEOUT" 0.2 super_query_ok || {
      tail -n 30 "$PG_LOG" >&2 || true
      die "PostgreSQL did not answer queries on $SOCK_DIR within ${PG_START_TIMEOUT}s"
    }
  fi
  ensure_role_and_db
  wait_until 15 0.2 app_query_ok ||
    die "cannot run a query as $PG_USER over TCP on $UTS_BIND_HOST:$UTS_PG_PORT (see $PG_LOG)"
  log_info "PostgreSQL is up: postgres://$PG_USER:$PG_PASSWORD@$UTS_BIND_HOST:$UTS_PG_PORT/$PG_DB"
}

cmd_stop() {
  local mode="${1:-fast}"
  lock
  PG_BINDIR="$(find_bindir)"
  if [[ -z "$PG_BINDIR" ]]; then
    log_info "PostgreSQL is not installed, so not running"
    return 0
  fi
  set_paths
  if ! pg_really_running; then
    log_info "PostgreSQL is not running ($PGDATA_DIR)"
    return 0
  fi
  log_info "stopping PostgreSQL ($PGDATA_DIR) with pg_ctl stop -m $mode"
  if ! as_pg "$PG_BINDIR/pg_ctl" -D "$PGDATA_DIR" -m "$mode" -w -t "$PG_STOP_TIMEOUT" -s stop 9>&-; then
    log_warn "fast shutdown did not finish within ${PG_STOP_TIMEOUT}s; using -m immediate"
    as_pg "$PG_BINDIR/pg_ctl" -D "$PGDATA_DIR" -m immediate -w -t 30 -s stop 9>&- ||
      die "could not stop PostgreSQL ($PGDATA_DIR)"
  fi
  log_info "PostgreSQL stopped"
}

cmd_status() {
  PG_BINDIR="$(find_bindir)"
  if [[ -z "$PG_BINDIR" ]]; then
    log_info "PostgreSQL server binaries are not installed ('start' installs them)"
    return 3
  fi
  set_paths
  if pg_really_running; then
    if port_open "$UTS_BIND_HOST" "$UTS_PG_PORT"; then
      log_info "PostgreSQL running ($PGDATA_DIR), listening on $UTS_BIND_HOST:$UTS_PG_PORT"
    else
      log_info "PostgreSQL running ($PGDATA_DIR), but $UTS_BIND_HOST:$UTS_PG_PORT is not accepting connections"
    fi
    return 0
  fi
  log_info "PostgreSQL not running ($PGDATA_DIR)"
  return 3
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  crash) cmd_stop immediate ;;
  restart)
    cmd_stop
    exec 9>&-
    cmd_start
    ;;
  status) cmd_status ;;
  psql)
    shift
    PG_BINDIR="$(find_bindir)"
    [[ -n "$PG_BINDIR" ]] || die "PostgreSQL is not installed; run '$0 start' first"
    PGPASSWORD="$PG_PASSWORD" exec "$PG_BINDIR/psql" "postgresql://$PG_USER@$UTS_BIND_HOST:$UTS_PG_PORT/$PG_DB" "$@"
    ;;
  *)
    sed -n '2,4p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
