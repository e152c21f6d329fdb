"""The deployment identity (migration 0011, ``audit_db_core.deployment``): one row, one UUID per database, readable
by every role, changed only by its owner, and distinct for each clone the suite makes."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from audit_db_core import AuditDatabase, AuditSettings, ComplianceError, MigrationError
from audit_db_core.deployment import new_deployment_id, read_deployment_id
from audit_db_core.ledger import entries
from tests.conftest import TestServers as Servers
from tests.conftest import with_dbname
from tests.core.test_roles import RoleUrls, login_roles, roles  # noqa: F401  (fixtures)


def identity(url: str) -> uuid.UUID:
    with psycopg.connect(url, autocommit=True) as conn:
        return read_deployment_id(conn)


def test_a_migrated_database_has_one_identity_and_the_client_caches_it(db: AuditDatabase,
                                                                       fresh_database: str) -> None:
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        rows = conn.execute("SELECT deployment_id, created_at FROM audit_deployment").fetchall()
    assert len(rows) == 1 and isinstance(rows[0][0], uuid.UUID) and rows[0][1] is not None
    assert db.deployment_id == rows[0][0]
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        changed = new_deployment_id(conn)
    assert changed != rows[0][0] and identity(fresh_database) == changed
    assert db.deployment_id == rows[0][0]  # read once: this client keeps the identity it started with
    with AuditDatabase(AuditSettings(database_url=fresh_database)) as later:
        assert later.deployment_id == changed


def test_every_clone_of_the_template_has_an_identity_of_its_own(fresh_database: str, shared_database: str,
                                                                template_db: str, servers: Servers) -> None:
    ids = {identity(fresh_database), identity(shared_database),
           identity(with_dbname(servers.database_url, template_db))}
    assert len(ids) == 3


def test_new_identity_is_recorded_in_the_ledger(fresh_database: str) -> None:
    before = identity(fresh_database)
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        after = new_deployment_id(conn)
        recorded = entries(conn, operation="new_deployment_id")
    assert recorded[-1].details == {"previous": str(before), "deployment_id": str(after)}
    assert recorded[-1].outcome == "ok"


def test_exactly_one_row_even_for_a_superuser(fresh_database: str) -> None:
    with psycopg.connect(fresh_database, autocommit=True) as conn:  # the suite's superuser
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("INSERT INTO audit_deployment DEFAULT VALUES")
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("INSERT INTO audit_deployment (singleton) VALUES (false)")
        for stmt in ("DELETE FROM audit_deployment", "TRUNCATE audit_deployment"):
            with pytest.raises(psycopg.errors.RaiseException, match="exactly one row"):
                conn.execute(stmt)
        (n,) = conn.execute("SELECT count(*) FROM audit_deployment").fetchone()  # type: ignore[misc]
    assert n == 1


def test_every_role_reads_it_and_only_the_owner_changes_it(roles: RoleUrls, fresh_database: str) -> None:
    original = identity(fresh_database)
    for url in (roles.writer, roles.reader, roles.maintainer):
        assert identity(url) == original
        with AuditDatabase(AuditSettings(database_url=url)) as db:
            assert db.deployment_id == original
    for url in (roles.writer, roles.reader):
        with psycopg.connect(url, autocommit=True) as conn:
            for stmt in ("UPDATE audit_deployment SET deployment_id = gen_random_uuid()",
                         "INSERT INTO audit_deployment DEFAULT VALUES", "DELETE FROM audit_deployment",
                         "ALTER TABLE audit_deployment DISABLE TRIGGER ALL"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(stmt)
            with pytest.raises(ComplianceError, match="not permitted to new_deployment_id"):
                new_deployment_id(conn)
    assert identity(fresh_database) == original
    with psycopg.connect(roles.maintainer, autocommit=True) as conn:  # the owner's group role
        changed = new_deployment_id(conn)
    assert changed != original and identity(fresh_database) == changed


def test_an_unmigrated_database_says_so(empty_database: str) -> None:
    with AuditDatabase(AuditSettings(database_url=empty_database)) as db:
        with pytest.raises(MigrationError, match="migrations are not applied"):
            _ = db.deployment_id
        with pytest.raises(MigrationError, match="migrations are not applied"):
            _ = db.deployment_id  # a failure is not cached
        db.migrate()
        assert db.deployment_id == identity(empty_database)
    with psycopg.connect(empty_database, autocommit=True) as conn:
        conn.execute("DROP TABLE audit_deployment CASCADE")
        with pytest.raises(MigrationError, match="migration 0011"):
            new_deployment_id(conn)
