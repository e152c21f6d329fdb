-- Tamper-evident digests (audit_db_core.integrity). One row per digest: the Merkle root over the events of one
-- event_time window whose ingested_at falls in [ingested_from, ingested_to), linked to the previous digest by its
-- hash (a single chain, in chain_seq order) and signed (Ed25519). seq 1 is a window's first digest; 2, 3 … are
-- supplements for events that arrived after it. Never updated, never deleted.
CREATE TABLE audit_digests (
    chain_seq     bigint      PRIMARY KEY CHECK (chain_seq >= 1),
    window_start  timestamptz NOT NULL,
    window_end    timestamptz NOT NULL,
    seq           integer     NOT NULL CHECK (seq >= 1),
    ingested_from timestamptz,
    ingested_to   timestamptz NOT NULL,
    event_count   bigint      NOT NULL CHECK (event_count >= 0),
    merkle_root   bytea       NOT NULL CHECK (length(merkle_root) = 32),
    prev_hash     bytea       NOT NULL CHECK (length(prev_hash) = 32),
    digest_hash   bytea       NOT NULL CHECK (length(digest_hash) = 32),
    algorithm     text        NOT NULL,
    key_id        text        NOT NULL,
    signature     bytea       NOT NULL,
    created_at    timestamptz NOT NULL,
    CHECK (window_start < window_end),
    CHECK ((seq = 1) = (ingested_from IS NULL)),
    CHECK (ingested_from IS NULL OR ingested_from < ingested_to)
);
-- Digests of a window, in order: verification and proofs look a window up (O(log N)).
CREATE UNIQUE INDEX audit_digests_window ON audit_digests (window_start, seq);

COMMENT ON TABLE audit_digests IS 'Signed, hash-chained Merkle digests over audit_log windows. Append-only.';

-- The sorted leaves of each digest, 64 bytes per event: event_time (int64 µs since the Unix epoch, big-endian),
-- event_id (16 bytes), ingested_at (int64 µs), content_hash (32 bytes). They locate a deleted or inserted row
-- (a root alone only says that something differs) and serve inclusion proofs. Chunks bound the size of a value.
CREATE TABLE audit_digest_leaves (
    chain_seq bigint  NOT NULL,
    chunk     integer NOT NULL CHECK (chunk >= 0),
    leaves    bytea   NOT NULL CHECK (length(leaves) % 64 = 0),
    PRIMARY KEY (chain_seq, chunk)
);

CREATE TRIGGER audit_digests_append_only
    BEFORE UPDATE OR DELETE ON audit_digests
    FOR EACH ROW EXECUTE FUNCTION audit_reject_modification();
CREATE TRIGGER audit_digests_no_truncate
    BEFORE TRUNCATE ON audit_digests
    FOR EACH STATEMENT EXECUTE FUNCTION audit_reject_modification();
CREATE TRIGGER audit_digest_leaves_append_only
    BEFORE UPDATE OR DELETE ON audit_digest_leaves
    FOR EACH ROW EXECUTE FUNCTION audit_reject_modification();
CREATE TRIGGER audit_digest_leaves_no_truncate
    BEFORE TRUNCATE ON audit_digest_leaves
    FOR EACH STATEMENT EXECUTE FUNCTION audit_reject_modification();

-- Sealing finds the late arrivals of already-sealed windows by ingested_at. Rows are appended in ingestion order,
-- so a BRIN index stays a few pages per partition and costs writers next to nothing.
CREATE INDEX audit_log_ingested_at_brin ON audit_log USING brin (ingested_at) WITH (pages_per_range = 32);

-- Least-privilege roles (0007), where they exist: auditors read the digests; the maintainer owns them.
DO $grants$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'audit_reader') THEN
        GRANT SELECT ON audit_digests, audit_digest_leaves TO audit_reader;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'audit_maintainer')
       AND pg_has_role(current_user, 'audit_maintainer', 'USAGE') THEN
        ALTER TABLE audit_digests OWNER TO audit_maintainer;
        ALTER TABLE audit_digest_leaves OWNER TO audit_maintainer;
    END IF;
END
$grants$;
