#!/usr/bin/env bash
# Stops every stage of the service, then Kafka and PostgreSQL. Data stays in .local/.
set -euo pipefail
dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
"$dir/services.sh" stop
"$dir/infra.sh" down
