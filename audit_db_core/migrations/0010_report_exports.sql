-- Report exports by readers. Every export of a HIPAA report is written to the lifecycle ledger, and compliance
-- officers export as audit_reader, which may not write the ledger (it could forge any entry). This function
-- appends exactly one kind of entry, 'report_export', recorded under the caller's own name (session_user), and
-- nothing else: SECURITY DEFINER, owned by the maintainer, executable by readers and writers.
CREATE FUNCTION audit_record_report_export(p_rows bigint, p_bytes bigint, p_checksum text,
                                           p_duration_ms double precision, p_details jsonb, p_run_id text)
RETURNS void
LANGUAGE sql SECURITY DEFINER
AS $$
    INSERT INTO audit_lifecycle_ledger (operation, partition_name, outcome, row_count, byte_count, checksum,
                                        duration_ms, details, actor, run_id)
    VALUES ('report_export', NULL, 'ok', p_rows, p_bytes, p_checksum, p_duration_ms, coalesce(p_details, '{}'),
            session_user, p_run_id)
$$;

-- Pinned like the other SECURITY DEFINER functions (0009): the audit schema, pg_temp last.
DO $pin$
DECLARE
    schema_name constant name := (SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                                   WHERE c.oid = 'audit_lifecycle_ledger'::regclass);
BEGIN
    EXECUTE format('ALTER FUNCTION audit_record_report_export(bigint, bigint, text, double precision, jsonb, text)'
                   ' SET search_path = %I, pg_temp', schema_name);
END
$pin$;

REVOKE ALL ON FUNCTION audit_record_report_export(bigint, bigint, text, double precision, jsonb, text) FROM PUBLIC;

DO $grants$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'audit_reader') THEN
        GRANT EXECUTE ON FUNCTION audit_record_report_export(bigint, bigint, text, double precision, jsonb, text)
            TO audit_reader;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'audit_writer') THEN
        GRANT EXECUTE ON FUNCTION audit_record_report_export(bigint, bigint, text, double precision, jsonb, text)
            TO audit_writer;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'audit_maintainer')
       AND pg_has_role(current_user, 'audit_maintainer', 'USAGE') THEN
        ALTER FUNCTION audit_record_report_export(bigint, bigint, text, double precision, jsonb, text)
            OWNER TO audit_maintainer;
    END IF;
END
$grants$;
