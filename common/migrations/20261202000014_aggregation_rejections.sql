-- A (job, aggregation key) batch the aggregator could not apply (its bucket would leave the exact
-- decimal range) keeps its dedup row with the reason, instead of the row being deleted: a
-- redelivery then finds it decided and re-emits the same rejection (the job's usages end
-- VERIFICATIONFAILED with an error), never an AGGREGATED for usages that were reported failed.
ALTER TABLE aggregate_applied_batches ADD COLUMN rejection text;
