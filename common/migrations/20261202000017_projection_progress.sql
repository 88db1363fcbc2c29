-- How far the query service's projection has applied each partition of uts.usage-jobs, written
-- in the transaction of the batch it describes. A list request compares it with the topic's
-- high watermarks taken when the request arrived, and waits (briefly) until every job accepted
-- before it is projected: GET /usagesJobs never misses a job whose 202 the caller already has,
-- whichever query-service replica projects its partition.
CREATE TABLE projection_progress (
    topic       text NOT NULL,
    partition   integer NOT NULL,
    next_offset bigint NOT NULL,
    PRIMARY KEY (topic, partition)
);
