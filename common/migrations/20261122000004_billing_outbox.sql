-- The billing-forwarder's outbox: one row per (bucket, version) of a billable daily aggregate,
-- written when the version is consumed and sent to the billing system by the sender loop.
-- `message` is the encoded uts.v1.DailyAggregate as consumed.
CREATE TABLE billing_outbox (
    provider_tenant_id text NOT NULL,
    consumer_tenant_id text NOT NULL,
    application        text NOT NULL,
    unit               text NOT NULL,
    day                date NOT NULL,
    version            bigint NOT NULL,
    message            bytea NOT NULL,
    -- pending: not sent yet; retrying: a send failed, retried at next_attempt_at;
    -- received: the billing system acknowledged it; rejected: refused for good (4xx).
    state              text NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'retrying', 'received', 'rejected')),
    attempts           integer NOT NULL DEFAULT 0,
    next_attempt_at    timestamptz NOT NULL DEFAULT now(),
    last_error         text,
    record_id          text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider_tenant_id, consumer_tenant_id, application, unit, day, version)
);

CREATE INDEX billing_outbox_due ON billing_outbox (next_attempt_at) WHERE state IN ('pending', 'retrying');
