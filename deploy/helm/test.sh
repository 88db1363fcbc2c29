#!/usr/bin/env bash
# Renders the Helm chart with every value set of deploy/helm/values/ and validates the output
# offline (deploy/helm/check-chart.py): helm built from its Go module and kubernetes-validate from
# PyPI, both kept in ~/.cache/uts-tools (built once per machine).
#
#   deploy/helm/test.sh [BINARY_DIR]   (default: target/debug; the binaries must be built)
set -euo pipefail
dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$dir/../.." && pwd)"
# shellcheck source=deploy/local/lib.sh
. "$root/deploy/local/lib.sh"
HELM_VERSION=v3.22.0
KUBERNETES_VALIDATE_VERSION=1.37.0
tools="${XDG_CACHE_HOME:-$HOME/.cache}/uts-tools"
mkdir -p "$tools/bin"
helm="$tools/bin/helm"
# (Output captured first: with pipefail, `grep -q` closing the pipe early fails the pipeline.)
have_helm="$("$helm" version --short 2>/dev/null || true)"
if [[ "$have_helm" != "${HELM_VERSION%.*}"* ]]; then
  require_cmd go golang-go
  log_info "building helm $HELM_VERSION from its Go module into $tools/bin (first run only; a few minutes)"
  GOBIN="$tools/bin" go install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" || die "building helm failed"
fi
venv="$tools/venv"
have_validate="$("$venv/bin/pip" show kubernetes-validate 2>/dev/null || true)"
if [[ ! -x "$venv/bin/kubernetes-validate" || "$have_validate" != *"Version: $KUBERNETES_VALIDATE_VERSION"* ]]; then
  python3 -m venv "$venv" 2>/dev/null || { apt_install python3-venv && python3 -m venv "$venv"; }
  log_info "installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION from PyPI into $venv"
  "$venv/bin/pip" install -q "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" pyyaml ||
    die "installing kubernetes-validate failed"
fi
PATH="$venv/bin:$PATH" "$venv/bin/python" "$dir/check-chart.py" "$helm" "${1:-${CARGO_TARGET_DIR:-$root/target}/debug}"
