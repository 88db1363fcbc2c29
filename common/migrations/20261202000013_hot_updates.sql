-- Room on each page for the new version of an updated row, so that updates that change no
-- indexed column stay on the page and write no index entry (HOT). The outbox's claim (lease,
-- covered range) and the projection's status-count upserts are such updates; at full load the
-- outbox rows were updated three times each and 1 % of those updates were HOT.
ALTER TABLE billing_outbox SET (fillfactor = 70);
ALTER TABLE job_usage_counts SET (fillfactor = 80);
ALTER TABLE daily_aggregates SET (fillfactor = 70);
