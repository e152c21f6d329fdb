"""Verification: the chain against its signatures, the ledger and published anchors; every row of the checked
windows against the leaf its digest sealed; the archives against their manifests and their signed digest copies.
And inclusion proofs for single events, which an auditor checks offline with :func:`~audit_db_core.integrity.model
.verify_proof`.

Verification never raises for tampering: each finding is an :class:`~audit_db_core.integrity.model.IntegrityProblem`
in the report, with its kind and location.

Example::

    report = verify(connections, partitions, trusted_keys, lo=None, hi=None)
    report.status, [str(p) for p in report.problems]
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import time
import uuid
from typing import Any

import psycopg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from psycopg import sql

from audit_db_core import ledger
from audit_db_core.errors import AuditError, AuditValidationError
from audit_db_core.events import format_time
from audit_db_core.integrity.model import (
    ARCHIVE_COPY_NAME,
    Digest,
    InclusionProof,
    IntegrityProblem,
    Leaf,
    VerificationReport,
    _aware,
    _elapsed,
    _leaf_problems,
    check_chain,
    read_archive_copy,
)
from audit_db_core.integrity.storage import _Row, load_digests, load_leaves, window_rows
from audit_db_core.merkle import inclusion_path
from audit_db_core.partitions import PartitionInfo, PartitionManager
from audit_db_core.period_rows import PeriodRows

logger = logging.getLogger("audit_db_core.integrity.verification")

_Key = tuple[dt.datetime, uuid.UUID]
_Window = tuple[dt.datetime, dt.datetime]


def verify(
    connections: Any, partitions: PartitionManager, trusted: dict[str, Ed25519PublicKey], lo: dt.datetime | None,
    hi: dt.datetime | None, *, rows: bool = True, anchors: list[tuple[int, bytes]] | None = None,
    run_id: str | None = None, record: bool = True,
) -> VerificationReport:
    """One verification (see :meth:`audit_db_core.integrity.IntegrityManager.verify`), recorded in the ledger
    unless ``record`` is false."""
    started = time.perf_counter()
    with connections.dedicated_connection(operation="integrity_verify", autocommit=True) as conn:
        report = _Verification(conn, partitions, trusted).run(lo, hi, rows, anchors or [])
        report.duration_ms = _elapsed(started)
        if record:
            _record(conn, report, run_id)
    if report.problems:
        logger.warning("integrity verification failed: %s", report.summary())
    return report


def _record(conn: psycopg.Connection[Any], report: VerificationReport, run_id: str | None) -> None:
    outcome = {"verified": "ok", "failed": "failed"}.get(report.status, "skipped")
    try:
        ledger.record(conn, "integrity_verify", None, outcome,
                      run_id=run_id, rows=report.events_checked, checksum=report.head_digest_hash,
                      duration_ms=report.duration_ms,
                      details={"status": report.status, "since": report.since, "until": report.until,
                               "problems": len(report.problems),
                               "first_problems": [str(p) for p in report.problems[:20]],
                               "unchecked": report.unchecked, "digests": report.digests_checked,
                               "windows": report.windows_checked,
                               "pending_events": report.pending_events})
    except psycopg.errors.InsufficientPrivilege:
        # A read-only auditor (audit_reader) may verify; the outcome it found stands without the entry.
        logger.warning("integrity verification not recorded: this role may not write the ledger")


def parse_anchor(value: Any) -> tuple[int, bytes]:
    """``(chain_seq, digest_hash)`` from ``"CHAIN_SEQ:HEX"`` or a ``(chain_seq, hex)`` pair; AuditValidationError
    naming ``anchor`` otherwise."""
    try:
        if isinstance(value, str):
            seq_text, hash_text = value.split(":", 1)
            seq, raw = int(seq_text), bytes.fromhex(hash_text)
        else:
            seq, raw = int(value[0]), bytes.fromhex(value[1])
    except (ValueError, TypeError, IndexError):
        raise AuditValidationError("verify", [("anchor", "must be CHAIN_SEQ:DIGEST_HASH (hex)")]) from None
    if len(raw) != 32 or seq < 1:
        raise AuditValidationError("verify", [("anchor", "must be CHAIN_SEQ:DIGEST_HASH with 64 hex digits")])
    return seq, raw


class _Verification:
    """The steps of one verification, on one (autocommit) connection."""

    def __init__(self, conn: psycopg.Connection[Any], partitions: PartitionManager,
                 trusted: dict[str, Ed25519PublicKey]) -> None:
        self.conn = conn
        self.partitions = partitions
        self.trusted = trusted

    def run(self, lo: dt.datetime | None, hi: dt.datetime | None, check_rows: bool,
            anchors: list[tuple[int, bytes]]) -> VerificationReport:
        (now,) = self.conn.execute("SELECT now()").fetchone()  # type: ignore[misc]
        digests = load_digests(self.conn)
        by_seq = {d.chain_seq: d for d in digests}
        problems = check_chain(digests, self.trusted)
        problems += self._ledger_problems(by_seq)
        problems += _anchor_problems(by_seq, anchors)
        report = VerificationReport("verified", lo, hi, digests_checked=len(digests), rows_checked=check_rows)
        if not digests:
            report.unchecked.append("nothing has been sealed yet")
            report.problems = problems
            report.status = "failed" if problems else "incomplete"
            return report
        in_range = self._windows_in_range(report, digests)
        assert report.since is not None and report.until is not None and report.head_cutoff is not None
        periods = PeriodRows(self.partitions)
        if check_rows:
            for (w_start, w_end), ds in in_range:
                report.windows_checked += 1
                problems += self._check_window(periods, w_start, w_end, ds, report.head_cutoff, now, report)
        problems += self._archive_problems(periods, report.since, report.until, by_seq, report)
        report.problems = problems
        report.status = "failed" if problems else ("incomplete" if report.unchecked else "verified")
        return report

    @staticmethod
    def _windows_in_range(report: VerificationReport, digests: list[Digest]) -> list[tuple[_Window, list[Digest]]]:
        """Fill in the report's head and range (the sealed windows when none was given, and what of the range is
        not sealed); the windows overlapping the range with their digests, oldest first."""
        head = digests[-1]
        report.head_chain_seq, report.head_digest_hash = head.chain_seq, head.digest_hash.hex()
        report.head_cutoff = max(d.ingested_to for d in digests)
        windows: dict[_Window, list[Digest]] = {}
        for d in digests:
            windows.setdefault(d.window, []).append(d)
        first, last = min(w[0] for w in windows), max(w[1] for w in windows)
        report.since = lo = report.since or first
        report.until = hi = report.until or last
        if lo < first:
            report.unchecked.append(f"[{format_time(lo)}, {format_time(min(first, hi))}) is before the first sealed "
                                    "window")
        if hi > last:
            report.unchecked.append(f"[{format_time(max(last, lo))}, {format_time(hi)}) is not sealed yet")
        return [(w, ds) for w, ds in sorted(windows.items()) if w[0] < hi and w[1] > lo]

    # -- one window: its rows against its leaves ---------------------------------------------------------------

    def _check_window(
        self, periods: PeriodRows, w_start: dt.datetime, w_end: dt.datetime, ds: list[Digest],
        cutoff: dt.datetime, now: dt.datetime, report: VerificationReport,
    ) -> list[IntegrityProblem]:
        sealed, problems = self._sealed_leaves(w_start, ds)
        rows, error, expired = window_rows(periods, self.conn, w_start, w_end, full=True)
        if expired:
            report.expired_windows += 1
            return problems
        if error:
            part = periods.partition_of(w_start)
            if periods.store_error:
                report.unchecked.append(f"window {format_time(w_start)[:10]} ({part.name if part else '?'}): "
                                        f"{periods.store_error}")
            else:
                problems.append(IntegrityProblem("archive", f"the window's rows cannot be read from the archive: "
                                                 f"{error}", w_start, source=part.name if part else None))
            return problems
        seen: set[_Key] = set()
        for row in rows:
            where = {"window_start": w_start, "event_time": row.event_time, "event_id": str(row.event_id),
                     "source": row.source}
            if row.key in seen:
                problems.append(IntegrityProblem("inserted_row", "a second row with the key of an event already "
                                                 "seen in another table", **where))
                continue
            seen.add(row.key)
            report.events_checked += 1
            problems += _row_problems(row, sealed.get(row.key), cutoff, now, report, where)
        problems += _deleted_rows(periods, w_start, sealed, seen)
        return problems

    def _sealed_leaves(
        self, w_start: dt.datetime, ds: list[Digest],
    ) -> tuple[dict[_Key, tuple[Leaf, Digest]], list[IntegrityProblem]]:
        """``event key -> (leaf, digest)`` of the window's digests, and what is wrong with their stored leaves."""
        problems: list[IntegrityProblem] = []
        leaves_by_seq = load_leaves(self.conn, [d.chain_seq for d in ds])
        sealed: dict[_Key, tuple[Leaf, Digest]] = {}
        for d in ds:
            leaves = leaves_by_seq[d.chain_seq]
            problems += _leaf_problems(d, leaves, "audit_digest_leaves")
            for leaf in leaves:
                if leaf.key in sealed:
                    problems.append(IntegrityProblem(
                        "digest_leaves", f"the event is sealed twice (#{sealed[leaf.key][1].chain_seq} and "
                        f"#{d.chain_seq})", w_start, leaf.event_time, str(leaf.event_id), d.chain_seq,
                        "audit_digest_leaves"))
                sealed.setdefault(leaf.key, (leaf, d))
        return sealed, problems

    # -- the ledger and the archives ---------------------------------------------------------------------------

    def _ledger_problems(self, by_seq: dict[int, Digest]) -> list[IntegrityProblem]:
        """Every successful seal recorded the chain head it left: each must still be in the chain (a truncated tail
        is otherwise invisible)."""
        problems = []
        for seq_text, checksum, occurred in self.conn.execute(
            "SELECT details->>'head_chain_seq', checksum, occurred_at FROM audit_lifecycle_ledger"
            " WHERE operation = 'seal' AND outcome = 'ok' AND checksum IS NOT NULL ORDER BY entry_id"
        ):
            try:
                seq = int(seq_text)
            except (TypeError, ValueError):
                continue
            d = by_seq.get(seq)
            if d is None:
                problems.append(IntegrityProblem(
                    "missing_digest", f"the ledger records digest #{seq} (sealed {format_time(occurred)}), which is "
                    "not in the chain", chain_seq=seq, source="lifecycle ledger"))
            elif d.digest_hash.hex() != checksum:
                problems.append(IntegrityProblem(
                    "forged_digest", f"{d.label()} differs from the digest hash the ledger recorded when it was sealed",
                    chain_seq=seq, window_start=d.window_start, source="lifecycle ledger"))
        return problems

    def _archive_problems(
        self, periods: PeriodRows, lo: dt.datetime, hi: dt.datetime, by_seq: dict[int, Digest],
        report: VerificationReport,
    ) -> list[IntegrityProblem]:
        """The archives of the range's partitions against their manifests, and their digest copies against the
        chain (a copy is signed: it also survives a rewrite of the database's digests)."""
        parts = [p for p in periods.parts if p.state in ("archived", "purged") and p.archive_uri
                 and p.archive_deleted_at is None and p.start < hi and p.end > lo]
        if not parts:
            return []
        store = periods.store()
        if store is None:
            report.unchecked.append(f"archives of {len(parts)} partition(s): {periods.store_error}")
            return []
        copies = {name: checksum for name, checksum in self.conn.execute(
            "SELECT DISTINCT ON (partition_name) partition_name, checksum FROM audit_lifecycle_ledger"
            " WHERE operation = 'integrity_copy' AND outcome = 'ok' ORDER BY partition_name, entry_id DESC")}
        problems = []
        for p in parts:
            try:
                found = PartitionManager._archive_problems(p, store)
            except AuditError as exc:
                found = [exc.message]
            problems += [IntegrityProblem("archive", text, window_start=p.start, source=f"{p.name} archive")
                         for text in found]
            problems += self._copy_problems(store, p, copies.get(p.name), by_seq)
        return problems

    def _copy_problems(
        self, store: Any, p: PartitionInfo, recorded_sha: str | None, by_seq: dict[int, Digest],
    ) -> list[IntegrityProblem]:
        """The archive's digest copy against what the ledger recorded of it, its own chain segment, and the chain."""
        try:
            data = store.read_sidecar(p.name, ARCHIVE_COPY_NAME)
            uri = store.sidecar_uri(p.name, ARCHIVE_COPY_NAME)
        except AuditError as exc:
            return [IntegrityProblem("archive", exc.message, window_start=p.start, source=f"{p.name} archive")]
        if data is None:
            if recorded_sha is None:
                return []  # archived before the chain reached it: the database's digests are the only copy
            return [IntegrityProblem("archive", "the digest copy written at archival is missing", window_start=p.start,
                                     source=uri)]
        problems = []
        if recorded_sha is not None and hashlib.sha256(data).hexdigest() != recorded_sha:
            problems.append(IntegrityProblem("archive", "the digest copy differs from the one written at archival",
                                             window_start=p.start, source=uri))
        try:
            copy = read_archive_copy(data)
        except ValueError as exc:
            return [*problems, IntegrityProblem("archive", f"the digest copy is malformed: {exc}",
                                                window_start=p.start, source=uri)]
        problems += check_chain(copy.chain, self.trusted, source=uri, segment=True)
        problems += _copied_digest_problems(copy.chain, by_seq, uri)
        for d, leaves in copy.digests:
            problems += _leaf_problems(d, leaves, uri)
        return problems


def _anchor_problems(by_seq: dict[int, Digest], anchors: list[tuple[int, bytes]]) -> list[IntegrityProblem]:
    """Each published anchor ``(chain_seq, digest_hash)`` must still be in the chain, unchanged."""
    problems = []
    for seq, expected in anchors:
        d = by_seq.get(seq)
        if d is None:
            problems.append(IntegrityProblem("missing_digest", f"anchored digest #{seq} is not in the chain",
                                             chain_seq=seq, source="anchor"))
        elif d.digest_hash != expected:
            problems.append(IntegrityProblem("forged_digest", f"{d.label()} differs from its anchored hash",
                                             chain_seq=seq, window_start=d.window_start, source="anchor"))
    return problems


def _row_problems(
    row: _Row, hit: tuple[Leaf, Digest] | None, cutoff: dt.datetime, now: dt.datetime, report: VerificationReport,
    where: dict[str, Any],
) -> list[IntegrityProblem]:
    """One stored row against the leaf that sealed it (``hit``), or, when none did, against the last cutoff:
    before it the row should have been sealed, after it the next seal covers it (counted as pending)."""
    issues = []
    if row.error:
        issues.append(row.error)
    elif row.recomputed != row.content_hash:
        issues.append("its fields no longer match its content_hash")
    if hit is not None:
        leaf, d = hit
        if leaf.content_hash != row.content_hash:
            issues.append(f"its content_hash differs from the one sealed in #{d.chain_seq}")
        if leaf.ingested_at != row.ingested_at:
            issues.append(f"its ingested_at differs from the one sealed in #{d.chain_seq}")
        return [IntegrityProblem("modified_row", "; ".join(issues), chain_seq=d.chain_seq, **where)] if issues else []
    if row.ingested_at > now:
        return [IntegrityProblem("inserted_row", "in no digest, and its ingested_at lies in the future", **where)]
    if row.ingested_at < cutoff:
        return [IntegrityProblem(
            "inserted_row", f"in no digest of its window although ingested before the last seal's cutoff "
            f"({format_time(cutoff)})" + (f"; {'; '.join(issues)}" if issues else ""), **where)]
    report.pending_events += 1
    return [IntegrityProblem("modified_row", "; ".join(issues), **where)] if issues else []


def _deleted_rows(
    periods: PeriodRows, w_start: dt.datetime, sealed: dict[_Key, tuple[Leaf, Digest]], seen: set[_Key],
) -> list[IntegrityProblem]:
    """A sealed leaf with no row."""
    problems = []
    for key, (leaf, d) in sealed.items():
        if key not in seen:
            part = periods.partition_of(w_start)
            problems.append(IntegrityProblem(
                "deleted_row", f"sealed in #{d.chain_seq}, but no such row exists", w_start, leaf.event_time,
                str(leaf.event_id), d.chain_seq, part.name if part else "audit_log"))
    return problems


def _copied_digest_problems(chain: tuple[Digest, ...], by_seq: dict[int, Digest], uri: str) -> list[IntegrityProblem]:
    """Each digest of an archive's copy must be in the chain, unchanged."""
    problems = []
    for d in chain:
        mine = by_seq.get(d.chain_seq)
        if mine is None:
            problems.append(IntegrityProblem("missing_digest", f"{d.label()} is in the archive's copy but not in "
                                             "the chain", chain_seq=d.chain_seq, window_start=d.window_start,
                                             source=uri))
        elif mine.digest_hash != d.digest_hash:
            problems.append(IntegrityProblem("forged_digest", f"{mine.label()} differs from the archive's signed "
                                             "copy", chain_seq=d.chain_seq, window_start=d.window_start,
                                             source=uri))
    return problems


# -- proofs --------------------------------------------------------------------------------------------------------


def prove(connections: Any, event_time: Any, event_id: Any) -> InclusionProof:
    """The inclusion proof of one sealed event (see :meth:`audit_db_core.integrity.IntegrityManager.prove`)."""
    ts = _aware(event_time, "event_time", "proof")
    try:
        eid = event_id if isinstance(event_id, uuid.UUID) else uuid.UUID(str(event_id))
    except ValueError:
        raise AuditValidationError("proof", [("event_id", "is not a UUID")]) from None
    with connections.connection(operation="integrity_prove") as conn:
        candidates = load_digests(conn, sql.SQL(" WHERE window_start <= %(t)s AND window_end > %(t)s"), {"t": ts})
        leaves = load_leaves(conn, [d.chain_seq for d in candidates])
    for d in candidates:
        items = leaves[d.chain_seq]
        for i, leaf in enumerate(items):
            if leaf.key == (ts, eid):
                hashes = [x.hash() for x in items]
                return InclusionProof(leaf, i, len(items), tuple(inclusion_path(hashes, i)), d)
    raise AuditValidationError("proof", [(
        "event", "is not in any digest (no such event, or it was ingested after the last seal)")])
