-- One identity per audit database (audit_db_core.deployment): a random UUID drawn when this migration runs. It
-- names this deployment where a name alone is ambiguous: two servers may both hold a database called "audit", and
-- share one Redis (the L2 cache keys on the identity). It is stored with the data, so it survives pg_upgrade and a
-- dump / restore onto another server (unlike pg_control's system_identifier); a copy that is to become a separate
-- environment (CREATE DATABASE … TEMPLATE, a restored backup) is given a fresh one by new_deployment_id().
--
-- Exactly one row: the primary key is a constant (at most one row), inserted here, and DELETE / TRUNCATE are
-- refused (at least one). Changing it is an UPDATE by the owner (audit_maintainer); the other roles only read it.
CREATE TABLE audit_deployment (
    singleton     boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    deployment_id uuid        NOT NULL DEFAULT gen_random_uuid(),
    created_at    timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE audit_deployment IS
    'The identity of this audit database (one row). Changed only by its owner: audit_db_core.deployment.';

INSERT INTO audit_deployment DEFAULT VALUES;

CREATE FUNCTION audit_deployment_keep_row() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_deployment holds exactly one row: % is not allowed', TG_OP
        USING ERRCODE = 'raise_exception',
              HINT = 'to give this database a new identity, use audit_db_core.deployment.new_deployment_id';
END;
$$;

CREATE TRIGGER audit_deployment_no_delete
    BEFORE DELETE ON audit_deployment
    FOR EACH ROW EXECUTE FUNCTION audit_deployment_keep_row();
CREATE TRIGGER audit_deployment_no_truncate
    BEFORE TRUNCATE ON audit_deployment
    FOR EACH STATEMENT EXECUTE FUNCTION audit_deployment_keep_row();

-- Least-privilege roles (0007), where they exist: every role reads the identity; the maintainer owns it.
DO $grants$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'audit_writer') THEN
        GRANT SELECT ON audit_deployment TO audit_writer;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'audit_reader') THEN
        GRANT SELECT ON audit_deployment TO audit_reader;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'audit_maintainer') THEN
        GRANT SELECT ON audit_deployment TO audit_maintainer;
        IF pg_has_role(current_user, 'audit_maintainer', 'USAGE') THEN
            ALTER TABLE audit_deployment OWNER TO audit_maintainer;
            ALTER FUNCTION audit_deployment_keep_row() OWNER TO audit_maintainer;
        END IF;
    END IF;
END
$grants$;
