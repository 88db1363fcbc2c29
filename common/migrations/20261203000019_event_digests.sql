-- The projection's event dedup keyed by (job, 16-byte digest of the event id), not by the event
-- id: the id (~100 bytes: `billing:<job>:<bucket>:<version>:<what>`) was stored twice, in the
-- row and in the primary key, and this table wrote 36 % of the whole pipeline's WAL (about 500
-- bytes a row, four rows a job; hot-shape benchmark on 2026-12-03). The job id leads the key, so
-- inserts stay at the right edge of the index (job ids are time-ordered UUIDv7s); the digest is
-- the first 16 bytes of the SHA-256 of the event id (`uts_common::domain::wire::event_digest`).
ALTER TABLE job_applied_events ADD COLUMN event_digest uuid;
UPDATE job_applied_events
   SET event_digest = left(encode(sha256(convert_to(event_id, 'UTF8')), 'hex'), 32)::uuid;
ALTER TABLE job_applied_events
    DROP CONSTRAINT job_applied_events_pkey,
    DROP COLUMN event_id,
    ALTER COLUMN event_digest SET NOT NULL,
    ADD PRIMARY KEY (job_id, event_digest);
