"""Partition lifecycle of ``audit_log``: creation (with rescue of DEFAULT rows), archival, retention purge,
legal holds, index maintenance, restore — every step recorded in the registry and the lifecycle ledger.

States: ``active`` (writable) → ``archived`` (a verified Parquet archive exists; the partition is read-only or
detached) → ``purged`` (dropped after retention; the archive is kept until the archive retention passes).

One :class:`PartitionManager` offers every operation; each concern lives in a module of its own:

- :mod:`~audit_db_core.partitions.bounds` — names, bounds and period keys of partitions, in UTC;
- :mod:`~audit_db_core.partitions.results` — what the operations return;
- :mod:`~audit_db_core.partitions.inspection` — registry reads, DEFAULT rows, measured stats, ledger consistency;
- :mod:`~audit_db_core.partitions.creation` — create, premake, rescue of DEFAULT rows;
- :mod:`~audit_db_core.partitions.archival` — archive, detach, restore, verification of the archives kept;
- :mod:`~audit_db_core.partitions.purge` — retention purge, archive deletion, legal holds;
- :mod:`~audit_db_core.partitions.maintenance` — the daily pass, the maintenance plan and index upkeep.

The locks each operation takes are described in its module (see also docs/guides/lifecycle.md).

Example::

    pm = db.partitions
    pm.premake(3)                                # this period and the next three exist afterwards
    pm.run_maintenance()                         # the daily pass: premake + rescue of DEFAULT rows
    pm.plan()                                    # what maintenance would do now, without doing it
    pm.archive("2026-07")                        # export + verify + read-only, once past the active window
    pm.purge(dry_run=True).decisions             # what a purge would drop, and why
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol

import psycopg

from audit_db_core.config import AuditSettings, Period
from audit_db_core.errors import ConfigurationError
from audit_db_core.partitions import archival, creation, inspection, maintenance
from audit_db_core.partitions import purge as purging  # the name "purge" is the manager's method below
from audit_db_core.partitions.archival import ArchivedHook
from audit_db_core.partitions.bounds import (
    DEFAULT_PARTITION,
    PARENT_TABLE,
    PartitionBounds,
    bounds_for,
    following,
    resolve_period,
)
from audit_db_core.partitions.creation import MAINTAINER_ROLE
from audit_db_core.partitions.results import (
    ArchiveResult,
    CreateResult,
    IndexStats,
    MaintenancePlan,
    MaintenanceResult,
    OptimizeReport,
    OptimizeStep,
    PartitionInfo,
    PartitionStats,
    PlannedAction,
    RestoreResult,
)
from audit_db_core.retention import PurgeDecision, PurgeReport
from audit_db_core.telemetry import lifecycle

# Private names other modules of the library imported from partitions.py before it became a package (integrity
# reads the registry in its caller's snapshot through _INFO_SELECT and _info): still importable from here.
from audit_db_core.partitions.bounds import _DAY_ANCHOR, _KEY, _month_start, _not_future, _utc  # noqa: F401
from audit_db_core.partitions.inspection import _INFO_FIELDS, _INFO_SELECT, _info  # noqa: F401
from audit_db_core.partitions.results import _elapsed_ms  # noqa: F401

if TYPE_CHECKING:
    from audit_db_core.archive import ArchiveStore

logger = logging.getLogger("audit_db_core.partitions")

__all__ = [
    "DEFAULT_PARTITION", "MAINTAINER_ROLE", "PARENT_TABLE", "ArchiveResult", "ArchivedHook", "ConnectionSource",
    "CreateResult", "IndexStats", "MaintenancePlan", "MaintenanceResult", "OptimizeReport", "OptimizeStep",
    "PartitionBounds", "PartitionInfo", "PartitionManager", "PartitionStats", "PlannedAction", "PurgeDecision",
    "PurgeReport", "RestoreResult", "bounds_for", "following", "resolve_period",
]


class ConnectionSource(Protocol):
    def connection(self, *, operation: str = ...) -> Any: ...

    def dedicated_connection(self, *, operation: str = ..., autocommit: bool = ...) -> Any: ...


class PartitionManager:
    """Creates, rescues, archives, purges, holds, optimizes and restores partitions.

    ``on_removed(bounds)`` is told when the rows of a period leave the log (detach, purge); its errors are logged,
    never raised. ``on_archived(conn, bounds, store, run_id=...)`` runs inside each archive's transaction to write
    companions next to the archive; its errors roll the archival back (see :class:`ArchivedHook`).
    """

    def __init__(
        self,
        connections: ConnectionSource,
        settings: AuditSettings,
        *,
        on_removed: Callable[[PartitionBounds], None] | None = None,
        on_archived: ArchivedHook | None = None,
    ) -> None:
        self._connections = connections
        self.settings = settings
        self._on_removed = on_removed  # rows of these bounds left the log (the query cache forgets them)
        self._on_archived = on_archived  # the database writes the period's integrity copy next to its archive
        self._deployment_id: uuid.UUID | None = None

    def _removed(self, info: PartitionInfo) -> None:
        if self._on_removed is not None:
            try:
                self._on_removed(PartitionBounds(info.name, info.start, info.end))
            except Exception:
                logger.exception("cache invalidation after removing %s failed", info.name)

    @property
    def interval(self) -> Period:
        return self.settings.partitions.interval

    @contextmanager
    def _conn(self, operation: str) -> Iterator[psycopg.Connection[Any]]:
        with self._connections.connection(operation=operation) as conn:
            yield conn

    def archive_store(self) -> ArchiveStore:
        """The configured :class:`ArchiveStore` (``AUDIT_ARCHIVE__ROOT_URI``)."""
        from audit_db_core.archive import ArchiveStore

        cfg = self.settings.archive
        if not cfg.root_uri:
            raise ConfigurationError("settings", [
                ("AUDIT_ARCHIVE__ROOT_URI", "is not set: archival, purge and restore need the archive root"),
            ])
        return ArchiveStore(cfg.root_uri, rows_per_file=cfg.rows_per_file, batch_rows=cfg.batch_rows,
                            deployment_id=self.deployment_id())

    def deployment_id(self) -> uuid.UUID:
        """The audit database's identity (:mod:`audit_db_core.deployment`), read once: archives live under it."""
        if self._deployment_id is None:
            from audit_db_core.deployment import read_deployment_id

            with self._conn("deployment_id") as conn:
                self._deployment_id = read_deployment_id(conn)
        return self._deployment_id

    # Each operation is a function of its module taking the manager first: bound here as a method.

    # -- registry and inspection (inspection.py) -----------------------------------------------------------------
    list_partitions = inspection.list_partitions
    find_partition = inspection.find_partition
    get = inspection.get
    _registered = staticmethod(inspection.registered)
    default_row_count = inspection.default_row_count
    default_ranges = inspection.default_ranges
    stats = inspection.stats
    archive_cutoff = inspection.archive_cutoff
    archivable_from = inspection.archivable_from
    ledger_consistency = inspection.ledger_consistency

    # Entry points that change partitions are traced and timed (audit_db_core.telemetry): a span
    # "<operation> audit_log" and audit.lifecycle.duration with its outcome. Reads (plan, inspection) are not.

    # -- creation (creation.py) ------------------------------------------------------------------------------------
    create_partition = lifecycle("create_partition")(creation.create_partition)
    premake = lifecycle("premake")(creation.premake)
    rescue_default = lifecycle("rescue_default")(creation.rescue_default)

    # -- archival, detach, restore (archival.py) -----------------------------------------------------------------
    archive = lifecycle("archive")(archival.archive)
    archive_eligible = lifecycle("archive_eligible")(archival.archive_eligible)
    detach_partition = lifecycle("detach_partition")(archival.detach_partition)
    restore = lifecycle("restore")(archival.restore)
    verify_archives = lifecycle("verify_archives")(archival.verify_archives)
    _archive_problems = staticmethod(archival.archive_problems)  # integrity checks archives with the same rules

    # -- retention purge and legal holds (purge.py) --------------------------------------------------------------
    purge = lifecycle("purge", dry_run_default=True)(purging.purge)
    drop_partition = lifecycle("drop_partition")(purging.drop_partition)
    hold = lifecycle("hold")(purging.hold)
    release = lifecycle("release")(purging.release)

    # -- maintenance (maintenance.py) ----------------------------------------------------------------------------
    run_maintenance = maintenance.run_maintenance
    plan = maintenance.plan
    optimize = lifecycle("optimize")(maintenance.optimize)
