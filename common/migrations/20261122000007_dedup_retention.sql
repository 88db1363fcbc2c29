-- The dedup rows (a decision per job, an applied batch per job and aggregation key, an applied
-- status event) are needed only while their message can come again: a Kafka redelivery, or a
-- retry with the same Idempotency-Key, which re-produces the job. The stages delete older rows
-- (uts_common::db::prune); these indexes keep that a range scan.
CREATE INDEX verifier_decisions_decided_at ON verifier_decisions (decided_at);
CREATE INDEX aggregate_applied_batches_applied_at ON aggregate_applied_batches (applied_at);
CREATE INDEX job_applied_events_applied_at ON job_applied_events (applied_at);
