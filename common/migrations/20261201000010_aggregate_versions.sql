-- A bucket version now holds every job of one aggregator batch (one version per bucket per
-- batch, not per job); a redelivery re-emits a version with all its jobs, found by this index
-- (the primary key leads with the bucket but not the version, and a hot bucket has millions
-- of contributions).
CREATE INDEX aggregate_contributions_version
    ON aggregate_contributions (provider_tenant_id, consumer_tenant_id, application, unit, day, version);
