-- Least-privilege roles. Three group roles (NOLOGIN) that deployers grant to their login roles:
--   audit_writer      INSERT + SELECT on audit_log: applications that record and read their events
--   audit_reader      SELECT on audit_log, the partition registry and the lifecycle ledger: reports, auditors
--   audit_maintainer  owns the audit tables: migrations and the partition lifecycle (PostgreSQL requires ownership
--                     for CREATE … PARTITION OF / ATTACH / DETACH, triggers, DROP and REINDEX)
-- The writer and the reader own nothing: they cannot ALTER or DROP a table, nor disable the append-only trigger.
--
-- Roles belong to the whole server, this migration runs once per database, and several databases may be migrated
-- at once: a role is created only when missing, and one created meanwhile by the migration of another database is
-- not an error. A migrating role without CREATEROLE works with roles an administrator made beforehand; when they
-- are missing it stops with the statements to run.
DO $roles$
DECLARE
    wanted  constant text[] := ARRAY['audit_writer', 'audit_reader', 'audit_maintainer'];
    purpose constant text[] := ARRAY[
        'audit_db_core: INSERT and SELECT on audit_log',
        'audit_db_core: SELECT on audit_log, audit_partitions and audit_lifecycle_ledger',
        'audit_db_core: owns the audit tables; migrations and the partition lifecycle'];
    setup   constant text := 'CREATE ROLE audit_writer NOLOGIN; CREATE ROLE audit_reader NOLOGIN; '
                             || 'CREATE ROLE audit_maintainer NOLOGIN; '
                             || format('GRANT audit_maintainer TO %I', current_user);
BEGIN
    FOR i IN 1 .. array_length(wanted, 1) LOOP
        IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = wanted[i] AND rolsuper) THEN
            RAISE EXCEPTION 'role % is a superuser: it cannot serve as a least-privilege role', wanted[i]
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      HINT = format('ALTER ROLE %I NOSUPERUSER', wanted[i]);
        END IF;
        CONTINUE WHEN EXISTS (SELECT 1 FROM pg_roles WHERE rolname = wanted[i]);
        BEGIN
            EXECUTE format('CREATE ROLE %I NOLOGIN', wanted[i]);
            EXECUTE format('COMMENT ON ROLE %I IS %L', wanted[i], purpose[i]);
        EXCEPTION
            -- duplicate_object: it was committed before our CREATE; unique_violation: our CREATE waited for a
            -- concurrent one (another database's migration) that then committed.
            WHEN duplicate_object OR unique_violation THEN
                NULL;
            WHEN insufficient_privilege THEN
                RAISE EXCEPTION 'role % does not exist and % may not create roles (no CREATEROLE)',
                                wanted[i], current_user
                    USING ERRCODE = 'insufficient_privilege',
                          HINT = 'have an administrator run once per server: ' || setup
                                 || format('; then migrate again (or give %I CREATEROLE)', current_user);
        END;
    END LOOP;

    -- From here on the audit tables belong to audit_maintainer: a migrating role that is not a superuser must hold
    -- its privileges, to hand the tables over now and to run later migrations.
    IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
       AND NOT pg_has_role(current_user, 'audit_maintainer', 'USAGE') THEN
        BEGIN
            GRANT audit_maintainer TO CURRENT_USER;
        EXCEPTION
            WHEN unique_violation THEN
                NULL;  -- granted meanwhile by this role's migration of another database
            WHEN insufficient_privilege OR invalid_grant_operation THEN
                RAISE EXCEPTION '% must be a member of audit_maintainer, which owns the audit tables from now on',
                                current_user
                    USING ERRCODE = 'insufficient_privilege',
                          HINT = format('have an administrator run: GRANT audit_maintainer TO %I; then migrate again',
                                        current_user);
        END;
        IF NOT pg_has_role(current_user, 'audit_maintainer', 'USAGE') THEN
            RAISE EXCEPTION '% is a member of audit_maintainer but does not inherit its privileges', current_user
                USING ERRCODE = 'insufficient_privilege',
                      HINT = format('ALTER ROLE %I INHERIT (or grant audit_maintainer WITH INHERIT TRUE)', current_user);
        END IF;
    END IF;
END
$roles$;

-- Reaching the objects: USAGE on the schema for all three, CREATE for the maintainer (new partitions, restores),
-- CONNECT on the database, TEMPORARY for the writer (insert_many's idempotent path stages rows in a temp table).
-- PostgreSQL grants some of these to PUBLIC by default; only what is missing is granted, so a migrating role that
-- may not grant on the schema or the database works wherever nothing is missing.
DO $access$
DECLARE
    schema_name constant name := (SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                                   WHERE c.oid = 'audit_log'::regclass);
    g record;
    target name;
    have boolean;
BEGIN
    FOR g IN SELECT * FROM (VALUES ('SCHEMA', 'audit_writer', 'USAGE'), ('SCHEMA', 'audit_reader', 'USAGE'),
                                   ('SCHEMA', 'audit_maintainer', 'USAGE'), ('SCHEMA', 'audit_maintainer', 'CREATE'),
                                   ('DATABASE', 'audit_writer', 'CONNECT'), ('DATABASE', 'audit_reader', 'CONNECT'),
                                   ('DATABASE', 'audit_maintainer', 'CONNECT'),
                                   ('DATABASE', 'audit_writer', 'TEMPORARY')) AS v(kind, grantee, privilege)
    LOOP
        target := CASE g.kind WHEN 'SCHEMA' THEN schema_name ELSE current_database() END;
        have := CASE g.kind WHEN 'SCHEMA' THEN has_schema_privilege(g.grantee, target, g.privilege)
                            ELSE has_database_privilege(g.grantee, target, g.privilege) END;
        CONTINUE WHEN have;
        BEGIN
            EXECUTE format('GRANT %s ON %s %I TO %I', g.privilege, g.kind, target, g.grantee);
        EXCEPTION WHEN insufficient_privilege THEN
            NULL;  -- reported just below, with the statement to run
        END;
        -- A GRANT by a role that holds the privilege without GRANT OPTION only warns: check the outcome.
        have := CASE g.kind WHEN 'SCHEMA' THEN has_schema_privilege(g.grantee, target, g.privilege)
                            ELSE has_database_privilege(g.grantee, target, g.privilege) END;
        IF NOT have THEN
            RAISE EXCEPTION '% may not grant % on % % to %', current_user, g.privilege, lower(g.kind), target, g.grantee
                USING ERRCODE = 'insufficient_privilege',
                      HINT = format('have an administrator run: GRANT %s ON %s %I TO %I; then migrate again',
                                    g.privilege, g.kind, target, g.grantee);
        END IF;
    END LOOP;
END
$access$;

GRANT SELECT, INSERT ON audit_log TO audit_writer;
GRANT SELECT ON audit_log, audit_partitions, audit_lifecycle_ledger TO audit_reader;
-- The health report compares the applied schema version with the package's.
GRANT SELECT ON schema_migrations TO audit_writer, audit_reader;

-- Ownership goes to audit_maintainer: the parent, every partition (attached, or detached after archival), the
-- registry, the ledger (with its identity sequence), the migration record, and the trigger functions. New
-- partitions are handed over by the partition manager as it creates them.
DO $owner$
DECLARE
    t regclass;
BEGIN
    -- Collected first: a table cannot be altered while a query of this session still reads it.
    FOREACH t IN ARRAY ARRAY(
        SELECT unnest(ARRAY['audit_log', 'audit_partitions', 'audit_lifecycle_ledger', 'schema_migrations']::regclass[])
        UNION
        SELECT inhrelid::regclass FROM pg_inherits WHERE inhparent = 'audit_log'::regclass
        UNION
        SELECT to_regclass(partition_name) FROM audit_partitions WHERE to_regclass(partition_name) IS NOT NULL)
    LOOP
        EXECUTE format('ALTER TABLE %s OWNER TO audit_maintainer', t);  -- regclass text is quoted and qualified
    END LOOP;
END
$owner$;
ALTER FUNCTION audit_reject_modification() OWNER TO audit_maintainer;
ALTER FUNCTION audit_reject_archived_insert() OWNER TO audit_maintainer;
