"""Where the rows of a period live, and reading them from there.

An event's row is in one of three places, by the state of its partition in the registry (``audit_partitions``):

- ``audit_log`` — attached partitions and DEFAULT (also rows that arrived after their partition was detached);
- the table of a detached partition (``archived`` and ``detached``, until the purge drops it);
- the archive of a purged partition (``purged``), until retention deletes the archive too — then the rows are
  gone for good (*expired*).

Integrity (sealing and verifying a window) and privacy (every row that names a data subject) read rows through
:class:`PeriodRows`, so both agree on where rows are.

Example::

    rows = PeriodRows(PartitionManager(connections, settings), conn)   # the registry as conn's snapshot sees it
    place = rows.locate(conn, window_start)
    for table in place.tables:
        for source, row in rows.table_rows(conn, table, STORED_COLUMNS, condition, params):
            ...
    if place.archive is not None:
        for source, row in rows.archive_rows(place.archive, since=window_start, until=window_end):
            ...
"""

from __future__ import annotations

import bisect
import datetime as dt
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from audit_db_core.errors import ArchiveError, ConfigurationError
from audit_db_core.partitions import _INFO_SELECT, PartitionInfo, PartitionManager, _info

if TYPE_CHECKING:
    from audit_db_core.archive import ArchiveManifest, ArchiveStore

logger = logging.getLogger("audit_db_core.period_rows")

#: The partitioned parent: attached partitions and DEFAULT.
LOG_TABLE = "audit_log"


@dataclass(frozen=True)
class Location:
    """Where the rows of one period are: ``tables`` to read (``audit_log`` first, then the detached partition's
    table), the purged partition whose ``archive`` holds them, and whether they ``expired`` (purged, and the
    archive deleted under retention)."""

    tables: tuple[str, ...]
    archive: PartitionInfo | None
    expired: bool


class PeriodRows:
    """The partition registry at one moment, and the rows of its periods wherever they live.

    With ``conn``, the registry is read on that connection (in its snapshot, when the caller holds one);
    without, on a connection of its own.
    """

    def __init__(self, partitions: PartitionManager, conn: psycopg.Connection[Any] | None = None) -> None:
        self._partitions = partitions
        if conn is not None:
            with conn.cursor(row_factory=dict_row) as cur:
                found = [_info(r) for r in cur.execute(_INFO_SELECT + sql.SQL(" ORDER BY range_start"))]
        else:
            found = partitions.list_partitions()
        self.parts = sorted(found, key=lambda p: p.start)
        self._starts = [p.start for p in self.parts]
        self._store: ArchiveStore | None = None
        self._store_error: str | None = None
        self._manifests: dict[str, ArchiveManifest | None] = {}

    # -- the registry --------------------------------------------------------------------------------------------

    def partition_of(self, ts: dt.datetime) -> PartitionInfo | None:
        """The registered partition whose range holds ``ts``, or None (DEFAULT, or not registered)."""
        i = bisect.bisect_right(self._starts, ts) - 1
        if i >= 0 and self.parts[i].start <= ts < self.parts[i].end:
            return self.parts[i]
        return None

    def detached(self, conn: psycopg.Connection[Any]) -> list[PartitionInfo]:
        """Archived partitions whose detached table still exists, oldest first."""
        return [p for p in self.parts if _is_detached_table(conn, p)]

    def purged(self) -> list[PartitionInfo]:
        """Purged partitions whose archive is kept (the only copy of their rows), oldest first."""
        return [p for p in self.parts if p.state == "purged" and p.archive_deleted_at is None]

    def locate(self, conn: psycopg.Connection[Any], start: dt.datetime) -> Location:
        """Where the rows of the period starting at ``start`` live (a period lies inside one partition)."""
        part = self.partition_of(start)
        if part is not None and _is_detached_table(conn, part):
            return Location((LOG_TABLE, part.name), None, False)
        if part is not None and part.state == "purged":
            expired = part.archive_deleted_at is not None
            return Location((LOG_TABLE,), None if expired else part, expired)
        return Location((LOG_TABLE,), None, False)

    # -- the archive store ---------------------------------------------------------------------------------------

    def store(self) -> ArchiveStore | None:
        """The configured archive store, or None when there is none (:attr:`store_error` says why)."""
        if self._store is None and self._store_error is None:
            try:
                self._store = self._partitions.archive_store()
            except ConfigurationError as exc:
                self._store_error = exc.message
        return self._store

    @property
    def store_error(self) -> str | None:
        """Why :meth:`store` is None (the setting that is missing), once it was asked for."""
        return self._store_error

    # -- reading -------------------------------------------------------------------------------------------------

    @staticmethod
    def table_rows(
        conn: psycopg.Connection[Any], table: str, columns: Iterable[str], where: sql.Composable,
        params: Sequence[Any] | Mapping[str, Any],
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """``(source, row)`` for the rows of ``table`` that match ``where``, in ``(event_time, event_id)`` order;
        ``source`` is the table (partition) each row is stored in."""
        stmt = sql.SQL("SELECT {}, tableoid::regclass::text AS audit_source FROM {} WHERE {}"
                       " ORDER BY event_time, event_id").format(
            sql.SQL(", ").join(sql.Identifier(c) for c in columns), sql.Identifier(table), where)
        with conn.cursor(row_factory=dict_row) as cur:
            for row in cur.execute(stmt, params):
                yield str(row.pop("audit_source")), row

    def archive_rows(
        self, part: PartitionInfo, *, since: dt.datetime | None = None, until: dt.datetime | None = None,
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """``(partition/file, row)`` for the archived rows of purged ``part`` with ``since <= event_time <
        until``. ConfigurationError without an archive store, ArchiveError when the archive has no manifest or
        a file cannot be read."""
        store = self.store()
        if store is None:
            raise ConfigurationError("settings", [("AUDIT_ARCHIVE__ROOT_URI", "is not set: rows of purged partitions "
                                                   "live in their archives")])
        if part.name not in self._manifests:
            self._manifests[part.name] = store.read_manifest(part.name)
        manifest = self._manifests[part.name]
        if manifest is None:
            raise ArchiveError(f"no archive manifest at {store.manifest_uri(part.name)}", operation="archive_read",
                               partition=part.name)
        for file_name, row in store.read_rows(manifest, since=since, until=until):
            yield f"{part.name}/{file_name}", row


def _is_detached_table(conn: psycopg.Connection[Any], part: PartitionInfo) -> bool:
    return part.state == "archived" and part.detached and conn.execute(
        "SELECT to_regclass(%s) IS NOT NULL", (part.name,)).fetchone() == (True,)
