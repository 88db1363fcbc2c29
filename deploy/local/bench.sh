#!/usr/bin/env bash
# Benchmark: builds the release binaries and runs uts-bench twice against the local Kafka and
# PostgreSQL, each time with services of its own (own topics, own database, own ports):
#
#  1. throughput: a release gateway alone (127.0.0.1:18095); raw Kafka production of the same
#     job messages from one process, then the same load through the gateway's HTTP API:
#     usages/s and p50/p99 acknowledgement latency;
#  2. visibility: a second gateway (18093) and a query service (18097) on fresh topics; the time
#     from a POST's 202 to GET /usagesJobs/{id} answering 200, idle and under the gateway load;
#  3. pipeline, twice (one hot bucket; 10,000 buckets): every stage from release binaries
#     (gateway 18091, query service 18087, verifier, aggregator, billing-forwarder, billing
#     receiver 18075) on topics and a database of their own, billing on; the same load for the
#     same time, then until drained, every second: usages accepted, verified, aggregated and
#     completed, each stage's backlog and Kafka lag, every process's RSS; probe jobs give
#     POST->visible/AGGREGATED/COMPLETED p50/p99, then PostgreSQL's WAL per usage, full-page
#     images, checkpoints and top WAL statements during the load. UTS_BENCH_PIPELINE_SECONDS (60) is the load's
#     length; UTS_BENCH_RATE=N posts N jobs/s instead of as fast as possible (e.g. half the
#     sustained maximum, for the latencies); UTS_BENCH_SHAPES (hot spread) picks the shapes;
#     UTS_BENCH_PHASES=pipeline skips phases 1 and 2, UTS_BENCH_PHASES=http skips phase 3;
#     phase 2 also reads one job by id from the query service directly and through the gateway
#     (the one address's forwarding cost); UTS_BENCH_AGGREGATOR_ARGS adds flags to the
#     aggregator (e.g. a --kafka-property to try); each phase's database is dropped after it
#     (UTS_BENCH_KEEP_DB=1 keeps them).
#  4. soak (UTS_BENCH_PHASES=soak, instead of the others): the pipeline phase, hot shape, for
#     UTS_BENCH_SOAK_SECONDS (600) at UTS_BENCH_RATE jobs/s, by default 80 % of the sustained
#     maximum, measured first (UTS_BENCH_SOAK_MAX_SECONDS, 300, unbounded: the rate the
#     aggregator kept up during the load);
#     a line a minute with every process's mean RSS (sampled each second), every stage's largest
#     lag and PostgreSQL's WAL, checkpoint and autovacuum work, then whether memory
#     stayed flat (after two warm-up minutes, the last third's mean RSS within 10 % of the first
#     third's; the billing receiver, which keeps every record, reported but not judged) and the
#     lags bounded.
#
#   deploy/local/bench.sh [uts-bench flags, e.g. --seconds 20 --concurrency 64]
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

mkdir -p "$UTS_LOCAL_DIR/run"
# One benchmark at a time: its exit deletes every uts-bench.* topic, a second run's included (a
# soak started while the last one was still cleaning up lost its topics 17 s in).
exec 9>"$UTS_LOCAL_DIR/run/bench.lock"
flock -n 9 || die "another deploy/local/bench.sh is running (lock $UTS_LOCAL_DIR/run/bench.lock)"

"$UTS_LOCAL_SCRIPTS_DIR/infra.sh" up >/dev/null
# shellcheck disable=SC1091
. "$UTS_LOCAL_DIR/env"
# A database of its own, made anew each run: the benchmark's jobs never pile up in the local stack's.
psql "$DATABASE_URL" -qc "DROP DATABASE IF EXISTS uts_bench" -c "CREATE DATABASE uts_bench" >/dev/null
DATABASE_URL="${DATABASE_URL%/*}/uts_bench"
export UTS_KAFKA_BROKERS DATABASE_URL
log_info "building release binaries (the first time takes several minutes)"
(cd "$UTS_REPO_ROOT" && cargo build --release -q -p ingest-gateway -p query-service -p utsctl -p uts-bench \
  -p verifier -p aggregator -p billing-forwarder -p billing-receiver)
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

if [[ "${UTS_BENCH_PHASES:-all}" != pipeline && "${UTS_BENCH_PHASES:-all}" != soak ]]; then
start ingest-gateway 18096 uts-bench --listen-addr 127.0.0.1:18095 --database-max-connections 4
echo "== throughput: the gateway alone =="
UTS_TOPIC_PREFIX=uts-bench "$bin/uts-bench" --gateway-url http://127.0.0.1:18095 \
  --token "$token" --tenant bench-operator "$@"

start query-service 18098 uts-bench-vis --listen-addr 127.0.0.1:18097 \
  --consumer-group "bench-query-$(date +%s)" --database-max-connections 4 \
  --rate-limit-per-second 0
start ingest-gateway 18094 uts-bench-vis --listen-addr 127.0.0.1:18093 --database-max-connections 4 \
  --query-service-url http://127.0.0.1:18097
echo "== visibility: POST acknowledged -> GET /usagesJobs/{id}, with the query service projecting =="
echo "   (and reads of a job by id from the query service directly, then through the gateway: the one address)"
UTS_TOPIC_PREFIX=uts-bench-vis "$bin/uts-bench" --gateway-url http://127.0.0.1:18093 \
  --query-url http://127.0.0.1:18097 --read-via http://127.0.0.1:18093 --probe-token "$probe_token" --skip-raw \
  --token "$token" --tenant bench-operator "$@"
fi

# pipeline_phase SHAPE RATE [uts-bench flags]: every stage from release binaries on topics and a
# database of their own, then `uts-bench --pipeline`; the processes are stopped afterwards.
pipeline_phase() {
  local shape="$1" rate="$2"
  shift 2
  local name="pipe-$shape-$rate" base="${DATABASE_URL%/*}" db
  db="uts_bench_${shape}_$rate"
  psql "$DATABASE_URL" -qc "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" >/dev/null
  local phase_pids_start=${#pids[@]}
  (
    export DATABASE_URL="$base/$db" UTS_TOPIC_PREFIX="uts-bench-$name"
    "$bin/utsctl" migrate >&2
    "$bin/utsctl" topics >&2
    for tenant in bench-operator bench-probe; do "$bin/utsctl" tenant --id "$tenant" --type operator >&2; done
    "$bin/utsctl" tenant --id bench-provider --type developer >&2
    units="SELECT 'bench-unit'"
    [[ "$shape" == spread ]] && units="SELECT 'bench-unit-' || n FROM generate_series(0, 9999) n"
    psql "$DATABASE_URL" -qc "INSERT INTO rules (application, unit, owner_tenant_id, billing_enabled)
      SELECT 'bench-app', u, 'bench-provider', true FROM ($units) s(u)
      UNION ALL SELECT 'probe', 'probe-unit', 'bench-provider', true" >/dev/null
  )
  local prefix="uts-bench-$name" stamp
  stamp="$(date +%s)"
  DATABASE_URL="$base/$db" start billing-receiver 18076 "$prefix" --listen-addr 127.0.0.1:18075
  DATABASE_URL="$base/$db" start ingest-gateway 18092 "$prefix" --listen-addr 127.0.0.1:18091 --database-max-connections 4 \
    --query-service-url http://127.0.0.1:18087
  DATABASE_URL="$base/$db" start query-service 18088 "$prefix" --listen-addr 127.0.0.1:18087 \
    --consumer-group "bench-query-$stamp" --database-max-connections 4 --rate-limit-per-second 0 ${UTS_BENCH_QUERY_ARGS:-}
  DATABASE_URL="$base/$db" start verifier 18077 "$prefix" --consumer-group "bench-verifier-$stamp" --database-max-connections 4
  DATABASE_URL="$base/$db" start aggregator 18078 "$prefix" --consumer-group "bench-aggregator-$stamp" --database-max-connections 4 ${UTS_BENCH_AGGREGATOR_ARGS:-}
  DATABASE_URL="$base/$db" start billing-forwarder 18079 "$prefix" --consumer-group "bench-forwarder-$stamp" \
    --database-max-connections 4 --billing-url http://127.0.0.1:18075/billing/v1/records --receipts-addr 127.0.0.1:18074
  local names=(receiver gateway query verifier aggregator forwarder) watch=() i
  for ((i = 0; i < ${#names[@]}; i++)); do
    watch+=(--watch "${names[$i]}=${pids[$((phase_pids_start + i))]}")
  done
  echo "== pipeline: $shape shape, rate ${rate} jobs/s (0: unbounded), every stage, billing on =="
  DATABASE_URL="$base/$db" UTS_TOPIC_PREFIX="$prefix" "$bin/uts-bench" --pipeline \
    --gateway-url http://127.0.0.1:18091 --query-url http://127.0.0.1:18087 \
    --token "$token" --tenant bench-operator --probe-token "$probe_token" --probe-tenant bench-probe \
    --shape "$shape" --rate "$rate" "${watch[@]}" \
    --metrics verifier=http://127.0.0.1:18077/metrics --metrics aggregator=http://127.0.0.1:18078/metrics \
    --metrics forwarder=http://127.0.0.1:18079/metrics --metrics query=http://127.0.0.1:18088/metrics "$@"
  kill -TERM "${pids[@]:$phase_pids_start}" 2>/dev/null || true
  wait "${pids[@]:$phase_pids_start}" 2>/dev/null || true
  pids=("${pids[@]:0:$phase_pids_start}")
  "$UTS_LOCAL_SCRIPTS_DIR/kafka.sh" topics --delete --topic "$prefix.*" >/dev/null 2>&1 || true
  # The broker removes a deleted topic's files a moment later (file.delete.delay.ms): wait for
  # that here, not during the next phase's load.
  deleted() { ! compgen -G "$UTS_LOCAL_DIR/kafka/data/$prefix.*" >/dev/null; }
  wait_until 120 0.5 deleted || log_info "the files of $prefix are still there after 120 s"
  # Its database goes too (UTS_BENCH_KEEP_DB=1 keeps it for a look): left behind, its
  # autovacuum ran during the next phase (seen in pg_stat_activity) on a machine with no idle CPU.
  [[ "${UTS_BENCH_KEEP_DB:-0}" == 1 ]] || psql "$DATABASE_URL" -qc "DROP DATABASE IF EXISTS $db" >/dev/null || true
}

[[ "${UTS_BENCH_PHASES:-all}" != http ]] || exit 0
if [[ "${UTS_BENCH_PHASES:-all}" == soak ]]; then
  rate="${UTS_BENCH_RATE:-}"
  if [[ -z "$rate" ]]; then
    # Five minutes, not one: in the first minute the database is empty and PostgreSQL's
    # background work has not begun; 80 % of a 60 s maximum (414,564 usages/s on 2026-12-03) tipped
    # the soak over after 4 minutes, its backlog 4.8 million usages by minute 10.
    max_seconds="${UTS_BENCH_SOAK_MAX_SECONDS:-300}"
    echo "== soak, first the sustained maximum: $max_seconds s unbounded =="
    pipeline_phase hot 0 --seconds "$max_seconds" | tee "$UTS_LOCAL_DIR/run/soak-maximum.txt"
    per_second="$(sed -n 's/.*aggregated during the load (from [0-9]* s to its end): \([0-9]*\) usages\/s.*/\1/p' \
      "$UTS_LOCAL_DIR/run/soak-maximum.txt")"
    [[ -n "$per_second" ]] || die "no sustained rate in $UTS_LOCAL_DIR/run/soak-maximum.txt"
    rate=$((per_second * 8 / 10 / 200)) # 200 usages a job
    echo "== soak: sustained maximum $per_second usages/s; 80 %: $rate jobs/s =="
  fi
  pipeline_phase hot "$rate" --seconds "${UTS_BENCH_SOAK_SECONDS:-600}" --soak "$@"
  exit 0
fi
pipeline_seconds="${UTS_BENCH_PIPELINE_SECONDS:-60}"
for shape in ${UTS_BENCH_SHAPES:-hot spread}; do
  pipeline_phase "$shape" "${UTS_BENCH_RATE:-0}" --seconds "$pipeline_seconds"
done
