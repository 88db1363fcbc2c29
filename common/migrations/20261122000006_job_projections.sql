-- The query service's projections of uts.usage-jobs and uts.status.

-- One row per job id (a job re-produced under the same id is projected once).
CREATE TABLE jobs (
    job_id              text PRIMARY KEY,
    submitter_tenant_id text NOT NULL,
    received_at         timestamptz NOT NULL,
    usages_count        integer NOT NULL,
    origin              text NOT NULL,
    projected_at        timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX jobs_by_submitter ON jobs (submitter_tenant_id, received_at DESC, job_id DESC);

-- Which tenants, applications and units a job's usages are for (the GET /usagesJobs filters).
CREATE TABLE job_usage_keys (
    job_id       text NOT NULL,
    tenant_id    text NOT NULL,
    application  text NOT NULL,
    unit         text NOT NULL,
    usages_count integer NOT NULL,
    PRIMARY KEY (job_id, tenant_id, application, unit)
);

-- Usages of a job per (application, unit, status). Transitions may arrive before the job
-- itself (two topics, any order), so a count can be negative until everything has arrived;
-- the sums converge.
CREATE TABLE job_usage_counts (
    job_id       text NOT NULL,
    application  text NOT NULL,
    unit         text NOT NULL,
    status       text NOT NULL,
    usages_count integer NOT NULL,
    PRIMARY KEY (job_id, application, unit, status)
);

-- Usages of a job that reached their final status.
CREATE TABLE job_terminal_counts (
    job_id       text PRIMARY KEY,
    usages_count integer NOT NULL
);

-- Every applied status event, so a redelivered event changes nothing.
CREATE TABLE job_applied_events (
    event_id   text PRIMARY KEY,
    job_id     text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE job_errors (
    event_id           text NOT NULL,
    position           integer NOT NULL,
    job_id             text NOT NULL,
    error_type         text NOT NULL CHECK (error_type IN ('ValidationError', 'BillingError', 'OtherError')),
    code               text NOT NULL,
    message            text NOT NULL,
    message_parameters jsonb NOT NULL,
    logref             text NOT NULL,
    info               text NOT NULL,
    error_data         jsonb NOT NULL,
    PRIMARY KEY (event_id, position)
);

CREATE INDEX job_errors_by_job ON job_errors (job_id, error_type);
