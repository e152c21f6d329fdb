"""The deployment identity: one random UUID per audit database, drawn by migration ``0011_deployment``.

A database name does not tell deployments apart (two servers may each hold an ``audit`` database), and the
server's ``system_identifier`` changes with ``pg_upgrade`` or a dump / restore onto a new server, while archives and
cache entries must stay bound to the same data. The identity is a row of the data itself (``audit_deployment``):
it moves with the data, and every role can read it; only its owner (``audit_maintainer``) can change it.

A copy that is to become a separate environment — a database cloned with ``CREATE DATABASE … TEMPLATE``, a backup
restored as staging — starts with its source's identity: give it its own with :func:`new_deployment_id`.

Example::

    with psycopg.connect(url) as conn:
        read_deployment_id(conn)          # UUID('…')
        new_deployment_id(conn)           # a clone gets a fresh identity (committed with conn's transaction)
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import psycopg

from audit_db_core import ledger
from audit_db_core.errors import MigrationError, classify

logger = logging.getLogger("audit_db_core.deployment")

_MISSING = ("this database has no deployment identity: its migrations are not applied "
            "(run AuditDatabase.migrate() or `audit-platform migrate`; the identity comes with migration 0011)")


def _uuid(value: Any) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


def read_deployment_id(conn: psycopg.Connection[Any]) -> uuid.UUID:
    """The identity of the database ``conn`` is connected to.

    Raises :class:`~audit_db_core.errors.MigrationError` when migration 0011 is not applied, and a classified
    :class:`~audit_db_core.errors.AuditError` for any other database failure."""
    try:
        with conn.transaction():  # a savepoint inside a caller's transaction: a missing table leaves it usable
            row = conn.execute("SELECT deployment_id FROM audit_deployment").fetchone()
    except psycopg.errors.UndefinedTable:
        raise MigrationError(_MISSING, operation="deployment_id") from None
    except psycopg.Error as exc:
        raise classify(exc, operation="deployment_id") from exc
    if row is None:  # the triggers of 0011 make this impossible short of disabling them
        raise MigrationError("audit_deployment is empty: the deployment identity was removed",
                             operation="deployment_id")
    return _uuid(row[0])


def new_deployment_id(conn: psycopg.Connection[Any]) -> uuid.UUID:
    """Give the database ``conn`` is connected to a fresh identity and return it; the change is recorded in the
    lifecycle ledger (operation ``new_deployment_id``, the previous and the new identity).

    For a clone or a restored copy that must not pass for its source. Needs the owner's rights
    (``audit_maintainer``, or a superuser). Every process that cached the old identity must be restarted: until
    then it keeps using the old one (its L2 cache entries then stay apart from the new identity's).

    Example::

        with psycopg.connect(clone_url) as conn:
            new_deployment_id(conn)
    """
    try:
        with conn.transaction():
            old = conn.execute("SELECT deployment_id FROM audit_deployment FOR UPDATE").fetchone()
            row = conn.execute("UPDATE audit_deployment SET deployment_id = gen_random_uuid(), created_at = now()"
                               " RETURNING deployment_id").fetchone()
            if old is None or row is None:
                raise MigrationError("audit_deployment is empty: the deployment identity was removed",
                                     operation="new_deployment_id")
            previous, current = _uuid(old[0]), _uuid(row[0])
            ledger.record(conn, "new_deployment_id", None,
                          details={"previous": str(previous), "deployment_id": str(current)})
    except psycopg.errors.UndefinedTable:
        raise MigrationError(_MISSING, operation="new_deployment_id") from None
    except psycopg.Error as exc:
        raise classify(exc, operation="new_deployment_id") from exc
    logger.info("deployment identity changed", extra={"audit": {"previous": str(previous),
                                                                "deployment_id": str(current)}})
    return current
