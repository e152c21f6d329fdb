"""Idempotent migration runner.

Migrations are the numbered files ``audit_db_core/migrations/NNNN_name.sql``, applied in order, each in its own
transaction, and recorded in ``schema_migrations`` with a SHA-256 of their text. The whole run holds a session
advisory lock, so any number of processes may call it at once: one applies, the others wait and find nothing
left to do. A migration whose file changed after it was applied is an error, not a silent skip.

Example::

    from audit_db_core.migrate import migrate
    result = migrate("postgresql://postgres@127.0.0.1:5432/audit")
    result.applied        # ["0001_audit_log", …] on a fresh database, [] on the next run
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING

from audit_db_core.errors import MigrationError, classify
from audit_db_core.telemetry import lifecycle

if TYPE_CHECKING:
    import psycopg

logger = logging.getLogger("audit_db_core.migrate")

#: Advisory lock keys (class, object) used by the library; one place so they never collide.
LOCK_CLASS = 0x41554454  # "AUDT"
LOCK_MIGRATE = 1
LOCK_PARTITIONS = 2

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    text: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    @property
    def label(self) -> str:
        return f"{self.version:04d}_{self.name}"


@dataclass
class MigrationResult:
    applied: list[str] = field(default_factory=list)
    already_applied: list[str] = field(default_factory=list)

    @property
    def schema_version(self) -> int:
        labels = self.applied + self.already_applied
        return max((int(label[:4]) for label in labels), default=0)


def available_migrations() -> list[Migration]:
    """The migrations shipped with the package, in order."""
    found = []
    for entry in resources.files("audit_db_core.migrations").iterdir():
        m = _NAME.match(entry.name)
        if m:
            found.append(Migration(int(m.group(1)), m.group(2), entry.read_text(encoding="utf-8")))
    found.sort(key=lambda mig: mig.version)
    versions = [mig.version for mig in found]
    if len(set(versions)) != len(versions):
        raise MigrationError("two migration files share a version number", operation="migrate")
    return found


SCHEMA_VERSION = available_migrations()[-1].version


@lifecycle("migrate")
def migrate(conninfo: str, *, connect_timeout: int = 10, lock_timeout_s: float = 300.0) -> MigrationResult:
    """Apply every pending migration to the database at ``conninfo``; safe to call concurrently and repeatedly."""
    import psycopg  # here, not at the top: importing audit_db_core needs no database driver

    try:
        conn = psycopg.connect(conninfo, autocommit=True, connect_timeout=connect_timeout)
    except psycopg.Error as exc:
        raise classify(exc, operation="migrate") from None
    with conn:
        return _migrate(conn, lock_timeout_s)


def create_database(conninfo: str, dbname: str, *, connect_timeout: int = 10) -> bool:
    """Create database ``dbname`` on the server of ``conninfo`` unless it exists (safe when several processes
    race); True if this call created it. For a database beside the audit log, e.g. Dagster's storage.

    Example::

        create_database("postgresql://postgres@127.0.0.1:5433/postgres", "dagster")
    """
    import psycopg
    from psycopg import sql

    try:
        with psycopg.connect(conninfo, autocommit=True, connect_timeout=connect_timeout) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone():
                return False
            try:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
            except psycopg.errors.DuplicateDatabase:
                return False  # another process created it meanwhile
    except psycopg.Error as exc:
        raise classify(exc, operation="create_database", database=dbname) from None
    logger.info("created database %s", dbname)
    return True


def _migrate(conn: psycopg.Connection, lock_timeout_s: float) -> MigrationResult:
    import psycopg
    from psycopg import sql

    result = MigrationResult()
    current: str | None = None  # the migration being applied, named when it fails
    try:
        conn.execute("SET statement_timeout = 0")
        conn.execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(f"{int(lock_timeout_s * 1000)}ms")))
        conn.execute("SELECT pg_advisory_lock(%s, %s)", (LOCK_CLASS, LOCK_MIGRATE))
        try:
            conn.execute(
                """
                CREATE TABLE IF NOT EXISTS schema_migrations (
                    version    integer     PRIMARY KEY,
                    name       text        NOT NULL,
                    checksum   text        NOT NULL,
                    applied_at timestamptz NOT NULL DEFAULT now()
                )
                """
            )
            applied = {
                version: (name, checksum)
                for version, name, checksum in conn.execute("SELECT version, name, checksum FROM schema_migrations")
            }
            for mig in available_migrations():
                if mig.version in applied:
                    if applied[mig.version][1] != mig.checksum:
                        raise MigrationError(
                            f"migration {mig.label} was changed after it was applied (checksum differs); "
                            "add a new migration instead of editing an applied one",
                            operation="migrate",
                        )
                    result.already_applied.append(mig.label)
                    continue
                current = mig.label
                with conn.transaction():
                    conn.execute(mig.text)  # static SQL shipped with the package
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                        (mig.version, mig.name, mig.checksum),
                    )
                result.applied.append(mig.label)
                current = None
                logger.info("migration applied", extra={"audit": {"migration": mig.label}})
        finally:
            if not conn.closed and not conn.broken:
                conn.execute("SELECT pg_advisory_unlock(%s, %s)", (LOCK_CLASS, LOCK_MIGRATE))
    except MigrationError:
        raise
    except psycopg.Error as exc:
        err = classify(exc, operation="migrate")
        which = f"migration {current}" if current else "migration"
        raise MigrationError(f"{which} failed: {err.message}", operation="migrate", migration=current,
                             sqlstate=err.context.get("sqlstate")) from exc
    return result
