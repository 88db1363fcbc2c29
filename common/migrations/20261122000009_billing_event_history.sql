-- The billing-forwarder's status events of a record are a function of the row: a failure was
-- reported (failure_reported) → "failed"; sent or received → "sent" (from FAILEDTOSENDFORBILLING
-- after a failure, else AGGREGATED); received → "received". The row is updated first, with
-- events_pending, then the whole history is produced (fixed event ids: repeats are no-ops) and
-- the flag cleared; a crash in between is repaired by the next round re-producing it. Before,
-- events were produced first and the row marked after, and a crash in between could make the
-- next attempt start from the wrong status.
ALTER TABLE billing_outbox ADD COLUMN failure_reported boolean NOT NULL DEFAULT false;
ALTER TABLE billing_outbox ADD COLUMN events_pending boolean NOT NULL DEFAULT false;
UPDATE billing_outbox SET failure_reported = true WHERE state IN ('retrying', 'rejected');
CREATE INDEX billing_outbox_events_pending ON billing_outbox (updated_at) WHERE events_pending;
