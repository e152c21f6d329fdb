-- The index matrix, defined once on the parent so that every partition gets it (created or attached).
-- Time-range scans: BRIN is tiny and fits append-mostly, time-ordered data.
CREATE INDEX audit_log_event_time_brin ON audit_log USING brin (event_time) WITH (pages_per_range = 32);
-- User activity: what did this principal do, newest first.
CREATE INDEX audit_log_principal_time ON audit_log (principal_id, event_time DESC);
-- Patient / resource access reports: who touched this record.
CREATE INDEX audit_log_target_time ON audit_log (target_resource_type, target_resource_id, event_time DESC)
    WHERE target_resource_id IS NOT NULL;
-- Event-type filtering.
CREATE INDEX audit_log_action_time ON audit_log (action, event_time DESC);
-- The hot filter: failures are rare and looked at often (partial index).
CREATE INDEX audit_log_failures ON audit_log (event_time DESC) WHERE status = 'failure';
-- Containment queries on details (details @> '{"k": "v"}').
CREATE INDEX audit_log_details_gin ON audit_log USING gin (details jsonb_path_ops);
-- Compliance reports per organization: index-only scans over the columns a report shows.
CREATE INDEX audit_log_org_compliance ON audit_log (organization_id, event_time DESC)
    INCLUDE (action, status, principal_id, target_resource_type, target_resource_id, data_classification);
-- Tracing one request across services.
CREATE INDEX audit_log_correlation ON audit_log (correlation_id) WHERE correlation_id IS NOT NULL;
