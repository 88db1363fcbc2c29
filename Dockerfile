# One image with every binary of the workspace; docker-compose.yml picks the command per stage.
# protoc is not needed (the proto crate compiles with protox); librdkafka is built from source
# by rdkafka-sys, which needs a C toolchain, make and perl at build time only; OpenSSL (TLS to
# Kafka and PostgreSQL, the token service's keys) comes from the image's libssl-dev/libssl3.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --bins \
 && mkdir /out \
 && cp target/release/ingest-gateway target/release/query-service target/release/verifier \
       target/release/aggregator target/release/billing-forwarder target/release/billing-receiver \
       target/release/utsctl /out/

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl libssl3 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 uts
COPY --from=build /out/ /usr/local/bin/
USER uts
ENV UTS_LOG_FORMAT=json
