# shellcheck shell=bash
# Shared helpers for the local (no-Docker) infrastructure scripts in deploy/local/.
# Source it from a bash script that already runs with `set -euo pipefail`:
#
#   . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#
# Settings (environment overrides, with defaults):
#   UTS_LOCAL_DIR              all local state (default: <repo root>/.local, git-ignored)
#   UTS_KAFKA_PORT             Kafka broker listener, 127.0.0.1 only   (default 19092)
#   UTS_KAFKA_CONTROLLER_PORT  Kafka KRaft controller listener         (default 19093)
#   UTS_PG_PORT                PostgreSQL, 127.0.0.1 only              (default 55432)
#
# Everything binds to 127.0.0.1 only (UTS_BIND_HOST); that is deliberately not configurable.

if [[ -n "${_UTS_LOCAL_LIB_LOADED:-}" ]]; then
  return 0
fi
_UTS_LOCAL_LIB_LOADED=1

UTS_LOCAL_SCRIPTS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"

# Repo root: git's idea of it when available, else two levels above deploy/local/.
uts_repo_root() {
  local root
  if root="$(git -C "$UTS_LOCAL_SCRIPTS_DIR" rev-parse --show-toplevel 2>/dev/null)" && [[ -n "$root" ]]; then
    printf '%s\n' "$root"
  else
    (cd "$UTS_LOCAL_SCRIPTS_DIR/../.." && pwd -P)
  fi
}

UTS_REPO_ROOT="${UTS_REPO_ROOT:-$(uts_repo_root)}"
UTS_LOCAL_DIR="${UTS_LOCAL_DIR:-$UTS_REPO_ROOT/.local}"
# Make it absolute, so that pid files and configs never depend on the caller's cwd.
if [[ "$UTS_LOCAL_DIR" != /* ]]; then
  UTS_LOCAL_DIR="$PWD/$UTS_LOCAL_DIR"
fi
UTS_BIND_HOST=127.0.0.1
UTS_KAFKA_PORT="${UTS_KAFKA_PORT:-19092}"
UTS_KAFKA_CONTROLLER_PORT="${UTS_KAFKA_CONTROLLER_PORT:-19093}"
UTS_PG_PORT="${UTS_PG_PORT:-55432}"
export UTS_LOCAL_DIR UTS_BIND_HOST UTS_KAFKA_PORT UTS_KAFKA_CONTROLLER_PORT UTS_PG_PORT

for _uts_p in UTS_KAFKA_PORT UTS_KAFKA_CONTROLLER_PORT UTS_PG_PORT; do
  if ! [[ "${!_uts_p}" =~ ^[0-9]+$ ]] || (( ${!_uts_p} < 1 || ${!_uts_p} > 65535 )); then
    printf '[uts-local] ERROR: %s=%q is not a valid TCP port\n' "$_uts_p" "${!_uts_p}" >&2
    exit 2
  fi
done
unset _uts_p

# ---------------------------------------------------------------------------------------------
# Logging (everything goes to stderr, so stdout stays usable for values such as the env file).
_uts_log() {
  local level="$1"
  shift
  printf '[uts-local %s] %s%s\n' "$(date +%H:%M:%S)" "$level" "$*" >&2
}
log_info() { _uts_log "" "$*"; }
log_warn() { _uts_log "WARNING: " "$*"; }
log_error() { _uts_log "ERROR: " "$*"; }
die() {
  log_error "$*"
  exit 1
}

# ---------------------------------------------------------------------------------------------
# Time / polling helpers. Synchronisation is always "poll a condition until a deadline".

now_s() { date +%s; }

# port_open HOST PORT -> 0 if something accepts TCP connections there.
port_open() {
  local host="$1" port="$2"
  # shellcheck disable=SC2016 # expanded by the inner bash
  timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$host" "$port" 2>/dev/null
}

# wait_for_port HOST PORT TIMEOUT_SECONDS -> 0 once the port accepts connections, 1 on timeout.
wait_for_port() {
  local host="$1" port="$2" timeout_s="$3"
  local deadline=$(($(now_s) + timeout_s))
  while :; do
    if port_open "$host" "$port"; then
      return 0
    fi
    if (($(now_s) >= deadline)); then
      return 1
    fi
    sleep 0.2
  done
}

# wait_until TIMEOUT_SECONDS INTERVAL_SECONDS CMD [ARGS...]
# Re-runs CMD until it succeeds (0) or the deadline passes (1).
wait_until() {
  local timeout_s="$1" interval="$2"
  shift 2
  local deadline=$(($(now_s) + timeout_s))
  while :; do
    if "$@"; then
      return 0
    fi
    if (($(now_s) >= deadline)); then
      return 1
    fi
    sleep "$interval"
  done
}

# ---------------------------------------------------------------------------------------------
# Processes.

# pid_alive PID -> 0 if the process exists and is not a zombie (a killed child that nobody has
# reaped yet still answers `kill -0`).
pid_alive() {
  local pid="${1:-}" stat=""
  [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
  { stat="$(<"/proc/$pid/stat")"; } 2>/dev/null || return 0 # no procfs: trust kill -0
  stat="${stat##*) }"                                       # fields after "(comm) "
  [[ "${stat%% *}" != Z ]]
}

# pid_cmdline PID -> the process's command line with NULs turned into spaces.
pid_cmdline() {
  { tr '\0' ' ' <"/proc/$1/cmdline"; } 2>/dev/null || true
}

# wait_pid_exit PID TIMEOUT_SECONDS -> 0 once the process is gone, 1 on timeout.
wait_pid_exit() {
  local pid="$1" timeout_s="$2"
  local deadline=$(($(now_s) + timeout_s))
  while pid_alive "$pid"; do
    if (($(now_s) >= deadline)); then
      return 1
    fi
    sleep 0.2
  done
  return 0
}

# ---------------------------------------------------------------------------------------------
# Installing what is missing (Debian/apt).

is_root() { [[ "$(id -u)" == 0 ]]; }

_UTS_APT_UPDATED=""
# apt_install PKG... -> installs Debian packages (root only), with a clear message otherwise.
apt_install() {
  if ! command -v apt-get >/dev/null 2>&1; then
    die "need the package(s) '$*' but apt-get is not available; please install them by hand"
  fi
  if ! is_root; then
    die "need the package(s) '$*': run 'sudo apt-get update && sudo apt-get install -y $*' (or run this script as root)"
  fi
  log_info "installing Debian package(s): $* (apt-get; this can take a minute)"
  if [[ -z "$_UTS_APT_UPDATED" ]]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 || die "apt-get update failed"
    _UTS_APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >&2 ||
    die "apt-get install $* failed"
}

# require_cmd CMD DEBIAN_PACKAGE -> makes sure CMD is on PATH, installing the package if needed.
require_cmd() {
  local cmd="$1" pkg="$2"
  if command -v "$cmd" >/dev/null 2>&1; then
    return 0
  fi
  log_warn "'$cmd' not found on PATH"
  apt_install "$pkg"
  command -v "$cmd" >/dev/null 2>&1 || die "'$cmd' still not found after installing '$pkg'"
}

# require_build_deps: what compiling the workspace needs beyond Rust: a C toolchain (librdkafka
# is built from source by rdkafka-sys) and OpenSSL's headers (the token service's key generation).
require_build_deps() {
  local tool
  for tool in cc:gcc c++:g++ make:make perl:perl pkg-config:pkg-config; do
    require_cmd "${tool%%:*}" "${tool##*:}"
  done
  pkg-config --exists openssl 2>/dev/null || apt_install libssl-dev
  pkg-config --exists openssl || die "OpenSSL's headers are still missing after installing libssl-dev"
}

# java_bin -> path of the java executable to use (JAVA_HOME first, then PATH).
java_bin() {
  if [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then
    printf '%s\n' "$JAVA_HOME/bin/java"
  else
    command -v java
  fi
}

# require_java17 -> ensures a Java >= 17 runtime exists (installs openjdk-17-jre-headless if none).
require_java17() {
  if [[ -z "$(java_bin 2>/dev/null || true)" ]]; then
    log_warn "no 'java' found (and JAVA_HOME unset); Kafka 4 needs Java 17+"
    apt_install openjdk-17-jre-headless
  fi
  local jv major
  jv="$("$(java_bin)" -version 2>&1 | awk -F'"' '/version/ {print $2; exit}')"
  major="${jv%%.*}"
  if [[ "$major" == 1 ]]; then major="$(cut -d. -f2 <<<"$jv")"; fi
  if ! [[ "$major" =~ ^[0-9]+$ ]] || ((major < 17)); then
    die "Kafka 4 needs Java 17 or newer, but '$(java_bin)' is version '$jv' (set JAVA_HOME to a JDK/JRE 17+)"
  fi
}

ensure_local_dir() {
  mkdir -p "$UTS_LOCAL_DIR"
}
