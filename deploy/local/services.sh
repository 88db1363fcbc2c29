#!/usr/bin/env bash
# Starts and stops the service's own processes (built from this workspace) in the background,
# with pid files and logs under $UTS_LOCAL_DIR/run. Kafka and PostgreSQL come from infra.sh.
#
#   deploy/local/services.sh start   build, migrate, create topics, start every stage
#   deploy/local/services.sh stop    SIGTERM every stage (graceful drain), SIGKILL after 20 s
#   deploy/local/services.sh status
#
# Ports (127.0.0.1): gateway API 18080 (the one address of the whole public API: it forwards
# everything but the two POSTs to the query service) and admin 18081, verifier admin 18082, aggregator admin
# 18083, billing-forwarder admin 18084 and receipts 18086, query service (admin API) 18090 and admin 18085,
# billing receiver
# 18070 (admin 18071). Settings: UTS_GATEWAY_PORT, UTS_GATEWAY_ADMIN_PORT,
# UTS_CARGO_PROFILE (dev or release; default dev, which shares target/ with the tests).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

UTS_GATEWAY_PORT="${UTS_GATEWAY_PORT:-18080}"
UTS_GATEWAY_ADMIN_PORT="${UTS_GATEWAY_ADMIN_PORT:-18081}"
UTS_CARGO_PROFILE="${UTS_CARGO_PROFILE:-dev}"
RUN_DIR="$UTS_LOCAL_DIR/run"
# The stages that exist as binaries so far, in start order.
STAGES=(billing-receiver query-service ingest-gateway verifier aggregator billing-forwarder)

target_dir() {
  local dir="${CARGO_TARGET_DIR:-$UTS_REPO_ROOT/target}"
  if [[ "$UTS_CARGO_PROFILE" == dev ]]; then echo "$dir/debug"; else echo "$dir/$UTS_CARGO_PROFILE"; fi
}

load_env() {
  [[ -f "$UTS_LOCAL_DIR/env" ]] || die "no $UTS_LOCAL_DIR/env: run deploy/local/infra.sh up first"
  # shellcheck disable=SC1091
  . "$UTS_LOCAL_DIR/env"
  # A random local signing secret, made once, never committed.
  local secret_file="$UTS_LOCAL_DIR/jwt-hs256-secret"
  if [[ ! -s "$secret_file" ]]; then
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$secret_file"
    chmod 600 "$secret_file"
  fi
  UTS_JWT_HS256_SECRET="$(cat "$secret_file")"
  export UTS_JWT_HS256_SECRET UTS_KAFKA_BROKERS DATABASE_URL
}

build() {
  require_build_deps
  log_info "building the service ($UTS_CARGO_PROFILE profile)"
  (cd "$UTS_REPO_ROOT" && cargo build --profile "$UTS_CARGO_PROFILE" --bins -q) ||
    die "cargo build failed"
}

utsctl() { "$(target_dir)/utsctl" "$@"; }

start_stage() {
  local name="$1"
  shift
  local pid_file="$RUN_DIR/$name.pid" log_file="$RUN_DIR/$name.log"
  if [[ -f "$pid_file" ]] && pid_alive "$(cat "$pid_file")"; then
    log_info "$name already running (pid $(cat "$pid_file"))"
    return 0
  fi
  nohup "$(target_dir)/$name" "$@" >>"$log_file" 2>&1 &
  echo $! >"$pid_file"
  log_info "started $name (pid $!, log $log_file)"
}

wait_ready() {
  local name="$1" admin_port="$2"
  ready() { curl -fsS "http://127.0.0.1:$admin_port/readyz" >/dev/null 2>&1; }
  if ! wait_until 60 0.3 ready; then
    tail -n 30 "$RUN_DIR/$name.log" >&2 || true
    die "$name did not become ready within 60 s (log above)"
  fi
  log_info "$name is ready"
}

cmd_start() {
  require_cmd curl curl
  mkdir -p "$RUN_DIR"
  load_env
  build
  utsctl migrate >&2
  utsctl topics >&2
  start_stage billing-receiver --listen-addr 127.0.0.1:18070 --admin-addr 127.0.0.1:18071 \
    --data-file "$RUN_DIR/billing-receiver.jsonl"
  start_stage query-service --listen-addr 127.0.0.1:18090 --admin-addr 127.0.0.1:18085
  start_stage ingest-gateway \
    --listen-addr "127.0.0.1:$UTS_GATEWAY_PORT" --admin-addr "127.0.0.1:$UTS_GATEWAY_ADMIN_PORT" \
    --query-service-url http://127.0.0.1:18090
  start_stage verifier --admin-addr 127.0.0.1:18082
  start_stage aggregator --admin-addr 127.0.0.1:18083
  start_stage billing-forwarder --admin-addr 127.0.0.1:18084 --receipts-addr 127.0.0.1:18086 \
    --billing-url http://127.0.0.1:18070/billing/v1/records
  wait_ready billing-receiver 18071
  wait_ready query-service 18085
  wait_ready ingest-gateway "$UTS_GATEWAY_ADMIN_PORT"
  wait_ready verifier 18082
  wait_ready aggregator 18083
  wait_ready billing-forwarder 18084
}

cmd_stop() {
  local name pid
  for name in "${STAGES[@]}"; do
    local pid_file="$RUN_DIR/$name.pid"
    [[ -f "$pid_file" ]] || continue
    pid="$(cat "$pid_file")"
    if pid_alive "$pid"; then
      kill -TERM "$pid" 2>/dev/null || true
      if ! wait_pid_exit "$pid" 20; then
        log_warn "$name (pid $pid) did not stop within 20 s; killing it"
        kill -KILL "$pid" 2>/dev/null || true
      fi
      log_info "stopped $name"
    fi
    rm -f "$pid_file"
  done
}

cmd_status() {
  local name rc=0
  for name in "${STAGES[@]}"; do
    local pid_file="$RUN_DIR/$name.pid"
    if [[ -f "$pid_file" ]] && pid_alive "$(cat "$pid_file")"; then
      echo "$name: running (pid $(cat "$pid_file"))"
    else
      echo "$name: stopped"
      rc=1
    fi
  done
  return $rc
}

# Registers the sample's tenant, creates a billed rule and a KPI for the sample's (application,
# unit) through the admin API, makes a client of the token service for the tenant and gets its
# token from /oauth/token, posts the sample from deploy/samples/usages-job.json (the
# POST /usagesJobs sample of the original documentation), follows the job to billing and ends
# by printing the job as GET /usagesJobs/{id} returns it and the dashboard's address. Everything
# goes through the one address (the gateway's port).
cmd_demo() {
  load_env
  local tenant=siemenshcops base="http://127.0.0.1:$UTS_GATEWAY_PORT"
  local api="$base/api/usagetransparency/v3"
  local admin_api="$api/admin"
  local admin_token token answer job_id client_id="demo-$tenant" created secret
  admin_token="$(utsctl token --tenant uts-operator --scopes uts.admin --ttl-seconds 600)"
  curl -fsS -X PUT "$admin_api/tenants/$tenant" -H "Authorization: Bearer $admin_token" \
    -H 'Content-Type: application/json' -d '{"tenantType":"operator","displayName":"Siemens Healthcare ops"}' >/dev/null
  # Both answer 409 when a previous run created them already.
  curl -sS -X POST "$admin_api/rules" -H "Authorization: Bearer $admin_token" -H 'Content-Type: application/json' \
    -d '{"application":"manage-my-machines","unit":"mmm-recurring-unit","ownerTenantId":"siemenshcops","aggregationFunction":"SUM","billingEnabled":true}' \
    >/dev/null
  curl -sS -X POST "$admin_api/kpis" -H "Authorization: Bearer $admin_token" -H 'Content-Type: application/json' \
    -d '{"name":"mmm-recurring","displayName":"MMM recurring units","application":"manage-my-machines","applicationDisplayName":"Manage my Machines","unit":"mmm-recurring-unit","ownerTenantId":"siemenshcops","aggregationFunctionDaily":"SUM","aggregationFunctionMonthly":"SUM","preFill":"ZERO"}' \
    >/dev/null
  # A client of the token service; a later run gets it a new secret (secrets are shown once).
  created="$(curl -sS -X POST "$admin_api/clients" -H "Authorization: Bearer $admin_token" -H 'Content-Type: application/json' \
    -d "{\"clientId\":\"$client_id\",\"tenantId\":\"$tenant\",\"scopes\":[\"uts.usages.write\",\"uts.usages.read\",\"uts.aggregates.read\"],\"description\":\"quick start\"}")"
  if ! grep -q '"clientSecret"' <<<"$created"; then
    created="$(curl -fsS -X POST "$admin_api/clients/$client_id/secret" -H "Authorization: Bearer $admin_token")"
  fi
  secret="$(sed -n 's/.*"clientSecret":"\([^"]*\)".*/\1/p' <<<"$created")"
  [[ -n "$secret" ]] || die "no client secret from the admin API: $created"
  echo "\$ curl -X POST $base/oauth/token -u '$client_id:…' -d grant_type=client_credentials"
  token="$(curl -fsS -X POST "$base/oauth/token" -u "$client_id:$secret" -d grant_type=client_credentials |
    sed -n 's/.*"access_token":"\([^"]*\)".*/\1/p')"
  [[ -n "$token" ]] || die "the token service issued no token"
  echo "(an RS256 token for tenant $tenant, verified against $base/token_keys)"
  echo
  echo "\$ curl -X POST $api/usagesJobs -H 'Authorization: Bearer …' -H 'Content-Type: application/json' --data @deploy/samples/usages-job.json"
  answer="$(curl -sS -i -X POST "$api/usagesJobs" \
    -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
    --data @"$UTS_REPO_ROOT/deploy/samples/usages-job.json" | tr -d '\r')"
  echo "$answer"
  echo
  job_id="$(sed -n 's/.*"id":"\([^"]*\)".*/\1/p' <<<"$answer")"
  [[ -n "$job_id" ]] || die "the sample was not accepted"
  billed() { curl -fsS "$api/usagesJobs/$job_id" -H "Authorization: Bearer $token" | grep -q '"processStatus":"RECEIVEDFORBILLING"'; }
  if wait_until 60 0.5 billed; then
    echo "The job went through verification (rule: SUM, billed), the daily aggregate and billing."
    echo "Daily aggregate (PostgreSQL):"
    psql "$DATABASE_URL" -c "SELECT provider_tenant_id, consumer_tenant_id, application, unit, day, function, value, usages_count, version
      FROM daily_aggregates WHERE application = 'manage-my-machines' ORDER BY day" 2>&1
    echo "Received by the reference billing system (GET http://127.0.0.1:18070/billing/v1/records):"
    curl -fsS http://127.0.0.1:18070/billing/v1/records
    echo
  else
    log_warn "job $job_id did not reach billing within 60 s; see $RUN_DIR/*.log"
  fi
  completed() { curl -fsS "$api/usagesJobs/$job_id" -H "Authorization: Bearer $token" | grep -q '"status":"COMPLETED"'; }
  wait_until 30 0.5 completed || log_warn "the job is not COMPLETED in the query service yet"
  echo
  echo "The dashboard (signed in as $tenant for 30 min through the link; the sample is dated 2011-07-14:"
  echo "its KPI is under Monthly KPIs, provider $tenant, application manage-my-machines, KPI mmm-recurring, July 2011):"
  echo "  $base/ui/#token=$token"
  echo
  echo "\$ curl $api/usagesJobs/$job_id -H 'Authorization: Bearer …'"
  curl -sS "$api/usagesJobs/$job_id" -H "Authorization: Bearer $token"
  echo
}

case "${1:-}" in
  start) cmd_start ;;
  demo) cmd_demo ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) echo "usage: $0 {start|stop|status|demo}" >&2; exit 2 ;;
esac
