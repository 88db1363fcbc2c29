-- Billing coalescing: a bucket's value is absolute, so only its newest due version is sent.
-- The older pending versions become `superseded`, with `covered_by` = the version of the record
-- that speaks for their jobs; `covers_from` is the oldest version a record covers (fixed when it
-- is first claimed, so its body is the same on every retry). `leased_until` marks a record in
-- flight: its bucket is not due until the lease is released or runs out.
ALTER TABLE billing_outbox DROP CONSTRAINT billing_outbox_state_check;
ALTER TABLE billing_outbox ADD CONSTRAINT billing_outbox_state_check
    CHECK (state IN ('pending', 'retrying', 'sent', 'received', 'rejected', 'superseded'));
ALTER TABLE billing_outbox ADD COLUMN covered_by bigint;
ALTER TABLE billing_outbox ADD COLUMN covers_from bigint;
ALTER TABLE billing_outbox ADD COLUMN leased_until timestamptz;
CREATE INDEX billing_outbox_covered
    ON billing_outbox (provider_tenant_id, consumer_tenant_id, application, unit, day, covered_by)
    WHERE covered_by IS NOT NULL;
-- The claim reads every unsent row, per bucket in version order.
CREATE INDEX billing_outbox_unsent
    ON billing_outbox (provider_tenant_id, consumer_tenant_id, application, unit, day, version)
    WHERE state IN ('pending', 'retrying');
