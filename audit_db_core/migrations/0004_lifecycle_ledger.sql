-- The audit trail of the audit trail: every create / rescue / archive / purge / optimize / hold / verify.
-- Never purged, never updated (see 0005).
CREATE TABLE audit_lifecycle_ledger (
    entry_id       bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    occurred_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    operation      text        NOT NULL,
    partition_name text,
    outcome        text        NOT NULL CHECK (outcome IN ('ok', 'failed', 'skipped')),
    row_count      bigint,
    byte_count     bigint,
    checksum       text,
    duration_ms    double precision,
    details        jsonb       NOT NULL DEFAULT '{}'::jsonb,
    actor          text        NOT NULL DEFAULT current_user,
    run_id         text
);
CREATE INDEX audit_lifecycle_ledger_partition ON audit_lifecycle_ledger (partition_name, occurred_at);
CREATE INDEX audit_lifecycle_ledger_time ON audit_lifecycle_ledger (occurred_at);
