#!/usr/bin/env bash
# A second Kafka and PostgreSQL that accept TLS only, for the TLS/SASL end-to-end test
# (e2e/tests/pipeline.rs, `a_job_runs_end_to_end_over_tls_and_sasl`): what a managed Kafka and a
# managed PostgreSQL look like to the service.
#
# Usage: deploy/local/secure.sh up|down|env
#
#   up    makes a CA and a certificate for 127.0.0.1/localhost (openssl, once, in
#         $UTS_LOCAL_DIR/secure/tls), starts Kafka with a SASL_SSL listener only (users "uts" with
#         PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512, "broker" for itself) on 127.0.0.1:19192 and
#         PostgreSQL with ssl=on and TCP without TLS refused on 127.0.0.1:55532, and writes
#         $UTS_LOCAL_DIR/secure/env (UTS_SECURE_*), printed on stdout too.
#   down  stops both (data is kept).
#   env   prints the env lines.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SECURE_DIR="$UTS_LOCAL_DIR/secure"
TLS="$SECURE_DIR/tls"
KAFKA_PORT="${UTS_SECURE_KAFKA_PORT:-19192}"
KAFKA_CONTROLLER_PORT="${UTS_SECURE_KAFKA_CONTROLLER_PORT:-19193}"
PG_PORT="${UTS_SECURE_PG_PORT:-55532}"

make_certs() {
  [[ -s "$TLS/broker.pem" && -s "$TLS/uts.password" ]] && return 0
  require_cmd openssl openssl
  mkdir -p "$TLS"
  chmod 755 "$SECURE_DIR" "$TLS"
  log_info "making a test CA and a certificate for 127.0.0.1 in $TLS"
  (
    cd "$TLS"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 3650 \
      -subj "/CN=uts local test CA" 2>/dev/null
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out server.key 2>/dev/null
    openssl req -new -key server.key -out server.csr -subj "/CN=localhost" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' >server.ext
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.crt \
      -days 3650 -extfile server.ext 2>/dev/null
    # Kafka's PEM key store: the (PKCS#8, unencrypted) key and the certificate chain in one file.
    cat server.key server.crt ca.pem >broker.pem
    head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >broker.password
    head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >uts.password
    chmod 644 ca.pem server.crt
    chmod 600 ca.key server.key broker.pem broker.password uts.password
  )
}

env_lines() {
  printf 'export UTS_SECURE_KAFKA_BROKERS=%s\n' "$UTS_BIND_HOST:$KAFKA_PORT"
  printf 'export UTS_SECURE_KAFKA_CA_FILE=%s\n' "$TLS/ca.pem"
  printf 'export UTS_SECURE_KAFKA_SASL_USERNAME=uts\n'
  printf 'export UTS_SECURE_KAFKA_SASL_PASSWORD=%s\n' "$(cat "$TLS/uts.password")"
  printf "export UTS_SECURE_DATABASE_URL='%s'\n" \
    "postgres://uts:uts@$UTS_BIND_HOST:$PG_PORT/uts?sslmode=verify-full&sslrootcert=$TLS/ca.pem"
}

in_secure() {
  env -u UTS_PG_DIR UTS_LOCAL_DIR="$SECURE_DIR" UTS_KAFKA_PORT="$KAFKA_PORT" UTS_KAFKA_CONTROLLER_PORT="$KAFKA_CONTROLLER_PORT" \
    UTS_PG_PORT="$PG_PORT" UTS_KAFKA_TLS_DIR="$TLS" UTS_PG_TLS_DIR="$TLS" "$@"
}

cmd_up() {
  mkdir -p "$SECURE_DIR"
  make_certs
  # A smaller heap than the main broker: this one carries one test's topics.
  in_secure env KAFKA_HEAP_OPTS="-Xms256m -Xmx512m" "$UTS_LOCAL_SCRIPTS_DIR/kafka.sh" start >&2
  in_secure "$UTS_LOCAL_SCRIPTS_DIR/postgres.sh" start >&2
  env_lines >"$SECURE_DIR/env"
  env_lines
}

cmd_down() {
  [[ -d "$SECURE_DIR" ]] || return 0
  in_secure "$UTS_LOCAL_SCRIPTS_DIR/kafka.sh" stop >&2 || true
  in_secure "$UTS_LOCAL_SCRIPTS_DIR/postgres.sh" stop >&2 || true
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  env) env_lines ;;
  *) echo "usage: $0 up|down|env" >&2; exit 2 ;;
esac
