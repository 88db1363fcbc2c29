-- Rules: which usages of (application, unit) are accepted, how they are aggregated and whether
-- they are billed. At most one rule per (application, unit); the owner is the provider tenant
-- whose aggregates the usages feed. `version` grows with every update.
CREATE TABLE rules (
    rule_id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    application          text NOT NULL CHECK (length(application) BETWEEN 1 AND 256),
    unit                 text NOT NULL CHECK (length(unit) BETWEEN 1 AND 256),
    owner_tenant_id      text NOT NULL REFERENCES tenants (tenant_id),
    active               boolean NOT NULL DEFAULT true,
    aggregation_function text NOT NULL DEFAULT 'SUM'
        CHECK (aggregation_function IN ('SUM', 'COUNT', 'MIN', 'MAX', 'AVG', 'LAST')),
    billing_enabled      boolean NOT NULL DEFAULT false,
    min_value            numeric,
    max_value            numeric,
    integers_only        boolean NOT NULL DEFAULT false,
    -- NULL: every user type is allowed.
    allowed_user_types   text[] CHECK (allowed_user_types <@ ARRAY['tenant', 'user', 'agent']),
    -- Usages older than this many days (before the job's receipt) are refused; NULL: no limit.
    max_age_days         integer CHECK (max_age_days > 0),
    -- Usages dated more than this many minutes after the job's receipt are refused; NULL: no limit.
    max_future_minutes   integer CHECK (max_future_minutes >= 0),
    version              integer NOT NULL DEFAULT 1,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    UNIQUE (application, unit),
    CHECK (min_value IS NULL OR max_value IS NULL OR min_value <= max_value)
);

-- Applications provisioned to IoT tenants: an operator may submit usages of its IoT tenant
-- only for applications provisioned to it.
CREATE TABLE provisioning (
    tenant_id   text NOT NULL REFERENCES tenants (tenant_id),
    application text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, application)
);

-- The verifier's decision per job (an encoded uts.v1.VerifierDecision): a redelivered or
-- re-submitted job gets exactly the same verified batches and status event, whatever changed in
-- the rules meanwhile, so downstream dedup by (job, aggregation key) and event id stays exact.
CREATE TABLE verifier_decisions (
    job_id     text PRIMARY KEY,
    decision   bytea NOT NULL,
    decided_at timestamptz NOT NULL DEFAULT now()
);
