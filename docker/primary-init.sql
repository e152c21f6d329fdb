-- The roles and databases of the deployment, made once by the server's superuser (docker/primary-init.sh runs this
-- with psql when the primary's data directory is created; the tests run it the same way). Nothing else ever
-- connects as the superuser.
--
--   the group roles of migration 0007_roles (NOLOGIN): made here so the migration finds them and its login needs
--   no CREATEROLE; the migration then grants them their privileges on the audit tables.
--   one LOGIN per kind of client, each a member of one group role at most:
--     OWNER_PG_USER        owns the audit database, member of audit_maintainer: runs the migrations
--     MAINTAINER_PG_USER   member of audit_maintainer: the Dagster code location (partition lifecycle, integrity)
--     WRITER_PG_USER       member of audit_writer: applications that record and read their events
--     READER_PG_USER       member of audit_reader: reports and auditors
--     REPLICATION_PG_USER  REPLICATION and nothing else: the streaming replica's base backup and WAL stream
--     DAGSTER_PG_USER      owns Dagster's own database (runs, event logs, schedules) and nothing of the audit one
--   the audit database (AUDIT_PG_DB) and Dagster's (DAGSTER_PG_DB): CONNECT to each only for its own roles.
--
-- Names and passwords come from the environment (\getenv): none is on a command line. Statements that need an
-- identifier and a literal are built with format(%I, %L) and run by \gexec, which prints command tags only, so no
-- password reaches the container log; each password has a statement of its own, so an error quotes none.
-- Running it again is harmless: what exists is kept, attributes, passwords and memberships are set again.
\set ON_ERROR_STOP on
\getenv audit_db AUDIT_PG_DB
\getenv dagster_db DAGSTER_PG_DB
\getenv owner_user OWNER_PG_USER
\getenv maintainer_user MAINTAINER_PG_USER
\getenv writer_user WRITER_PG_USER
\getenv reader_user READER_PG_USER
\getenv replication_user REPLICATION_PG_USER
\getenv dagster_user DAGSTER_PG_USER

CREATE TEMP TABLE init_login (name name NOT NULL, grp name, replication boolean NOT NULL, purpose text NOT NULL);
INSERT INTO init_login VALUES
    (:'owner_user', 'audit_maintainer', false, 'migrations (OWNER_PG_USER)'),
    (:'maintainer_user', 'audit_maintainer', false, 'the Dagster code location (MAINTAINER_PG_USER)'),
    (:'writer_user', 'audit_writer', false, 'applications (WRITER_PG_USER)'),
    (:'reader_user', 'audit_reader', false, 'reports and auditors (READER_PG_USER)'),
    (:'replication_user', NULL, true, 'streaming replication (REPLICATION_PG_USER)'),
    (:'dagster_user', NULL, false, 'Dagster''s storage (DAGSTER_PG_USER)');

-- Refuse what would undo the separation: one login for two kinds of client (the writer would get the
-- maintainer's rights), a login that is the superuser, a group role used as a login, one database for both.
SELECT format('DO $refuse$ BEGIN RAISE EXCEPTION USING MESSAGE = %L; END $refuse$', problem)
FROM (
    SELECT format('primary-init: login %s serves more than one kind of client: %s', name,
                  string_agg(purpose, ', ' ORDER BY purpose)) AS problem
    FROM init_login GROUP BY name HAVING count(*) > 1
    UNION ALL
    SELECT format('primary-init: %s is a superuser; %s needs a login of its own without SUPERUSER', l.name, l.purpose)
    FROM init_login l JOIN pg_roles r ON r.rolname = l.name WHERE r.rolsuper
    UNION ALL
    SELECT format('primary-init: %s is a group role of migration 0007_roles, not a login (%s)', name, purpose)
    FROM init_login WHERE name IN ('audit_writer', 'audit_reader', 'audit_maintainer')
    UNION ALL
    SELECT 'primary-init: AUDIT_PG_DB and DAGSTER_PG_DB must name two databases, neither postgres nor a template'
    WHERE :'audit_db' = :'dagster_db' OR ARRAY[:'audit_db', :'dagster_db'] && ARRAY['postgres', 'template0', 'template1']
) AS problems
LIMIT 1
\gexec

-- The group roles, as migration 0007_roles would make them (it skips those that exist).
SELECT format('CREATE ROLE %I NOLOGIN', g)
FROM unnest(ARRAY['audit_writer', 'audit_reader', 'audit_maintainer']) AS g
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = g)
\gexec

SELECT format('CREATE ROLE %I', name) FROM init_login WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = name)
\gexec
-- Every attribute spelled out, so that a login that existed before ends up with exactly these. INHERIT: the library
-- never runs SET ROLE, a login acts with its group's privileges.
SELECT format('ALTER ROLE %I WITH LOGIN INHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS %s', name,
              CASE WHEN replication THEN 'REPLICATION' ELSE 'NOREPLICATION' END)
FROM init_login
\gexec
SELECT format('GRANT %I TO %I', grp, name) FROM init_login WHERE grp IS NOT NULL AND NOT pg_has_role(name, grp, 'MEMBER')
\gexec

\getenv password OWNER_PG_PASSWORD
SELECT format('ALTER ROLE %I PASSWORD %L', :'owner_user', :'password') \gexec
\getenv password MAINTAINER_PG_PASSWORD
SELECT format('ALTER ROLE %I PASSWORD %L', :'maintainer_user', :'password') \gexec
\getenv password WRITER_PG_PASSWORD
SELECT format('ALTER ROLE %I PASSWORD %L', :'writer_user', :'password') \gexec
\getenv password READER_PG_PASSWORD
SELECT format('ALTER ROLE %I PASSWORD %L', :'reader_user', :'password') \gexec
\getenv password REPLICATION_PG_PASSWORD
SELECT format('ALTER ROLE %I PASSWORD %L', :'replication_user', :'password') \gexec
\getenv password DAGSTER_PG_PASSWORD
SELECT format('ALTER ROLE %I PASSWORD %L', :'dagster_user', :'password') \gexec
\unset password

-- Each database belongs to the login that creates its schema: the owner login migrates the audit database (on
-- PostgreSQL 15+ its public schema follows the database owner, so that login may grant CREATE on it to
-- audit_maintainer), Dagster's login creates its tables in its own.
SELECT format('CREATE DATABASE %I OWNER %I', db, owner)
FROM (VALUES (:'audit_db', :'owner_user'), (:'dagster_db', :'dagster_user')) AS d(db, owner)
WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = db)
\gexec
SELECT format('ALTER DATABASE %I OWNER TO %I', :'audit_db', :'owner_user') \gexec
SELECT format('ALTER DATABASE %I OWNER TO %I', :'dagster_db', :'dagster_user') \gexec
-- PUBLIC may connect to a new database: revoked, so the Dagster login cannot open the audit database nor the audit
-- logins Dagster's. Migration 0007_roles grants CONNECT on the audit database to its three group roles.
SELECT format('REVOKE CONNECT ON DATABASE %I FROM PUBLIC', db)
FROM unnest(ARRAY[:'audit_db', :'dagster_db']) AS db
\gexec
DROP TABLE init_login;

-- Weekly index maintenance (optimize) rebuilds bloated B-trees only where it can measure them with pgstatindex:
-- installing pgstattuple needs a superuser, and its functions are granted to pg_stat_scan_tables, which goes to the
-- maintainer login that runs optimize (not to the group: the owner login and the others do not need it).
\connect :audit_db
CREATE EXTENSION IF NOT EXISTS pgstattuple;
SELECT format('GRANT pg_stat_scan_tables TO %I', :'maintainer_user') \gexec
