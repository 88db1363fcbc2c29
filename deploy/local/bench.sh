#!/usr/bin/env bash
# Benchmark: builds the release binaries, starts a release gateway of its own on
# 127.0.0.1:$UTS_BENCH_PORT (default 18095) against the local Kafka and PostgreSQL, and runs
# uts-bench: raw Kafka production of the job messages from one process, then the same load
# through the gateway's HTTP API. Prints usages/s and p50/p99 acknowledgement latency.
#
#   deploy/local/bench.sh [uts-bench flags, e.g. --seconds 20 --concurrency 64]
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

port="${UTS_BENCH_PORT:-18095}"
admin_port="${UTS_BENCH_ADMIN_PORT:-18096}"
"$UTS_LOCAL_SCRIPTS_DIR/infra.sh" up >/dev/null
# shellcheck disable=SC1091
. "$UTS_LOCAL_DIR/env"
export UTS_KAFKA_BROKERS DATABASE_URL
log_info "building release binaries (the first time takes several minutes)"
(cd "$UTS_REPO_ROOT" && cargo build --release -q -p ingest-gateway -p utsctl -p uts-bench)
bin="${CARGO_TARGET_DIR:-$UTS_REPO_ROOT/target}/release"

# Its own topics: the benchmark never floods the topics of the local stack.
export UTS_TOPIC_PREFIX=uts-bench
UTS_JWT_HS256_SECRET="$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
export UTS_JWT_HS256_SECRET
"$bin/utsctl" migrate >&2
"$bin/utsctl" topics >&2
"$bin/utsctl" tenant --id bench-operator --type operator >&2
token="$("$bin/utsctl" token --tenant bench-operator --scopes uts.usages.write --ttl-seconds 3600)"

log_file="$UTS_LOCAL_DIR/run/bench-gateway.log"
mkdir -p "$(dirname "$log_file")"
RUST_LOG=warn "$bin/ingest-gateway" --listen-addr "127.0.0.1:$port" --admin-addr "127.0.0.1:$admin_port" \
  --database-max-connections 4 >"$log_file" 2>&1 &
gateway_pid=$!
cleanup() {
  kill -TERM "$gateway_pid" 2>/dev/null
  wait "$gateway_pid" 2>/dev/null || true
  # The benchmark writes gigabytes; drop its topics so local disks do not fill up.
  "$UTS_LOCAL_SCRIPTS_DIR/kafka.sh" topics --delete --topic 'uts-bench\..*' >/dev/null 2>&1 || true
}
trap cleanup EXIT
ready() { curl -fsS "http://127.0.0.1:$admin_port/readyz" >/dev/null 2>&1; }
wait_until 60 0.3 ready || die "the bench gateway did not become ready (see $log_file)"

"$bin/uts-bench" --gateway-url "http://127.0.0.1:$port" --token "$token" --tenant bench-operator "$@"
