"""Dagster resources of the code location: the audit database (key ``"audit_db"``).

:class:`AuditDatabaseResource` wraps :class:`audit_db_core.AuditDatabase`. Only the URLs are resource config —
passed as ``dg.EnvVar(...)`` in ``definitions.py`` so the UI shows the variables' names, never their values;
every other setting comes from the ``AUDIT_*`` environment through :class:`audit_db_core.AuditSettings`
(pool sizes, partition interval, archive root, retention, replica lag bounds …).

The alert resource (key ``"alerts"``) lives in :mod:`audit_platform.alerts`.

Example::

    audit_db = AuditDatabaseResource(database_url=dg.EnvVar("AUDIT_DATABASE_URL"))

    @dg.asset
    def partition_count(audit_db: AuditDatabaseResource) -> int:
        with audit_db.open() as db:
            return len(db.partitions.list_partitions())
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dagster as dg
from pydantic import Field

from audit_db_core import AuditDatabase, AuditSettings


class AuditDatabaseResource(dg.ConfigurableResource):  # type: ignore[misc]
    """The audit database: ``with audit_db.open() as db:`` yields an opened :class:`AuditDatabase`.

    Each ``open()`` opens the pools and closes them on exit, so a run holds connections only while it works.
    Empty ``replica_urls`` / ``redis_url`` mean "from the environment" (``AUDIT_REPLICA_URLS``,
    ``AUDIT_REDIS_URL``), which may leave them unset.
    """

    database_url: str = Field(description="primary PostgreSQL URL; pass dg.EnvVar('AUDIT_DATABASE_URL')")
    replica_urls: str = Field(
        default="", description="read replica URLs, comma-separated; empty = AUDIT_REPLICA_URLS (or none)"
    )
    redis_url: str = Field(default="", description="Redis URL of the query cache; empty = AUDIT_REDIS_URL (or none)")

    def settings(self) -> AuditSettings:
        """The library settings: these URLs plus every other ``AUDIT_*`` variable of the environment.

        Raises :class:`audit_db_core.ConfigurationError` naming the variable when a value is invalid.
        """
        values: dict[str, Any] = {"database_url": self.database_url}
        if self.replica_urls.strip():
            values["replica_urls"] = self.replica_urls
        if self.redis_url.strip():
            values["redis_url"] = self.redis_url
        return AuditSettings(**values)

    @contextmanager
    def open(self) -> Iterator[AuditDatabase]:
        """An opened :class:`AuditDatabase`, closed when the block ends.

        Raises :class:`audit_db_core.AuditConnectionError` (password masked) when the primary is unreachable.
        """
        with self.database(self.settings()) as db:
            yield db

    def database(self, settings: AuditSettings) -> AuditDatabase:
        """The database object :meth:`open` opens. A deployment with its own implementation of a seam of
        :mod:`audit_db_core.interfaces` (e.g. a ``ResultCache``) subclasses this resource and returns
        ``AuditDatabase(settings, cache=MyCache(...))``."""
        return AuditDatabase(settings)
