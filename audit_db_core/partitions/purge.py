"""Retention purge and legal holds: which partitions may go and why, dropping them, deleting archives past the
archive retention, and the holds that stop both.

The rules are those of :mod:`audit_db_core.retention`: only an archived partition whose archive verifies again,
past its retention, outside the active window and not on hold is dropped. The drop takes ACCESS EXCLUSIVE on
``audit_log`` for the instant of the DROP (a catalog change; no data is read), with a lock timeout.

Example::

    pm = db.partitions
    pm.purge(dry_run=True).decisions                # what a purge would drop, and why
    pm.hold("2026-07", "case 2026-117 (subpoena)")  # never purged, its archive never deleted, until released
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import TYPE_CHECKING, Any

from psycopg import sql

from audit_db_core import ledger
from audit_db_core.errors import ArchiveError, ComplianceError, PartitionError
from audit_db_core.partitions.archival import archive_problems
from audit_db_core.partitions.bounds import _not_future, _utc, resolve_period
from audit_db_core.partitions.inspection import archive_cutoff, get, list_partitions, registered
from audit_db_core.partitions.results import PartitionInfo, _elapsed_ms
from audit_db_core.retention import (
    PurgeDecision,
    PurgeReport,
    add_period,
    check_against_active_window,
    retention_for,
)

if TYPE_CHECKING:
    from audit_db_core.archive import ArchiveStore
    from audit_db_core.config import RetentionSettings
    from audit_db_core.partitions.state import ManagerState

logger = logging.getLogger("audit_db_core.partitions")


# -- purge ----------------------------------------------------------------------------------------------------------


def purge(
    pm: ManagerState, now: dt.datetime | None = None, *, dry_run: bool = True, run_id: str | None = None
) -> PurgeReport:
    """Drop partitions past retention whose archive verifies and that are not on hold; then delete archives
    past the archive retention. ``dry_run`` (the default) only reports what would go and why."""
    now = _utc(now or dt.datetime.now(dt.UTC)) if dry_run else _not_future(now, "purge")
    check_against_active_window(pm.settings.retention, pm.settings.partitions.active_window)
    report = PurgeReport(now=now, dry_run=dry_run, decisions=purge_decisions(pm, now, verify=True))
    if dry_run:
        return report
    for d in report.of("purge"):
        _drop(pm, d, run_id)  # each archive was just verified for this decision
        report.purged.append(d.partition)
    for d in report.of("delete_archive"):
        _delete_archive(pm, d.partition, run_id)
        report.archives_deleted.append(d.partition)
    return report


def purge_decisions(
    pm: ManagerState, now: dt.datetime, *, verify: bool, only: str | None = None
) -> list[PurgeDecision]:
    """What a purge at ``now`` does with each registered partition (``only``: with that one), and why. With
    ``verify`` a partition is only purged when its archive is read back and verifies now."""
    cutoff = archive_cutoff(pm, now)
    # A purge never drops a partition without reading its archive back: no archive root, no purge.
    store = pm.archive_store() if verify else None
    decisions = []
    for p in list_partitions(pm):
        if only is not None and p.name != only:
            continue
        if p.state == "purged":
            if p.archive_deleted_at is None:
                decisions.append(_archive_decision(p, now, pm.settings.retention))
        else:
            decisions.append(_partition_decision(p, now, cutoff, pm.settings.retention, store))
    return decisions


def _decision(p: PartitionInfo, action: str, reason: str, until: dt.datetime | None = None) -> PurgeDecision:
    return PurgeDecision(p.name, action, reason, p.start, p.end, until, p.row_count)


def _archive_decision(p: PartitionInfo, now: dt.datetime, retention: RetentionSettings) -> PurgeDecision:
    """A purged partition's archive: deleted once the archive retention passed, unless held."""
    until = add_period(p.purged_at or p.end, retention.archive_retention)
    if p.legal_hold:
        return _decision(p, "keep", f"archive kept: legal hold ({p.legal_hold_reason})")
    if now >= until:
        return _decision(p, "delete_archive", f"archive retention ({retention.archive_retention}) passed on "
                         f"{until:%Y-%m-%d}", until)
    return _decision(p, "keep", f"archive retained until {until:%Y-%m-%d}", until)


def _partition_decision(
    p: PartitionInfo, now: dt.datetime, cutoff: dt.datetime, retention: RetentionSettings,
    store: ArchiveStore | None,
) -> PurgeDecision:
    """A partition still in the database: purged once archived, past retention, outside the active window, not
    held, and (with a ``store``) its archive verifies now."""
    until = add_period(p.end, retention_for(p.retention_classes, retention))
    if p.state != "archived":
        return _decision(p, "keep", "not archived yet" + (" (inside the active window)" if p.end > cutoff else ""),
                         until)
    if p.legal_hold:
        return _decision(p, "keep", f"legal hold: {p.legal_hold_reason}", until)
    if now < until:
        return _decision(p, "keep", f"retained until {until:%Y-%m-%d}", until)
    if p.end > cutoff:
        return _decision(p, "keep", "inside the active window", until)
    if store is None:
        return _decision(p, "purge", f"retention passed on {until:%Y-%m-%d}; the archive is verified at purge time",
                         until)
    problem = _archive_problem(p, store)
    if problem:
        return _decision(p, "keep", f"archive does not verify: {problem}", until)
    return _decision(p, "purge", f"retention passed on {until:%Y-%m-%d}; archive verified", until)


def _archive_problem(p: PartitionInfo, store: ArchiveStore) -> str | None:
    problems = archive_problems(p, store)
    return "; ".join(problems) if problems else None


def drop_partition(
    pm: ManagerState, period: Any, *, now: dt.datetime | None = None, run_id: str | None = None
) -> None:
    """Drop one partition — only when it is archived, its archive verifies now, it is past retention and
    not on hold (the same rules as :meth:`purge`); anything else is a ComplianceError and changes nothing."""
    info = get(pm, period)
    now = _not_future(now, "drop_partition")
    if info.state != "archived":
        raise ComplianceError(f"{info.name} may not be dropped: it is {info.state}, not archived",
                              operation="drop_partition", partition=info.name)
    decision = next(iter(purge_decisions(pm, now, verify=True, only=info.name)), None)
    if decision is None or decision.action != "purge":
        reason = decision.reason if decision else f"state {info.state}"
        raise ComplianceError(f"{info.name} may not be dropped: {reason}", operation="drop_partition",
                              partition=info.name)
    _drop(pm, decision, run_id)


def _drop(pm: ManagerState, decision: PurgeDecision, run_id: str | None) -> None:
    started = time.perf_counter()
    with pm._conn("drop_partition") as conn, conn.transaction():
        info = registered(conn, decision.partition, lock=True)
        if info is None or info.legal_hold or info.state != "archived":
            raise ComplianceError(f"{decision.partition} changed while purging (hold or state); nothing dropped",
                                  operation="drop_partition", partition=decision.partition)
        conn.execute("SET LOCAL lock_timeout = '30s'")
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(info.name)))
        conn.execute("UPDATE audit_partitions SET state = 'purged', purged_at = now(), updated_at = now()"
                     " WHERE partition_name = %s", (info.name,))
        ledger.record(conn, "purge", info.name, run_id=run_id, rows=info.row_count, byte_count=info.bytes,
                      checksum=info.archive_checksum, duration_ms=_elapsed_ms(started),
                      details={"reason": decision.reason, "archive_uri": info.archive_uri})
    logger.info("partition purged", extra={"audit": {"partition": info.name, "rows": info.row_count}})
    pm._removed(info)


def _delete_archive(pm: ManagerState, name: str, run_id: str | None) -> None:
    """The registry and the ledger say the archive is gone, committed, before a file is removed: a failed commit
    leaves the archive whole (after a purge it is the only copy). A removal that fails after the commit leaves
    files behind, never a registry that claims an archive which no longer exists; it is logged and raised."""
    store = pm.archive_store()
    with pm._conn("delete_archive") as conn, conn.transaction():
        locked = registered(conn, name, lock=True)
        if locked is None or locked.legal_hold or locked.state != "purged":
            return
        conn.execute("UPDATE audit_partitions SET archive_deleted_at = now(), updated_at = now()"
                     " WHERE partition_name = %s", (name,))
        ledger.record(conn, "delete_archive", name, run_id=run_id, checksum=locked.archive_checksum,
                      details={"archive_uri": locked.archive_uri})
    try:
        store.delete(name)
    except ArchiveError as exc:
        logger.warning("archive of %s recorded as deleted but its files remain: %s", name, exc.message,
                       extra={"audit": exc.to_dict()})
        raise


# -- legal holds ----------------------------------------------------------------------------------------------------


def hold(pm: ManagerState, period: Any, reason: str, *, run_id: str | None = None) -> PartitionInfo:
    """Place a legal hold: the period is never purged and its archive never deleted until released."""
    if not isinstance(reason, str) or not reason.strip():
        raise PartitionError("a legal hold needs a reason (case number, requester)", operation="hold")
    return _set_hold(pm, period, True, reason.strip(), run_id)


def release(pm: ManagerState, period: Any, reason: str, *, run_id: str | None = None) -> PartitionInfo:
    """Release a legal hold (the reason is kept in the ledger)."""
    if not isinstance(reason, str) or not reason.strip():
        raise PartitionError("releasing a legal hold needs a reason", operation="release")
    return _set_hold(pm, period, False, reason.strip(), run_id)


def _set_hold(pm: ManagerState, period: Any, on: bool, reason: str, run_id: str | None) -> PartitionInfo:
    b = resolve_period(period, pm.interval)
    op = "hold" if on else "release"
    with pm._conn(op) as conn, conn.transaction():
        info = registered(conn, b.name, lock=True)
        if info is None:
            raise PartitionError(f"no partition {b.name} is registered", operation=op, partition=b.name)
        conn.execute(
            "UPDATE audit_partitions SET legal_hold = %s, legal_hold_reason = %s, updated_at = now()"
            " WHERE partition_name = %s",
            (on, reason if on else None, b.name),
        )
        ledger.record(conn, op, b.name, run_id=run_id, details={"reason": reason})
        out = registered(conn, b.name)
    assert out is not None
    return out
