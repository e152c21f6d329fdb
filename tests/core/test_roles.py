"""Least-privilege roles (migration 0007_roles): the writer, the reader and the maintainer each do their part
through the library, and the writer can neither change nor remove audit rows, nor switch off what protects them.

The suite's superuser makes LOGIN roles with random names for each test, grants them the group roles, connects
as them, and drops them afterwards, even when the test fails.
"""

from __future__ import annotations

import datetime as dt
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from audit_db_core import AuditDatabase, AuditEvent, AuditQuery, AuditSettings, ComplianceError, MigrationError
from audit_local.demo import demo_events
from audit_db_core.ledger import entries
from audit_db_core.migrate import available_migrations, migrate
from tests.conftest import TestServers as Servers
from tests.conftest import dbname_of, scratch_database, with_dbname
from tests.conftest import archive_dir

UTC = dt.UTC
GROUP_ROLES = ("audit_writer", "audit_reader", "audit_maintainer")


def as_role(url: str, role: str, password: str) -> str:
    """``url`` with another user and password: ``postgresql://postgres@h:p/db`` → ``postgresql://role:pw@h:p/db``."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{quote(role, safe='')}:{quote(password, safe='')}@{host}"))


class LoginRoles:
    """LOGIN roles made by the superuser of ``server_url`` for one test; :meth:`drop_all` removes them again."""

    def __init__(self, server_url: str) -> None:
        self.server_url = server_url
        self._passwords: dict[str, str] = {}
        self._databases: set[str] = set()

    def make(self, label: str, *groups: str, createrole: bool = False) -> str:
        name = f"audit_test_{label}_{secrets.token_hex(4)}"
        password = secrets.token_urlsafe(18)
        # Role DDL takes no parameters: the password goes in as a quoted literal.
        stmt = sql.SQL("CREATE ROLE {} LOGIN {} PASSWORD {}").format(
            sql.Identifier(name), sql.SQL("CREATEROLE" if createrole else "NOCREATEROLE"), sql.Literal(password))
        with psycopg.connect(self.server_url, autocommit=True) as conn:
            conn.execute(stmt)
            self._passwords[name] = password
            for group in groups:
                conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(group), sql.Identifier(name)))
        return name

    def url(self, role: str, database_url: str) -> str:
        """The URL of ``database_url``'s database, connecting as ``role``."""
        self._databases.add(dbname_of(database_url))
        return as_role(database_url, role, self._passwords[role])

    def drop_all(self) -> None:
        if not self._passwords:
            return
        names = sql.SQL(", ").join(sql.Identifier(n) for n in self._passwords)
        for dbname in sorted(self._databases):
            try:
                conn = psycopg.connect(with_dbname(self.server_url, dbname), autocommit=True)
            except psycopg.OperationalError:
                continue  # the database was dropped already, and what the roles owned in it with it
            with conn:
                conn.execute(sql.SQL("DROP OWNED BY {}").format(names))
        with psycopg.connect(self.server_url, autocommit=True) as conn:
            for name in self._passwords:
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
        self._passwords.clear()


@pytest.fixture
def login_roles(servers: Servers, template_db: str) -> Iterator[LoginRoles]:
    """A factory of LOGIN roles (the group roles exist: the template database was migrated)."""
    roles = LoginRoles(servers.database_url)
    try:
        yield roles
    finally:
        roles.drop_all()


@dataclass(frozen=True)
class RoleUrls:
    writer: str
    reader: str
    maintainer: str
    maintainer_role: str


@pytest.fixture
def roles(fresh_database: str, login_roles: LoginRoles) -> RoleUrls:
    """One login role per group role, each with its URL for this test's database."""
    writer = login_roles.make("writer", "audit_writer")
    reader = login_roles.make("reader", "audit_reader")
    maintainer = login_roles.make("maint", "audit_maintainer")
    return RoleUrls(
        writer=login_roles.url(writer, fresh_database),
        reader=login_roles.url(reader, fresh_database),
        maintainer=login_roles.url(maintainer, fresh_database),
        maintainer_role=maintainer,
    )


def _owners(url: str) -> dict[str, str]:
    """Every table of the audit schema (partitions included, attached or not) and its owner."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT c.relname, pg_get_userbyid(c.relowner) FROM pg_class c"
            " WHERE c.relnamespace = (SELECT relnamespace FROM pg_class WHERE oid = 'audit_log'::regclass)"
            " AND c.relkind IN ('r', 'p', 'S')"
        ).fetchall()
    return dict(rows)


def _a_partition(url: str) -> str:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT partition_name FROM audit_partitions ORDER BY range_start LIMIT 1").fetchone()
    assert row is not None, "the template database has premade partitions"
    return str(row[0])


# -- the migration ---------------------------------------------------------------------------------------------------


def test_the_maintainer_owns_every_audit_table_and_the_others_own_nothing(db: AuditDatabase, fresh_database: str) -> None:
    db.partitions.create_partition("2031-01")  # created by a superuser: handed over all the same
    owners = _owners(fresh_database)
    assert {"audit_log", "audit_log_default", "audit_log_p2031_01", "audit_partitions", "audit_lifecycle_ledger",
            "schema_migrations"} <= owners.keys()
    assert {name: owner for name, owner in owners.items() if owner != "audit_maintainer"} == {}
    with psycopg.connect(fresh_database) as conn:
        groups = conn.execute(
            "SELECT rolname, rolcanlogin, rolsuper, rolcreaterole, rolbypassrls FROM pg_roles"
            " WHERE rolname = ANY(%s) ORDER BY rolname", (list(GROUP_ROLES),)).fetchall()
        functions = conn.execute(
            "SELECT proname, pg_get_userbyid(proowner) FROM pg_proc WHERE proname LIKE 'audit\\_reject\\_%'"
        ).fetchall()
        owned_by_others = conn.execute(
            "SELECT count(*) FROM pg_class WHERE pg_get_userbyid(relowner) IN ('audit_writer', 'audit_reader')"
        ).fetchone()
    assert groups == [(name, False, False, False, False) for name in sorted(GROUP_ROLES)]
    assert functions and all(owner == "audit_maintainer" for _, owner in functions)
    assert owned_by_others == (0,)


# -- the writer ------------------------------------------------------------------------------------------------------


def test_writer_inserts_and_reads(roles: RoleUrls) -> None:
    with AuditDatabase(AuditSettings(database_url=roles.writer)) as db:
        event = AuditEvent(action="patient.record.read", status="success", principal_id="dr.who")
        assert db.insert(event) is True
        assert db.insert(event) is False  # a retry of the same event: no duplicate, no error
        batch = demo_events(300, seed=7)
        assert db.insert_many(batch) == 300
        # Re-sending the batch takes the idempotent path: COPY into a temporary stage, INSERT … ON CONFLICT.
        assert db.insert_many(batch) == 0
        assert db.count(AuditQuery()) == 301
        page = db.query(AuditQuery(principal_id="dr.who"))
        assert [e.event_id for e in page.events] == [event.event_id]
        report = db.health()
        assert report.healthy, report.to_dict()
        # The lifecycle is not the writer's to run.
        with pytest.raises(ComplianceError, match="not permitted to create_partition"):
            db.partitions.create_partition("2031-02")


def test_writer_cannot_change_remove_or_unprotect_audit_rows(roles: RoleUrls, fresh_database: str) -> None:
    with AuditDatabase(AuditSettings(database_url=roles.writer)) as db:
        db.insert_many(demo_events(50, seed=3))
    partition = _a_partition(fresh_database)
    part, log, default = sql.Identifier(partition), sql.Identifier("audit_log"), sql.Identifier("audit_log_default")
    attempts = [
        sql.SQL("UPDATE {} SET action = 'tampered'").format(log),
        sql.SQL("DELETE FROM {}").format(log),
        sql.SQL("TRUNCATE {}").format(log),
        sql.SQL("INSERT INTO {t} SELECT * FROM {t} LIMIT 0 ON CONFLICT (event_time, event_id)"
                " DO UPDATE SET action = excluded.action").format(t=log),
        sql.SQL("DROP TABLE {}").format(log),
        sql.SQL("ALTER TABLE {} ADD COLUMN tampered text").format(log),
        sql.SQL("ALTER TABLE {} OWNER TO CURRENT_USER").format(log),
        sql.SQL("ALTER TABLE {} DISABLE TRIGGER audit_log_append_only").format(log),
        sql.SQL("ALTER TABLE {} DISABLE TRIGGER ALL").format(log),
        sql.SQL("CREATE TRIGGER tampered BEFORE INSERT ON {} FOR EACH ROW"
                " EXECUTE FUNCTION audit_reject_modification()").format(log),
        sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(log),
        sql.SQL("UPDATE {} SET action = 'tampered'").format(part),
        sql.SQL("DELETE FROM {}").format(part),
        sql.SQL("TRUNCATE {}").format(part),
        sql.SQL("DROP TABLE {}").format(part),
        sql.SQL("ALTER TABLE {} DISABLE TRIGGER ALL").format(part),
        sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(log, part),
        sql.SQL("DELETE FROM {}").format(default),
        sql.SQL("ALTER TABLE {} DISABLE TRIGGER audit_log_append_only").format(default),
        sql.SQL("SET session_replication_role = replica"),  # would skip every ordinary trigger
        sql.SQL("DROP FUNCTION audit_reject_modification() CASCADE"),
        sql.SQL("CREATE OR REPLACE FUNCTION audit_reject_modification() RETURNS trigger LANGUAGE plpgsql"
                " AS 'BEGIN RETURN NEW; END'"),
        sql.SQL("INSERT INTO audit_partitions (partition_name, range_start, range_end)"
                " VALUES ('audit_log_p2099_01', '2099-01-01', '2099-02-01')"),
        sql.SQL("UPDATE audit_partitions SET legal_hold = false, legal_hold_reason = NULL"),
        sql.SQL("DELETE FROM audit_partitions"),
        sql.SQL("INSERT INTO audit_lifecycle_ledger (operation, outcome) VALUES ('purge', 'ok')"),
        sql.SQL("DELETE FROM schema_migrations"),
    ]

    def refusals(url: str) -> dict[str, str]:
        """What each statement raised (``ok`` when it went through), each rolled back whatever happened."""
        out = {}
        with psycopg.connect(url, autocommit=True) as conn:
            for stmt in attempts:
                text = stmt.as_string(conn)
                try:
                    with conn.transaction(force_rollback=True):
                        conn.execute(stmt)
                    out[text] = "ok"
                except psycopg.Error as exc:
                    out[text] = type(exc).__name__
        return out

    # The control: the statements are sound, and a superuser is stopped by nothing but the append-only triggers.
    assert set(refusals(fresh_database).values()) <= {"ok", "RaiseException"}
    as_writer = refusals(roles.writer)
    assert {stmt: error for stmt, error in as_writer.items() if error != "InsufficientPrivilege"} == {}

    with psycopg.connect(fresh_database) as conn:
        (rows,) = conn.execute("SELECT count(*) FROM audit_log").fetchone()  # type: ignore[misc]
        disabled = conn.execute(
            "SELECT tgrelid::regclass::text, tgname FROM pg_trigger WHERE NOT tgisinternal AND tgenabled <> 'O'"
        ).fetchall()
    assert rows == 50 and disabled == []


# -- the reader ------------------------------------------------------------------------------------------------------


def test_reader_reads_but_cannot_write(roles: RoleUrls, db: AuditDatabase) -> None:
    db.insert_many(demo_events(40, seed=5))  # written by the suite's superuser
    with AuditDatabase(AuditSettings(database_url=roles.reader)) as reader:
        assert reader.count(AuditQuery()) == 40
        assert len(reader.query(AuditQuery(limit=10)).events) == 10
        assert reader.health().healthy
        assert reader.partitions.list_partitions()  # the registry
        with reader.connections.connection() as conn:
            assert entries(conn, operation="create")  # the lifecycle ledger

        event = AuditEvent(action="patient.record.read", status="success", principal_id="auditor.7")
        with pytest.raises(ComplianceError) as refused:
            reader.insert(event)
        err = refused.value
        assert err.operation == "insert" and err.context["sqlstate"] == "42501"
        assert err.message.startswith("not permitted to insert: permission denied for table audit_log")
        assert "audit_writer" in err.message  # says which role would allow it
        with pytest.raises(ComplianceError, match="not permitted to insert_many: permission denied"):
            reader.insert_many([event])
        with pytest.raises(ComplianceError, match="not permitted to hold"):
            reader.partitions.hold(reader.partitions.list_partitions()[0].start, "case 12")
    assert db.count(AuditQuery()) == 40


def test_reader_exports_a_report_and_leaves_only_that_ledger_entry(roles: RoleUrls, db: AuditDatabase,
                                                                   tmp_path: Path) -> None:
    pytest.importorskip("pandas", reason="HIPAA reports need the 'reports' extra")
    import datetime as dt

    from audit_db_core.reports import read_report

    db.insert_many(demo_events(40, seed=5))
    org = db.query(AuditQuery(limit=1)).events[0].organization_id
    reader_role = dbname_user(roles.reader)
    since, until = dt.datetime.now(dt.UTC) - dt.timedelta(days=40), dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    with AuditDatabase(AuditSettings(database_url=roles.reader)) as reader:
        summary = reader.reports.compliance_summary(since, until)
        result = reader.reports.write(summary, tmp_path / "summary.parquet", format="parquet")
        assert result.rows == len(summary.frame) > 0
        assert len(read_report(result.path, "compliance_summary")) == result.rows
        with reader.connections.connection() as conn:
            (entry,) = [e for e in entries(conn, operation="report_export")]
            assert entry.actor == reader_role and entry.checksum == result.sha256
        with pytest.raises(ComplianceError, match="not permitted"):  # but no other entry of its own making
            with reader.connections.connection() as conn:
                conn.execute("INSERT INTO audit_lifecycle_ledger (operation, outcome) VALUES ('purge', 'ok')")
    assert org is not None


def dbname_user(url: str) -> str:
    from urllib.parse import urlsplit

    return urlsplit(url).username or ""


# -- the maintainer --------------------------------------------------------------------------------------------------


def test_maintainer_runs_the_partition_lifecycle(roles: RoleUrls, fresh_database: str, tmp_path: Path) -> None:
    archive_root = tmp_path / "archive"
    maintainer = AuditSettings(
        database_url=roles.maintainer,
        archive={"root_uri": archive_root.as_uri(), "batch_rows": 200},
        retention={"default": "1 year"},
    )
    with AuditDatabase(maintainer) as mdb, AuditDatabase(AuditSettings(database_url=roles.writer)) as wdb:
        pm = mdb.partitions
        assert mdb.migrate().applied == []  # up to date; premakes the current window
        for month in ("2020-01", "2020-02", "2020-03"):
            assert pm.create_partition(month, run_id="roles").created
        assert wdb.insert_many(demo_events(600, now=dt.datetime(2020, 4, 1, tzinfo=UTC), span=dt.timedelta(days=91)))
        # Events for periods without a partition land in DEFAULT; the maintainer rescues them.
        stray = demo_events(60, seed=9, now=dt.datetime(2035, 3, 1, tzinfo=UTC), span=dt.timedelta(days=59))
        assert wdb.insert_many(stray) == 60
        assert pm.default_row_count() == 60
        rescued = pm.rescue_default(run_id="roles")
        assert {r.name for r in rescued} == {"audit_log_p2035_01", "audit_log_p2035_02"}
        assert sum(r.rescued_rows for r in rescued) == 60 and pm.default_row_count() == 0

        archived = pm.archive("2020-01", run_id="roles")
        assert archived.status == "archived" and archived.rows > 0
        assert (archive_dir(archive_root, "audit_log_p2020_01") / "manifest.json").is_file()
        with AuditDatabase(maintainer.with_overrides(archive={"mode": "detach"})) as detaching:
            assert detaching.partitions.archive("2020-02", run_id="roles").detached
        pm.hold("2020-02", "case 12", run_id="roles")

        purge = pm.purge(dry_run=False, run_id="roles")
        assert purge.purged == ["audit_log_p2020_01"]  # 2020-02 is on hold; 2020-03 is not archived
        restored = pm.restore("2020-01", run_id="roles")  # back from the archive, for an investigation
        assert restored.rows == archived.rows
        optimized = pm.optimize(run_id="roles")
        assert ("audit_log_p2020_03", "stats") in {(s.partition, s.action) for s in optimized.steps}
        assert {"audit_log_p2020_03", "audit_log_p2035_01"} <= {s.partition for s in optimized.steps}
        # The writer still reads what is attached: 2020-01 is purged, 2020-02 detached.
        assert wdb.count(AuditQuery(until=dt.datetime(2020, 4, 1, tzinfo=UTC))) == pm.stats("2020-03").rows

    owners = _owners(fresh_database)
    assert "audit_log_p2020_01" not in owners and owners["audit_log_p2020_02"] == "audit_maintainer"
    assert owners["audit_restore_audit_log_p2020_01"] == "audit_maintainer"
    assert {name: owner for name, owner in owners.items() if owner != "audit_maintainer"} == {}
    with psycopg.connect(fresh_database) as conn:
        attached = conn.execute("SELECT count(*) FROM pg_inherits WHERE inhrelid = 'audit_log_p2020_02'::regclass"
                                ).fetchone()
        ledger = [e for e in entries(conn) if e.run_id == "roles"]
        disabled = conn.execute("SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal AND tgenabled <> 'O'"
                                ).fetchone()
    assert attached == (0,) and disabled == (0,)
    assert {"create", "rescue", "archive", "detach", "hold", "purge", "restore", "optimize"} <= {
        e.operation for e in ledger}
    # The ledger says who: the maintainer's login role, not a shared group name.
    assert {e.actor for e in ledger} == {roles.maintainer_role}
    assert all(e.outcome == "ok" for e in ledger)


def test_maintainer_rebuilds_indexes_once_it_may_run_pgstatindex(
    roles: RoleUrls, fresh_database: str, servers: Servers
) -> None:
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pgstattuple")
    tuned = AuditSettings(database_url=roles.maintainer,
                          maintenance={"reindex_min_bytes": 0, "reindex_max_leaf_density": 100.0})
    with AuditDatabase(tuned) as mdb:
        part = mdb.partitions.find_partition(dt.datetime.now(UTC))
        assert part is not None
        mdb.insert_many(demo_events(500, now=part.start + dt.timedelta(hours=2), span=dt.timedelta(hours=1)))
        first = mdb.partitions.optimize()
        assert "pg_stat_scan_tables" in first.bloat_check  # says why, and what to grant
        assert not [s for s in first.steps if s.action == "reindex"]
        with psycopg.connect(servers.database_url, autocommit=True) as conn:
            conn.execute(sql.SQL("GRANT pg_stat_scan_tables TO {}").format(sql.Identifier(roles.maintainer_role)))
        second = mdb.partitions.optimize()
        assert second.bloat_check == "pgstattuple"
        assert any(s.action == "reindex" and s.partition == part.name for s in second.steps)
    with psycopg.connect(fresh_database) as conn:
        (invalid,) = conn.execute("SELECT count(*) FROM pg_index WHERE NOT indisvalid").fetchone()  # type: ignore[misc]
    assert invalid == 0


# -- migrating without CREATEROLE ------------------------------------------------------------------------------------


def test_a_migrating_role_without_createrole_uses_roles_an_administrator_made(
    servers: Servers, login_roles: LoginRoles
) -> None:
    """The documented path: an administrator made the group roles and granted audit_maintainer to the role that
    owns the database and migrates it, which has no CREATEROLE."""
    owner = login_roles.make("owner", "audit_maintainer")
    with scratch_database(servers.database_url, "audit_r") as url:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                sql.Identifier(dbname_of(url)), sql.Identifier(owner)))
        owner_url = login_roles.url(owner, url)
        result = migrate(owner_url)
        assert result.applied == [m.label for m in available_migrations()]
        with AuditDatabase(AuditSettings(database_url=owner_url)) as db:
            created = db.migrate()  # nothing left to apply; premakes partitions, as the owner
            assert created.applied == [] and db.partitions.list_partitions()
        owners = _owners(url)
        assert {name: o for name, o in owners.items() if o != "audit_maintainer"} == {}


# -- a server where the roles do not exist yet ---------------------------------------------------------------------


def _waiting_sessions(conn: psycopg.Connection, user: str) -> int:
    row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = %s AND wait_event_type = 'Lock'",
                       (user,)).fetchone()
    return int(row[0]) if row else 0


@pytest.mark.local_servers
def test_roles_on_a_new_server(tmp_path: Path) -> None:
    """On a server of its own (the group roles must not exist yet): without CREATEROLE the migration stops with
    the statements to run; several databases migrated at once while the roles are being created all succeed; and
    after an administrator's grant the role without CREATEROLE migrates."""
    from audit_local.servers import LocalServers

    server = LocalServers(tmp_path / "pg", replica=False, redis=False)
    superuser = server.up().database_url
    try:
        with psycopg.connect(superuser, autocommit=True) as conn:
            conn.execute("CREATE ROLE app_owner LOGIN PASSWORD 'app-owner-pw'")
            conn.execute("CREATE ROLE migrator LOGIN CREATEROLE PASSWORD 'migrator-pw'")
            conn.execute("CREATE DATABASE app OWNER app_owner")
            for i in range(3):
                conn.execute(sql.SQL("CREATE DATABASE {} OWNER migrator").format(sql.Identifier(f"tenant_{i}")))
        app_url = as_role(with_dbname(superuser, "app"), "app_owner", "app-owner-pw")
        tenant_urls = [as_role(with_dbname(superuser, f"tenant_{i}"), "migrator", "migrator-pw") for i in range(3)]

        # 1. No CREATEROLE and no roles: a clear error with the statements to run; 0007 is not applied.
        with pytest.raises(MigrationError) as refused:
            migrate(app_url)
        message = str(refused.value)
        assert "migration 0007_roles failed" in message and "app_owner may not create roles" in message
        assert ("CREATE ROLE audit_writer NOLOGIN; CREATE ROLE audit_reader NOLOGIN; "
                "CREATE ROLE audit_maintainer NOLOGIN; GRANT audit_maintainer TO app_owner") in message
        with psycopg.connect(app_url) as conn:
            assert conn.execute("SELECT max(version) FROM schema_migrations").fetchone() == (6,)
            assert conn.execute("SELECT count(*) FROM pg_roles WHERE rolname LIKE 'audit\\_%'").fetchone() == (0,)
            # Partitions made before roles existed, one attached and one detached: the upgrade hands both over.
            conn.execute("CREATE TABLE audit_log_p2020_01 PARTITION OF audit_log"
                         " FOR VALUES FROM ('2020-01-01 UTC') TO ('2020-02-01 UTC')")
            conn.execute("CREATE TABLE audit_log_p2019_12 (LIKE audit_log)")
            conn.execute("INSERT INTO audit_partitions (partition_name, range_start, range_end, detached) VALUES"
                         " ('audit_log_p2020_01', '2020-01-01 UTC', '2020-02-01 UTC', false),"
                         " ('audit_log_p2019_12', '2019-12-01 UTC', '2020-01-01 UTC', true)")

        # 2. Three databases migrated at once by a CREATEROLE role while another session is creating
        #    audit_writer: every migration waits for it, then finds the role made and carries on.
        blocker = psycopg.connect(superuser)
        try:
            blocker.execute("CREATE ROLE audit_writer NOLOGIN")  # not committed yet
            results: list[object] = [None] * 3

            def run(i: int) -> None:
                try:
                    results[i] = migrate(tenant_urls[i])
                except Exception as exc:  # collected: the assertion below shows it
                    results[i] = exc

            threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
            for t in threads:
                t.start()
            with psycopg.connect(superuser, autocommit=True) as watch:
                deadline = time.monotonic() + 120
                while _waiting_sessions(watch, "migrator") < 3:
                    assert time.monotonic() < deadline, "the migrations never reached the role creation"
                    assert all(t.is_alive() for t in threads), results
                    time.sleep(0.05)
            blocker.commit()
        finally:
            blocker.close()
        for t in threads:
            t.join(120)
        labels = [m.label for m in available_migrations()]
        assert [getattr(r, "applied", r) for r in results] == [labels] * 3
        with psycopg.connect(superuser) as conn:
            made = conn.execute("SELECT rolname, rolcanlogin FROM pg_roles WHERE rolname LIKE 'audit\\_%'"
                                " ORDER BY rolname").fetchall()
            assert made == [("audit_maintainer", False), ("audit_reader", False), ("audit_writer", False)]
            assert conn.execute("SELECT pg_has_role('migrator', 'audit_maintainer', 'USAGE')").fetchone() == (True,)
        for url in tenant_urls:
            assert set(_owners(url).values()) == {"audit_maintainer"}
        with AuditDatabase(AuditSettings(database_url=tenant_urls[0])) as db:  # the lifecycle, as the migrator
            db.migrate()
            assert db.partitions.list_partitions()
            assert db.insert(AuditEvent(action="user.login", status="success", principal_id="u1"))

        # 3. The administrator's grant is all the role without CREATEROLE needs.
        with psycopg.connect(superuser, autocommit=True) as conn:
            conn.execute("GRANT audit_maintainer TO app_owner")
        assert migrate(app_url).applied == labels[6:]
        owners = _owners(app_url)
        assert owners["audit_log_p2020_01"] == owners["audit_log_p2019_12"] == "audit_maintainer"
        assert set(owners.values()) == {"audit_maintainer"}
    finally:
        server.down(remove=True)
