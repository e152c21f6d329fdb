-- One row per partition of audit_log: its bounds, lifecycle state and archive facts.
-- Lookup by time is a B-tree search on range_start (O(log N)); the exclusion constraint makes overlapping
-- partitions impossible, whatever their names.
CREATE TABLE audit_partitions (
    partition_name    text        PRIMARY KEY,
    range_start       timestamptz NOT NULL,
    range_end         timestamptz NOT NULL,
    state             text        NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'archived', 'purged')),
    row_count         bigint,
    bytes             bigint,
    archive_uri       text,
    archive_checksum  text,
    archived_at       timestamptz,
    purged_at         timestamptz,
    legal_hold        boolean     NOT NULL DEFAULT false,
    legal_hold_reason text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    CHECK (range_start < range_end),
    CHECK (NOT legal_hold OR legal_hold_reason IS NOT NULL),
    CONSTRAINT audit_partitions_no_overlap EXCLUDE USING gist (tstzrange(range_start, range_end) WITH &&)
);
CREATE UNIQUE INDEX audit_partitions_range_start ON audit_partitions (range_start);
