"""What partition operations return: registry rows, creation / archival / restore results, maintenance plans,
measured statistics and optimize reports — plain frozen dataclasses with ``to_dict()`` where a caller serialises
them (Dagster metadata, ``--json`` output).

Example::

    result = db.partitions.create_partition("2026-11")
    result.created, result.partition.state, result.duration_ms     # True, 'active', 12.3
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class PartitionInfo:
    """One registry row."""

    name: str
    start: dt.datetime
    end: dt.datetime
    state: str
    legal_hold: bool
    legal_hold_reason: str | None
    row_count: int | None
    bytes: int | None
    archive_uri: str | None
    archive_checksum: str | None
    archive_manifest_sha256: str | None
    archived_at: dt.datetime | None
    purged_at: dt.datetime | None
    detached: bool
    retention_classes: list[list[str]] | None
    archive_deleted_at: dt.datetime | None
    created_at: dt.datetime | None

    def to_dict(self) -> dict[str, Any]:
        return {k: (v.isoformat() if isinstance(v, dt.datetime) else v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class CreateResult:
    partition: PartitionInfo
    created: bool
    rescued_rows: int = 0
    duration_ms: float = 0.0

    @property
    def name(self) -> str:
        return self.partition.name


@dataclass(frozen=True)
class MaintenanceResult:
    """What one :meth:`~audit_db_core.partitions.PartitionManager.run_maintenance` pass found and did.

    ``window``: the current period and the premake window, in order (``created`` where this pass made it);
    ``rescued``: partitions created for periods whose rows sat in DEFAULT; ``nothing_to_do``: the pass's one check
    found every partition of the window registered and no row in DEFAULT that a new partition could take, so it
    changed nothing (and took no lock)."""

    window: list[CreateResult]
    rescued: list[CreateResult]
    nothing_to_do: bool
    duration_ms: float = 0.0

    @property
    def created(self) -> list[CreateResult]:
        """The partitions this pass created (premade or for rescued rows)."""
        return [r for r in (*self.window, *self.rescued) if r.created]

    @property
    def rescued_rows(self) -> int:
        return sum(r.rescued_rows for r in (*self.window, *self.rescued))

    def to_dict(self) -> dict[str, Any]:
        def row(r: CreateResult) -> dict[str, Any]:
            return {"name": r.name, "created": r.created, "rescued_rows": r.rescued_rows, "duration_ms": r.duration_ms}

        return {"nothing_to_do": self.nothing_to_do, "duration_ms": self.duration_ms,
                "window": [row(r) for r in self.window], "rescued": [row(r) for r in self.rescued]}


@dataclass(frozen=True)
class ArchiveResult:
    partition: str
    status: str  # "archived" | "already_archived"
    archive_uri: str
    rows: int
    bytes: int
    content_digest: str
    manifest_sha256: str
    files: int
    archive_bytes: int
    duration_ms: float
    detached: bool


@dataclass(frozen=True)
class RestoreResult:
    partition: str
    table: str
    rows: int
    status: str  # "restored" | "already_restored"


@dataclass(frozen=True)
class PlannedAction:
    kind: str  # create | rescue | archive | purge | delete_archive | optimize | late
    partition: str
    start: dt.datetime
    end: dt.datetime
    reason: str
    rows: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: (v.isoformat() if isinstance(v, dt.datetime) else v) for k, v in asdict(self).items()}


@dataclass
class MaintenancePlan:
    now: dt.datetime
    actions: list[PlannedAction] = field(default_factory=list)

    def of(self, kind: str) -> list[PlannedAction]:
        return [a for a in self.actions if a.kind == kind]

    def to_dict(self) -> dict[str, Any]:
        return {"now": self.now.isoformat(), "actions": [a.to_dict() for a in self.actions]}


@dataclass(frozen=True)
class IndexStats:
    """One index of a partition, from the catalog."""

    name: str
    method: str  # btree | brin | gin | …
    bytes: int
    valid: bool


@dataclass(frozen=True)
class PartitionStats:
    """What a partition holds now, measured in the database (not the registry's last recorded numbers).

    ``exists`` is False once the table is gone (purged, or detached and dropped elsewhere): ``rows`` then is the
    registry's last count and ``bytes`` 0."""

    name: str
    rows: int
    bytes: int
    indexes: list[str]
    index_details: list[IndexStats] = field(default_factory=list)
    state: str = "active"
    exists: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class OptimizeStep:
    partition: str
    action: str  # analyze | brin_summarize | reindex | stats
    target: str
    duration_ms: float
    detail: str = ""


@dataclass
class OptimizeReport:
    steps: list[OptimizeStep] = field(default_factory=list)
    bloat_check: str = "pgstattuple"

    def to_dict(self) -> dict[str, Any]:
        return {"bloat_check": self.bloat_check, "steps": [asdict(s) for s in self.steps]}


def _elapsed_ms(started: float) -> float:
    """Milliseconds since ``started`` (a ``time.perf_counter()`` reading): the ``duration_ms`` results and ledger
    rows carry."""
    return round((time.perf_counter() - started) * 1000, 3)
