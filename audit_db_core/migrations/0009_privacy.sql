-- GDPR (audit_db_core.privacy): identifiers of data subjects are stored in audit_log as pseudonyms from ingestion
-- on; the mapping back to the person lives here, apart from the log. Erasure deletes a subject's row: the log and
-- its hash chain are never touched, and the pseudonym left in the log leads nowhere. The pseudonym is random
-- (drawn by the server when the subject is first seen), so nothing — not the identifier, not the lookup key — can
-- recompute it once the row is gone.
--
-- lookup = HMAC-SHA256(AUDIT_PRIVACY__LOOKUP_KEY, field || 0x00 || value), computed by the library: the index is
-- probed with a keyed digest, so a database role without the application's key cannot test guessed identifiers.
-- Readable only by its owner, audit_maintainer (and superusers): no grant to audit_writer or audit_reader.
CREATE TABLE audit_subjects (
    subject_id uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    field      text        NOT NULL,
    lookup     bytea       NOT NULL UNIQUE CHECK (length(lookup) = 32),
    value      text        NOT NULL,
    pseudonym  text        NOT NULL UNIQUE CHECK (pseudonym ~ '^psn_[0-9a-f]{32}$'),
    created_at timestamptz NOT NULL DEFAULT now()
);
-- ANALYZE would copy the most common identifiers into pg_statistic, where erasure does not reach.
ALTER TABLE audit_subjects ALTER COLUMN value SET STATISTICS 0;
COMMENT ON TABLE audit_subjects IS
    'GDPR: data subject -> pseudonym mapping (audit_db_core.privacy). Erasure deletes rows; owner-only.';

-- Ingestion: get or create the pseudonyms of a batch's identifiers. SECURITY DEFINER so that a writer can have
-- its identifiers pseudonymized without ever reading the mapping: it gets back pseudonyms of the lookups it sent,
-- nothing else. A lookup already mapped to another identifier is refused (a writer with another lookup key).
CREATE FUNCTION audit_pseudonyms(p_fields text[], p_lookups bytea[], p_values text[])
RETURNS TABLE (lookup bytea, pseudonym text)
LANGUAGE plpgsql SECURITY DEFINER
AS $$
BEGIN
    IF cardinality(p_fields) <> cardinality(p_lookups) OR cardinality(p_values) <> cardinality(p_lookups) THEN
        RAISE EXCEPTION 'audit_pseudonyms: fields, lookups and values must be arrays of the same length'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO audit_subjects (field, lookup, value, pseudonym)
    SELECT u.f, u.l, u.v,
           'psn_' || left(encode(sha256(uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid())), 'hex'), 32)
      FROM unnest(p_fields, p_lookups, p_values) AS u(f, l, v)
    ON CONFLICT DO NOTHING;
    IF EXISTS (SELECT 1 FROM unnest(p_fields, p_lookups, p_values) AS u(f, l, v)
                 JOIN audit_subjects s ON s.lookup = u.l
                WHERE s.value IS DISTINCT FROM u.v OR s.field IS DISTINCT FROM u.f) THEN
        RAISE EXCEPTION 'audit_pseudonyms: a lookup digest is mapped to another identifier'
            USING ERRCODE = 'data_exception',
                  HINT = 'every writer must use the same AUDIT_PRIVACY__LOOKUP_KEY';
    END IF;
    RETURN QUERY SELECT s.lookup, s.pseudonym FROM audit_subjects s WHERE s.lookup = ANY (p_lookups);
END;
$$;

-- Queries by identity: the pseudonyms of the subjects that exist, creating none.
CREATE FUNCTION audit_pseudonyms_of(p_lookups bytea[])
RETURNS TABLE (lookup bytea, pseudonym text)
LANGUAGE sql STABLE SECURITY DEFINER
AS $$ SELECT s.lookup, s.pseudonym FROM audit_subjects s WHERE s.lookup = ANY (p_lookups) $$;

-- A SECURITY DEFINER function must not resolve names through a search_path its caller controls (a writer may
-- create temporary tables, and pg_temp is searched first unless named): pin it to the audit schema, pg_temp last.
DO $pin$
DECLARE
    schema_name constant name := (SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                                   WHERE c.oid = 'audit_log'::regclass);
BEGIN
    EXECUTE format('ALTER FUNCTION audit_pseudonyms(text[], bytea[], text[]) SET search_path = %I, pg_temp',
                   schema_name);
    EXECUTE format('ALTER FUNCTION audit_pseudonyms_of(bytea[]) SET search_path = %I, pg_temp', schema_name);
END
$pin$;

REVOKE ALL ON TABLE audit_subjects FROM PUBLIC;
REVOKE ALL ON FUNCTION audit_pseudonyms(text[], bytea[], text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION audit_pseudonyms_of(bytea[]) FROM PUBLIC;

-- Least-privilege roles (0007), where they exist: writers pseudonymize, writers and readers query by identity,
-- the maintainer owns the mapping (and so alone reads it: export, erasure, reveal).
DO $grants$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'audit_writer') THEN
        GRANT EXECUTE ON FUNCTION audit_pseudonyms(text[], bytea[], text[]) TO audit_writer;
        GRANT EXECUTE ON FUNCTION audit_pseudonyms_of(bytea[]) TO audit_writer;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'audit_reader') THEN
        GRANT EXECUTE ON FUNCTION audit_pseudonyms_of(bytea[]) TO audit_reader;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'audit_maintainer')
       AND pg_has_role(current_user, 'audit_maintainer', 'USAGE') THEN
        ALTER TABLE audit_subjects OWNER TO audit_maintainer;
        ALTER FUNCTION audit_pseudonyms(text[], bytea[], text[]) OWNER TO audit_maintainer;
        ALTER FUNCTION audit_pseudonyms_of(bytea[]) OWNER TO audit_maintainer;
    END IF;
END
$grants$;
