"""What the lifecycle functions need of the manager they belong to — the seam that lets
:mod:`~audit_db_core.partitions.creation`, ``archival``, ``purge``, ``maintenance`` and ``inspection`` be written
against a type without importing :class:`~audit_db_core.partitions.PartitionManager`, which imports them (so the
package has no import cycle, not even one of type hints)."""

from __future__ import annotations

from collections.abc import Callable, Collection
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    import datetime as dt

    import psycopg

    from audit_db_core.archive import ArchiveStore
    from audit_db_core.config import AuditSettings, Period
    from audit_db_core.partitions.results import MaintenancePlan, PartitionInfo


class ManagerState(Protocol):
    """The :class:`~audit_db_core.partitions.PartitionManager` as its lifecycle functions see it."""

    settings: AuditSettings
    _connections: Any  # a ConnectionSource: connection(), dedicated_connection()
    _on_archived: Callable[..., None] | None

    @property
    def interval(self) -> Period: ...

    def _conn(self, operation: str) -> AbstractContextManager[psycopg.Connection[Any]]: ...

    def _removed(self, info: PartitionInfo) -> None: ...

    def archive_store(self) -> ArchiveStore: ...

    def plan(self, now: dt.datetime | None = None) -> MaintenancePlan: ...

    def verify_archives(
        self, *, record: bool | Literal["failures"] = False, run_id: str | None = None, full: bool = True,
        partitions: Collection[str] | None = None,
    ) -> list[tuple[str, list[str]]]: ...



