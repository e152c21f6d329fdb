-- Partition lifecycle facts kept in the registry: archive verification, retention classes found in the
-- partition, whether it was detached, when its archive was deleted, and the last index maintenance.
ALTER TABLE audit_partitions
    ADD COLUMN archive_manifest_sha256 text,
    ADD COLUMN archive_verified_at     timestamptz,
    ADD COLUMN retention_classes       jsonb,
    ADD COLUMN detached                boolean NOT NULL DEFAULT false,
    ADD COLUMN archive_deleted_at      timestamptz,
    ADD COLUMN last_optimized_at       timestamptz,
    ADD CONSTRAINT audit_partitions_archived_has_archive
        CHECK (state = 'active' OR (archive_uri IS NOT NULL AND archive_checksum IS NOT NULL
                                    AND archive_verified_at IS NOT NULL));

-- An archived partition is read-only: a late event for an archived period is refused loudly (never dropped
-- silently). UPDATE and DELETE are already refused by audit_reject_modification().
CREATE FUNCTION audit_reject_archived_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'partition % is archived and read-only: the event cannot be added', TG_TABLE_NAME
        USING ERRCODE = 'raise_exception',
              HINT = 'restore the period for an investigation; late events for archived periods are refused';
END;
$$;

-- Partition lookups by time are B-tree probes on range_start (see 0003); this one serves plan() over states.
CREATE INDEX audit_partitions_state ON audit_partitions (state, range_start);
