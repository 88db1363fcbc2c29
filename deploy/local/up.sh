#!/usr/bin/env bash
# Quick start: starts Kafka (KRaft, from Maven Central jars) and PostgreSQL (Debian package),
# runs the migrations, creates the topics, starts every stage of the service, posts the sample
# usages job, follows it to billing and ends by printing it as GET /usagesJobs/{id} returns it
# and the dashboard's address. Everything stays running; stop it with deploy/local/down.sh.
set -euo pipefail
dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
"$dir/infra.sh" up >/dev/null
"$dir/services.sh" start
cat <<MSG
The service is running on one address, http://127.0.0.1:${UTS_GATEWAY_PORT:-18080}:
  API           http://127.0.0.1:${UTS_GATEWAY_PORT:-18080}/api/usagetransparency/v3  (/usagesJobs…, /usages, /aggregatedMonthly…, /admin/…, /openapi.json)
  tokens        http://127.0.0.1:${UTS_GATEWAY_PORT:-18080}/oauth/token  (/token_keys, /.well-known/jwks.json)
  dashboard     http://127.0.0.1:${UTS_GATEWAY_PORT:-18080}/ui/
  query service http://127.0.0.1:18090  (the same reads, without the gateway; for operators)
  gateway admin http://127.0.0.1:${UTS_GATEWAY_ADMIN_PORT:-18081}/metrics  (/healthz, /readyz)
  verifier admin http://127.0.0.1:18082/metrics
  aggregator admin http://127.0.0.1:18083/metrics
  billing-forwarder admin http://127.0.0.1:18084/metrics
  query service admin http://127.0.0.1:18085/metrics
  billing receiver http://127.0.0.1:18070/billing/v1/records
Stop everything with: deploy/local/down.sh

MSG
"$dir/services.sh" demo
