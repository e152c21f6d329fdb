"""Archiving partitions: export to Parquet, verify against the database, make read-only (or detach) and mark
``archived`` — in that order, so the registry never claims an archive that is not there; then detach, restore
into a plain table for an investigation, and re-verify the archives kept.

Locks: the archive holds SHARE ROW EXCLUSIVE on the one partition for the export (late inserts into that period
wait; a second archiver of the same period waits), REPEATABLE READ so the export and its verification see one
snapshot. Detach takes ACCESS EXCLUSIVE on ``audit_log`` for the instant of the DETACH (catalog changes; no data is
read), with a lock timeout.

Example::

    pm = db.partitions
    pm.archive("2026-07")                           # export + verify + read-only, once past the active window
    pm.verify_archives()                            # [(partition, problems), …]: empty problems = verified
    pm.restore("2026-07").table                     # 'audit_restore_audit_log_p2026_07'
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any, Literal, Protocol

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from audit_db_core import ledger
from audit_db_core.errors import ArchiveError, AuditError, ComplianceError, PartitionError
from audit_db_core.partitions.bounds import PARENT_TABLE, PartitionBounds, _not_future, resolve_period
from audit_db_core.partitions.creation import MAINTAINER_ROLE
from audit_db_core.partitions.inspection import archive_cutoff, get, list_partitions, registered
from audit_db_core.partitions.results import ArchiveResult, PartitionInfo, RestoreResult, _elapsed_ms

if TYPE_CHECKING:
    from audit_db_core.archive import ArchiveManifest, ArchiveStore
    from audit_db_core.partitions.state import ManagerState

logger = logging.getLogger("audit_db_core.partitions")

#: Reads the log, the registry and the ledger (migration 0007_roles): restored tables are granted to it.
READER_ROLE = "audit_reader"


class ArchivedHook(Protocol):
    """``on_archived`` of :class:`~audit_db_core.partitions.PartitionManager`: called in the archive's transaction
    once the export verified and the registry row says ``archived``, to write companions next to the archive (the
    database's copy is :func:`audit_db_core.integrity.write_archive_copy`). An exception rolls the archival back:
    the companions are part of the archive."""

    def __call__(
        self, conn: psycopg.Connection[Any], bounds: PartitionBounds, store: ArchiveStore, *, run_id: str | None = None
    ) -> object: ...


# -- archive --------------------------------------------------------------------------------------------------------


def archive(
    pm: ManagerState,
    period: Any,
    *,
    now: dt.datetime | None = None,
    run_id: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> ArchiveResult:
    """Export the partition of ``period`` to Parquet, verify it against the database, then make the partition
    read-only (or detach it) and mark it ``archived`` — in that order, so the registry never claims an
    archive that is not there. Re-running on an archived period is a no-op."""
    b = resolve_period(period, pm.interval)
    get(pm, b)  # an unknown period is the caller's mistake, not a failed archival to ledger
    try:
        return _archive(pm, b, now, run_id, progress)
    except AuditError as exc:
        _record_failure(pm, "archive", b.name, exc, run_id)
        raise


def _archive(
    pm: ManagerState, b: PartitionBounds, now: dt.datetime | None, run_id: str | None,
    progress: Callable[[int], None] | None,
) -> ArchiveResult:
    from audit_db_core.archive import table_digest

    info = get(pm, b)
    if info.state != "active":
        return _already_archived(pm, info)
    _check_past_active_window(pm, info, now)
    store = pm.archive_store()
    store.check_writable()
    started = time.perf_counter()
    # autocommit, with an explicit BEGIN: the isolation level must be set by the transaction's first statement
    with pm._connections.dedicated_connection(operation="archive", autocommit=True) as conn:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        try:
            conn.execute(sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(sql.Identifier(b.name)))
            if registered(conn, b.name, lock=True).state != "active":  # type: ignore[union-attr]
                conn.execute("ROLLBACK")
                return _already_archived(pm, get(pm, b))
            rows, _first, _last, digest = table_digest(conn, b.name)
            manifest = _verified_export(conn, b, store, rows, digest, progress)
            size = _finish_archive(conn, b, manifest, store, rows, digest, started, run_id)
            if pm._on_archived is not None:  # companions (the signed digests) outlive the table next to its archive
                pm._on_archived(conn, b, store, run_id=run_id)
            conn.execute("COMMIT")
        except BaseException:
            if not conn.closed and not conn.broken:
                conn.execute("ROLLBACK")
            raise
    detached = _detach_if_configured(pm, b, run_id)
    ms = _elapsed_ms(started)
    logger.info("partition archived", extra={"audit": {"partition": b.name, "rows": rows, "ms": ms}})
    return ArchiveResult(
        partition=b.name, status="archived", archive_uri=store.manifest_uri(b.name), rows=rows, bytes=size,
        content_digest=digest, manifest_sha256=manifest.sha256, files=len(manifest.files),
        archive_bytes=sum(f.bytes for f in manifest.files), duration_ms=ms, detached=detached,
    )


def _check_past_active_window(pm: ManagerState, info: PartitionInfo, now: dt.datetime | None) -> None:
    cutoff = archive_cutoff(pm, _not_future(now, "archive"))
    if info.end > cutoff:
        raise PartitionError(
            f"{info.name} is still inside the active window ({pm.settings.partitions.active_window}); it can be "
            f"archived once it ends before {cutoff:%Y-%m-%d %H:%M} UTC",
            operation="archive", partition=info.name,
        )


def _verified_export(
    conn: psycopg.Connection[Any], b: PartitionBounds, store: ArchiveStore, rows: int, digest: str,
    progress: Callable[[int], None] | None,
) -> ArchiveManifest:
    """The archive of ``b`` holding exactly ``rows`` rows of ``digest``: the one already written by an earlier run
    over the same data, else a new export; ArchiveError when it does not verify."""
    manifest = store.read_manifest(b.name)
    if manifest is not None and (manifest.row_count, manifest.content_digest) != (rows, digest):
        store.delete(b.name)  # left by an earlier run over other data: not this partition's archive
        manifest = None
    if manifest is None:
        manifest = store.export(conn, b.name, partition=b.name, range_start=b.start, range_end=b.end,
                                progress=progress)
    check = store.verify(manifest, expected_rows=rows, expected_digest=digest)
    if not check.ok:
        raise ArchiveError(f"archive of {b.name} failed verification: {'; '.join(check.problems)}",
                           operation="archive", partition=b.name)
    return manifest


def _finish_archive(
    conn: psycopg.Connection[Any], b: PartitionBounds, manifest: ArchiveManifest, store: ArchiveStore,
    rows: int, digest: str, started: float, run_id: str | None,
) -> int:
    table = sql.Identifier(b.name)
    classes = [list(r) for r in conn.execute(
        sql.SQL("SELECT DISTINCT data_classification, retention_policy FROM {} ORDER BY 1, 2").format(table))]
    (size,) = conn.execute("SELECT pg_total_relation_size(%s::regclass)", (b.name,)).fetchone()  # type: ignore[misc]
    conn.execute(sql.SQL(
        "CREATE TRIGGER {} BEFORE INSERT ON {} FOR EACH ROW EXECUTE FUNCTION audit_reject_archived_insert()"
    ).format(sql.Identifier(f"{b.name}_archived"), table))
    conn.execute(
        "UPDATE audit_partitions SET state = 'archived', archive_uri = %s, archive_checksum = %s,"
        " archive_manifest_sha256 = %s, archive_verified_at = now(), archived_at = now(), row_count = %s,"
        " bytes = %s, retention_classes = %s, updated_at = now() WHERE partition_name = %s",
        (store.manifest_uri(b.name), digest, manifest.sha256, rows, size, Jsonb(classes), b.name),
    )
    ledger.record(conn, "archive", b.name, run_id=run_id, rows=rows, byte_count=size, checksum=digest,
                  duration_ms=_elapsed_ms(started),
                  details={"archive_uri": store.manifest_uri(b.name), "manifest_sha256": manifest.sha256,
                           "files": len(manifest.files), "archive_bytes": sum(f.bytes for f in manifest.files)})
    return int(size)


def _already_archived(pm: ManagerState, info: PartitionInfo) -> ArchiveResult:
    if info.state == "archived":
        _detach_if_configured(pm, resolve_period(info.start, pm.interval), None)
    return ArchiveResult(
        partition=info.name, status=f"already_{info.state}", archive_uri=info.archive_uri or "",
        rows=info.row_count or 0, bytes=info.bytes or 0, content_digest=info.archive_checksum or "",
        manifest_sha256=info.archive_manifest_sha256 or "", files=0, archive_bytes=0, duration_ms=0.0,
        detached=info.detached,
    )


def _detach_if_configured(pm: ManagerState, b: PartitionBounds, run_id: str | None) -> bool:
    if pm.settings.archive.mode != "detach":
        return False
    return detach_partition(pm, b, run_id=run_id)


def archive_eligible(
    pm: ManagerState, *, now: dt.datetime | None = None, run_id: str | None = None
) -> list[ArchiveResult]:
    """Archive every active partition past the active window, oldest first."""
    return [archive(pm, a.start, now=now, run_id=run_id) for a in pm.plan(now).of("archive")]


def _record_failure(pm: ManagerState, operation: str, partition: str, exc: AuditError, run_id: str | None) -> None:
    try:
        with pm._conn(operation) as conn, conn.transaction():
            ledger.record(conn, operation, partition, "failed", run_id=run_id, details=exc.to_dict())
    except AuditError:  # the database may be the reason: the original error is what the caller needs
        logger.warning("could not record the failed %s of %s in the ledger", operation, partition)


# -- detach and restore ---------------------------------------------------------------------------------------------


def detach_partition(pm: ManagerState, period: Any, *, run_id: str | None = None) -> bool:
    """Detach an *archived* partition from ``audit_log``. Returns False when it was detached already. An
    active partition is refused: detaching would hide live data. PostgreSQL cannot detach CONCURRENTLY while a
    DEFAULT partition exists, so this takes ACCESS EXCLUSIVE on ``audit_log`` for the instant of the DETACH
    (a catalog change, no data is read), waiting at most 30 s for it."""
    info = get(pm, period)
    if info.state != "archived":
        raise ComplianceError(f"{info.name} is {info.state}: only an archived partition may be detached",
                              operation="detach_partition", partition=info.name)
    if info.detached:
        return False
    started = time.perf_counter()
    with pm._connections.dedicated_connection(operation="detach_partition", autocommit=True) as conn:
        attached = conn.execute(
            "SELECT 1 FROM pg_inherits WHERE inhrelid = to_regclass(%s) AND inhparent = %s::regclass",
            (info.name, PARENT_TABLE),
        ).fetchone()
        with conn.transaction():
            if attached:
                conn.execute("SET LOCAL lock_timeout = '30s'")
                conn.execute(sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(
                    sql.Identifier(PARENT_TABLE), sql.Identifier(info.name)))
            conn.execute("UPDATE audit_partitions SET detached = true, updated_at = now() WHERE partition_name = %s",
                         (info.name,))
            ledger.record(conn, "detach", info.name, run_id=run_id, duration_ms=_elapsed_ms(started))
    pm._removed(info)
    return True


def restore(pm: ManagerState, period: Any, *, table: str | None = None, run_id: str | None = None) -> RestoreResult:
    """Load an archived period back from its archive into a plain table (``audit_restore_<partition>`` by
    default) for an investigation. The archive is verified first; the restored rows' digest must match.

    The table is append-only like the log and readable by ``audit_reader``. Once the period has left the log
    (purged, or detached), ``AuditQuery(..., include_restored=True)`` reads it along with ``audit_log``; dropping
    the table (``DROP TABLE``, as ``audit_maintainer``) ends the investigation."""
    from audit_db_core.archive import table_digest

    info = get(pm, period)
    if info.state == "active" or not info.archive_uri:
        raise PartitionError(f"{info.name} has no archive (state {info.state})", operation="restore",
                             partition=info.name)
    store = pm.archive_store()
    manifest = store.read_manifest(info.name)
    if manifest is None or manifest.sha256 != info.archive_manifest_sha256:
        raise ArchiveError(f"the archive of {info.name} is missing or its manifest changed ({info.archive_uri})",
                           operation="restore", partition=info.name)
    target = table or f"audit_restore_{info.name}"
    with pm._connections.dedicated_connection(operation="restore") as conn, conn.transaction():
        if conn.execute("SELECT to_regclass(%s)", (target,)).fetchone() != (None,):
            rows, _a, _b, digest = table_digest(conn, target)
            if digest == manifest.content_digest:
                return RestoreResult(info.name, target, rows, "already_restored")
            raise PartitionError(f"table {target} exists and does not hold this archive; choose another table",
                                 operation="restore", partition=info.name)
        rows = store.restore(conn, manifest, target)
        _protect_restored(conn, target)
        ledger.record(conn, "restore", info.name, run_id=run_id, rows=rows, checksum=manifest.content_digest,
                      details={"table": target})
    return RestoreResult(info.name, target, rows, "restored")


def _protect_restored(conn: psycopg.Connection[Any], table: str) -> None:
    """Restored rows are served as audit events (``include_restored``): as immutable as the log's, owned by the
    maintainer, and readable by the role that reads the log for reports and audits."""
    ident = sql.Identifier(table)
    conn.execute(sql.SQL(
        "CREATE TRIGGER {} BEFORE UPDATE OR DELETE ON {} FOR EACH ROW EXECUTE FUNCTION audit_reject_modification()"
    ).format(sql.Identifier("audit_restore_append_only"), ident))
    conn.execute(sql.SQL(
        "CREATE TRIGGER {} BEFORE TRUNCATE ON {} FOR EACH STATEMENT EXECUTE FUNCTION audit_reject_modification()"
    ).format(sql.Identifier("audit_restore_no_truncate"), ident))
    conn.execute(sql.SQL("ALTER TABLE {} OWNER TO {}").format(ident, sql.Identifier(MAINTAINER_ROLE)))
    conn.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(ident, sql.Identifier(READER_ROLE)))


# -- verification of the archives kept ------------------------------------------------------------------------------


def archive_problems(p: PartitionInfo, store: ArchiveStore, *, full: bool = True) -> list[str]:
    """What is wrong with the archive of registered partition ``p`` (empty: it verifies against the registry's
    manifest SHA-256, row count and content digest). ``full=False`` reads the manifest only (a few KB, whatever
    the archive's size): present, well-formed, this deployment's, and the one recorded at archival."""
    manifest = store.read_manifest(p.name)
    if manifest is None:
        return [f"no manifest at {store.manifest_uri(p.name)}"]
    if manifest.sha256 != p.archive_manifest_sha256:
        return ["manifest differs from the one recorded at archival"]
    if not full:
        return []
    check = store.verify(manifest, expected_rows=p.row_count, expected_digest=p.archive_checksum)
    return [] if check.ok else list(check.problems)


def verify_archives(
    pm: ManagerState,
    *,
    record: bool | Literal["failures"] = False,
    run_id: str | None = None,
    full: bool = True,
    partitions: Collection[str] | None = None,
) -> list[tuple[str, list[str]]]:
    """Re-read the archive of every archived partition (and of every purged one whose archive is still kept)
    and verify it against the registry's row count, content digest and manifest SHA-256.

    Returns ``(partition, problems)`` for every archive checked, oldest first; an empty ``problems`` list
    means it verified. With ``record=True`` each verification is appended to the ledger (operation
    ``verify``, outcome ``ok`` or ``failed``); ``record="failures"`` appends the failed ones only.
    ``full=False`` checks the manifests only (see :func:`archive_problems`); ``partitions`` limits the check to
    those names. Raises :class:`ConfigurationError` when archives exist but ``AUDIT_ARCHIVE__ROOT_URI`` is not
    set (they cannot be read).

    Example::

        bad = [(name, problems) for name, problems in pm.verify_archives() if problems]
        pm.verify_archives(full=False)                          # manifests only: cheap, whatever the sizes
    """
    archived = [p for p in list_partitions(pm)
                if p.state in ("archived", "purged") and p.archive_uri and p.archive_deleted_at is None
                and (partitions is None or p.name in partitions)]
    if not archived:
        return []
    store = pm.archive_store()
    out: list[tuple[str, list[str]]] = []
    for p in archived:
        started = time.perf_counter()
        try:
            problems = archive_problems(p, store, full=full)
        except AuditError as exc:  # a malformed manifest or an unreadable root: this archive does not verify
            problems = [exc.message]
        out.append((p.name, problems))
        if record is True or (record == "failures" and problems):
            with pm._conn("verify_archive") as conn, conn.transaction():
                ledger.record(conn, "verify", p.name, "failed" if problems else "ok", run_id=run_id,
                              rows=p.row_count, checksum=p.archive_checksum, duration_ms=_elapsed_ms(started),
                              details={"archive_uri": p.archive_uri, "problems": problems,
                                       **({} if full else {"manifest_only": True})})
    return out
