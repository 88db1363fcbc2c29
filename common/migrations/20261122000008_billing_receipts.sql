-- Billing receipts by callback: a billing system may answer a record with 202 Accepted and send
-- its receipt later to the forwarder's receipts endpoint, naming the record by its
-- Idempotency-Key. `sent` is a record accepted but not yet receipted; `record_key` is that key.
ALTER TABLE billing_outbox DROP CONSTRAINT billing_outbox_state_check;
ALTER TABLE billing_outbox ADD CONSTRAINT billing_outbox_state_check
    CHECK (state IN ('pending', 'retrying', 'sent', 'received', 'rejected'));
ALTER TABLE billing_outbox ADD COLUMN record_key text;
UPDATE billing_outbox
   SET record_key = provider_tenant_id || '/' || consumer_tenant_id || '/' || application || '/' || unit || '/'
                    || to_char(day, 'YYYY-MM-DD') || ':' || version;
ALTER TABLE billing_outbox ALTER COLUMN record_key SET NOT NULL;
CREATE UNIQUE INDEX billing_outbox_record_key ON billing_outbox (record_key);
