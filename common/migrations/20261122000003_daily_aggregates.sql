-- One bucket per (provider, consumer, application, unit, UTC day). Every accumulator is kept,
-- whatever the function, so the value is exact for each function and survives a rule's function
-- change: value = f(accumulators). `version` grows by one with every applied batch.
CREATE TABLE daily_aggregates (
    provider_tenant_id text NOT NULL,
    consumer_tenant_id text NOT NULL,
    application        text NOT NULL,
    unit               text NOT NULL,
    day                date NOT NULL,
    function           text NOT NULL CHECK (function IN ('SUM', 'COUNT', 'MIN', 'MAX', 'AVG', 'LAST')),
    value              numeric NOT NULL,
    usages_count       bigint NOT NULL,
    sum_value          numeric NOT NULL,
    min_value          numeric NOT NULL,
    max_value          numeric NOT NULL,
    -- LAST: the usage with the latest datetime; ties broken by (job id, usage index).
    last_value         numeric NOT NULL,
    last_at            timestamptz NOT NULL,
    last_job_id        text NOT NULL,
    last_index         integer NOT NULL,
    billable           boolean NOT NULL,
    rule_id            text NOT NULL,
    version            bigint NOT NULL,
    updated_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider_tenant_id, consumer_tenant_id, application, unit, day)
);

-- Exactly once: a (job, aggregation key) batch is applied only if this insert succeeds, in the
-- same transaction as the bucket updates.
CREATE TABLE aggregate_applied_batches (
    job_id             text NOT NULL,
    provider_tenant_id text NOT NULL,
    consumer_tenant_id text NOT NULL,
    application        text NOT NULL,
    unit               text NOT NULL,
    usages_count       integer NOT NULL,
    applied_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, provider_tenant_id, consumer_tenant_id, application, unit)
);

-- Lineage: which job contributed how many usages to which bucket, the bucket version its
-- contribution produced, and the bucket's value and usage count at that version (what the
-- billing-forwarder sends for that version).
CREATE TABLE aggregate_contributions (
    provider_tenant_id  text NOT NULL,
    consumer_tenant_id  text NOT NULL,
    application         text NOT NULL,
    unit                text NOT NULL,
    day                 date NOT NULL,
    job_id              text NOT NULL,
    usages_count        integer NOT NULL,
    version             bigint NOT NULL,
    bucket_value        numeric NOT NULL,
    bucket_usages_count bigint NOT NULL,
    applied_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider_tenant_id, consumer_tenant_id, application, unit, day, job_id)
);

CREATE INDEX aggregate_contributions_job ON aggregate_contributions (job_id);
