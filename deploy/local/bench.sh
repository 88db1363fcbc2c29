#!/usr/bin/env bash
# Benchmark: builds the release binaries and runs uts-bench twice against the local Kafka and
# PostgreSQL, each time with services of its own (own topics, own database, own ports):
#
#  1. throughput: a release gateway alone (127.0.0.1:18095); raw Kafka production of the same
#     job messages from one process, then the same load through the gateway's HTTP API:
#     usages/s and p50/p99 acknowledgement latency;
#  2. visibility: a second gateway (18093) and a query service (18097) on fresh topics; the time
#     from a POST's 202 to GET /usagesJobs/{id} answering 200, idle and under the gateway load.
#
#   deploy/local/bench.sh [uts-bench flags, e.g. --seconds 20 --concurrency 64]
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

"$UTS_LOCAL_SCRIPTS_DIR/infra.sh" up >/dev/null
# shellcheck disable=SC1091
. "$UTS_LOCAL_DIR/env"
# A database of its own, made anew each run: the benchmark's jobs never pile up in the local stack's.
psql "$DATABASE_URL" -qc "DROP DATABASE IF EXISTS uts_bench" -c "CREATE DATABASE uts_bench" >/dev/null
DATABASE_URL="${DATABASE_URL%/*}/uts_bench"
export UTS_KAFKA_BROKERS DATABASE_URL
log_info "building release binaries (the first time takes several minutes)"
(cd "$UTS_REPO_ROOT" && cargo build --release -q -p ingest-gateway -p query-service -p utsctl -p uts-bench)
bin="${CARGO_TARGET_DIR:-$UTS_REPO_ROOT/target}/release"
mkdir -p "$UTS_LOCAL_DIR/run"

UTS_JWT_HS256_SECRET="$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
export UTS_JWT_HS256_SECRET
"$bin/utsctl" migrate >&2
for prefix in uts-bench uts-bench-vis; do
  UTS_TOPIC_PREFIX=$prefix "$bin/utsctl" topics >&2
done
"$bin/utsctl" tenant --id bench-operator --type operator >&2
"$bin/utsctl" tenant --id bench-probe --type operator >&2
token="$("$bin/utsctl" token --tenant bench-operator --scopes uts.usages.write,uts.usages.read --ttl-seconds 3600)"
probe_token="$("$bin/utsctl" token --tenant bench-probe --scopes uts.usages.write,uts.usages.read --ttl-seconds 3600)"

pids=()
cleanup() {
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
  # The benchmark writes gigabytes; drop its topics so local disks do not fill up.
  "$UTS_LOCAL_SCRIPTS_DIR/kafka.sh" topics --delete --topic 'uts-bench.*' >/dev/null 2>&1 || true
}
trap cleanup EXIT

# start NAME ADMIN_PORT PREFIX ARGS...: a release process on its own topics, waited for.
start() {
  local name="$1" admin_port="$2" prefix="$3"
  shift 3
  UTS_TOPIC_PREFIX=$prefix RUST_LOG=warn "$bin/$name" --admin-addr "127.0.0.1:$admin_port" "$@" \
    >"$UTS_LOCAL_DIR/run/bench-$name-$prefix.log" 2>&1 &
  pids+=($!)
  ready() { curl -fsS "http://127.0.0.1:$admin_port/readyz" >/dev/null 2>&1; }
  wait_until 60 0.3 ready || die "bench $name did not become ready (see $UTS_LOCAL_DIR/run/bench-$name-$prefix.log)"
}

start ingest-gateway 18096 uts-bench --listen-addr 127.0.0.1:18095 --database-max-connections 4
echo "== throughput: the gateway alone =="
UTS_TOPIC_PREFIX=uts-bench "$bin/uts-bench" --gateway-url http://127.0.0.1:18095 \
  --token "$token" --tenant bench-operator "$@"

start ingest-gateway 18094 uts-bench-vis --listen-addr 127.0.0.1:18093 --database-max-connections 4
start query-service 18098 uts-bench-vis --listen-addr 127.0.0.1:18097 \
  --consumer-group "bench-query-$(date +%s)" --database-max-connections 4 \
  --rate-limit-per-second 0
echo "== visibility: POST acknowledged -> GET /usagesJobs/{id}, with the query service projecting =="
UTS_TOPIC_PREFIX=uts-bench-vis "$bin/uts-bench" --gateway-url http://127.0.0.1:18093 \
  --query-url http://127.0.0.1:18097 --probe-token "$probe_token" --skip-raw \
  --token "$token" --tenant bench-operator "$@"
