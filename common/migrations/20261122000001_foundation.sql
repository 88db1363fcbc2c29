-- Tenants known to the service. The gateway accepts jobs only from developer and operator
-- tenants; an IoT tenant belongs to exactly one operator.
CREATE TABLE tenants (
    tenant_id          text PRIMARY KEY CHECK (length(tenant_id) BETWEEN 1 AND 128),
    tenant_type        text NOT NULL CHECK (tenant_type IN ('developer', 'operator', 'iot', 'customer')),
    operator_tenant_id text REFERENCES tenants (tenant_id),
    display_name       text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT iot_has_operator CHECK ((tenant_type = 'iot') = (operator_tenant_id IS NOT NULL))
);

-- Idempotency-Key of POST requests: a retry with the same key and tenant inside the dedup
-- window gets the original job id and answer. The job itself may reach Kafka more than once
-- (a retry re-produces it in case the first produce failed); consumers dedup on the job id.
CREATE TABLE idempotency_keys (
    tenant_id       text NOT NULL,
    idempotency_key text NOT NULL,
    job_id          text NOT NULL,
    request_hash    bytea NOT NULL,
    received_at     timestamptz NOT NULL,
    usages_count    integer NOT NULL,
    PRIMARY KEY (tenant_id, idempotency_key)
);

CREATE INDEX idempotency_keys_received_at ON idempotency_keys (received_at);
