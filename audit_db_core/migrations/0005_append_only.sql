-- Audit rows are never changed or removed one by one: UPDATE, DELETE and TRUNCATE are rejected on the audit log
-- and on the lifecycle ledger. Only whole-partition lifecycle operations (detach / drop after a verified archive)
-- remove data.
CREATE FUNCTION audit_reject_modification() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit log is append-only: % on % is not allowed', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'raise_exception',
              HINT = 'audit rows are immutable; remove data only through the partition lifecycle';
END;
$$;

CREATE TRIGGER audit_log_append_only
    BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_reject_modification();

CREATE TRIGGER audit_log_no_truncate
    BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_reject_modification();

-- A TRUNCATE that names a partition does not fire the parent's trigger: every partition gets its own
-- (the partition manager adds it to each partition it creates).
CREATE TRIGGER audit_log_default_no_truncate
    BEFORE TRUNCATE ON audit_log_default
    FOR EACH STATEMENT EXECUTE FUNCTION audit_reject_modification();

CREATE TRIGGER audit_lifecycle_ledger_append_only
    BEFORE UPDATE OR DELETE ON audit_lifecycle_ledger
    FOR EACH ROW EXECUTE FUNCTION audit_reject_modification();

CREATE TRIGGER audit_lifecycle_ledger_no_truncate
    BEFORE TRUNCATE ON audit_lifecycle_ledger
    FOR EACH STATEMENT EXECUTE FUNCTION audit_reject_modification();
