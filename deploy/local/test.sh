#!/usr/bin/env bash
# Runs every test against the real Kafka and PostgreSQL started by infra.sh (and the TLS-only
# pair of secure.sh for the TLS/SASL test): the workspace's
# tests (in parallel; each test uses its own topics and its own database), then the tests that
# stop and restart the shared broker, alone.
set -euo pipefail
dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$dir/../.." && pwd)"
# shellcheck source=deploy/local/lib.sh
. "$dir/lib.sh"
# Build tools the crates need, the browser the dashboard test drives (Debian's Chromium over
# WebDriver) and Node.js for the official client's test.
require_build_deps
for tool in curl:curl chromium:chromium chromedriver:chromium-driver python3:python3 node:nodejs npm:npm; do
  require_cmd "${tool%%:*}" "${tool##*:}"
done
# The official Node client, at the version pinned in its lock file (e2e/tests/pipeline.rs runs it).
(cd "$root/e2e/official-client" && npm ci --no-audit --no-fund --loglevel=error >/dev/null) ||
  die "npm ci in e2e/official-client failed"
# schemathesis, pinned with everything it pulls in, in a virtualenv of its own (e2e/tests/openapi.rs
# drives it against the running service through UTS_SCHEMATHESIS).
st_venv="${XDG_CACHE_HOME:-$HOME/.cache}/uts-tools/schemathesis"
if ! cmp -s "$root/e2e/schemathesis/requirements.txt" "$st_venv/requirements.txt"; then
  rm -rf "$st_venv"
  python3 -m venv "$st_venv" 2>/dev/null || { apt_install python3-venv && python3 -m venv "$st_venv"; }
  log_info "installing schemathesis (e2e/schemathesis/requirements.txt) from PyPI into $st_venv"
  "$st_venv/bin/pip" install -q -r "$root/e2e/schemathesis/requirements.txt" || die "installing schemathesis failed"
  cp "$root/e2e/schemathesis/requirements.txt" "$st_venv/requirements.txt"
fi
export UTS_SCHEMATHESIS="$st_venv/bin/st"
# The compose check reads YAML.
python3 -c 'import yaml' 2>/dev/null || apt_install python3-yaml
"$dir/infra.sh" up >/dev/null
# shellcheck disable=SC1091
. "${UTS_LOCAL_DIR:-$root/.local}/env"
export UTS_KAFKA_BROKERS DATABASE_URL
# A Kafka (SASL_SSL only) and a PostgreSQL (TLS only) for the TLS/SASL end-to-end test.
"$dir/secure.sh" up >/dev/null
# shellcheck disable=SC1091
. "${UTS_LOCAL_DIR:-$root/.local}/secure/env"
# Drop the topics earlier test runs left behind (every test makes its own, randomly named);
# deletion is asynchronous and new names never collide with them.
"$dir/kafka.sh" topics --delete --topic '(test|runner)-.*' >/dev/null 2>&1 || true
cd "$root"
# The crash test runs the stages as real processes: build the binaries (same profile as the
# tests, so this only links).
cargo build --workspace --bins
# No Docker engine here: docker-compose.yml is checked against the binaries just built instead.
python3 deploy/check-compose.py "${CARGO_TARGET_DIR:-$root/target}/debug"
# No cluster either: the Helm chart is rendered and validated against the Kubernetes schemas.
bash deploy/helm/test.sh "${CARGO_TARGET_DIR:-$root/target}/debug"
cargo test --workspace --all-targets
# Same package selection as above, so nothing is rebuilt.
cargo test --workspace --test gateway --test processes -- --ignored --test-threads=1
