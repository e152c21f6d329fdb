"""Migrations: idempotent, safe from several processes at once, and strict about edited history."""

from __future__ import annotations

import json
import subprocess
import sys

import psycopg
import pytest

from audit_db_core import AuditDatabase, AuditSettings, MigrationError
from audit_db_core.migrate import SCHEMA_VERSION, available_migrations, migrate

EXPECTED_TABLES = {"audit_log", "audit_log_default", "audit_partitions", "audit_lifecycle_ledger", "schema_migrations"}


def _tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
    return {r[0] for r in rows}


def test_migrate_twice(empty_database: str) -> None:
    first = migrate(empty_database)
    assert first.applied == [m.label for m in available_migrations()]
    second = migrate(empty_database)
    assert second.applied == [] and second.already_applied == first.applied
    assert second.schema_version == SCHEMA_VERSION
    assert EXPECTED_TABLES <= _tables(empty_database)


def test_migrate_from_four_processes_at_once(empty_database: str) -> None:
    code = (
        "import json, sys; from audit_db_core.migrate import migrate; "
        "r = migrate(sys.argv[1]); print(json.dumps(r.applied))"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, empty_database], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], [o[1][-2000:] for o in outputs]
    applied = [label for out, _ in outputs for label in json.loads(out.strip().splitlines()[-1])]
    # Every migration was applied exactly once, by one of the four.
    assert sorted(applied) == sorted(m.label for m in available_migrations())
    with psycopg.connect(empty_database) as conn:
        (n,) = conn.execute("SELECT count(*) FROM schema_migrations").fetchone()  # type: ignore[misc]
    assert n == len(available_migrations())


def test_edited_migration_is_refused(empty_database: str) -> None:
    migrate(empty_database)
    with psycopg.connect(empty_database) as conn:
        conn.execute("UPDATE schema_migrations SET checksum = 'edited' WHERE version = 1")
    with pytest.raises(MigrationError, match="0001_audit_log"):
        migrate(empty_database)


def test_database_migrate_makes_the_premake_window(empty_database: str) -> None:
    settings = AuditSettings(database_url=empty_database, partitions={"premake": 2})
    with AuditDatabase(settings) as db:
        db.migrate()
        parts = db.partitions.list_partitions()
        again = db.migrate()
    assert len(parts) == 3
    assert again.applied == []
    assert {p.name for p in parts} <= _tables(empty_database)
