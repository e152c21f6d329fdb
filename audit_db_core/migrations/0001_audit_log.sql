-- The audit log: one row per event, range-partitioned by event_time (UTC bounds, one partition per period).
-- The primary key holds the partition key (a unique key on a partitioned table must), so a retried insert of the
-- same event (same event_time and event_id) is a conflict, never a duplicate row.
CREATE TABLE audit_log (
    event_id              uuid        NOT NULL,
    event_time            timestamptz NOT NULL,
    action                text        NOT NULL CHECK (length(action) BETWEEN 1 AND 128),
    status                text        NOT NULL CHECK (status IN ('attempt', 'success', 'failure')),
    principal_id          text        NOT NULL CHECK (length(principal_id) BETWEEN 1 AND 256),
    organization_id       text        CHECK (length(organization_id) <= 256),
    target_resource_type  text        CHECK (length(target_resource_type) <= 128),
    target_resource_id    text        CHECK (length(target_resource_id) <= 256),
    outcome_description   text        CHECK (length(outcome_description) <= 4000),
    data_classification   text        NOT NULL
        CHECK (data_classification IN ('PUBLIC', 'INTERNAL', 'CONFIDENTIAL', 'PHI')),
    retention_policy      text        NOT NULL CHECK (length(retention_policy) BETWEEN 1 AND 64),
    correlation_id        text        CHECK (length(correlation_id) <= 128),
    session_id            text        CHECK (length(session_id) <= 128),
    source                text        CHECK (length(source) <= 128),
    event_version         text        NOT NULL CHECK (length(event_version) BETWEEN 1 AND 16),
    processing_latency_ms integer     CHECK (processing_latency_ms >= 0),
    details               jsonb       NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(details) = 'object'),
    content_hash          bytea       NOT NULL CHECK (length(content_hash) = 32),
    ingested_at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (event_time, event_id)
) PARTITION BY RANGE (event_time);

COMMENT ON TABLE audit_log IS 'Append-only audit events, partitioned by event_time (UTC). Managed by audit_db_core.';
COMMENT ON COLUMN audit_log.content_hash IS 'SHA-256 of the canonical JSON of every event field (details included)';

-- No write ever fails for lack of a partition: rows outside every range land here until the lifecycle moves them.
CREATE TABLE audit_log_default PARTITION OF audit_log DEFAULT;
