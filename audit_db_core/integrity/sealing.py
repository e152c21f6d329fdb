"""Sealing: the digests that are due, signed and appended to the chain in one transaction.

A seal run takes its *horizon* first (the cutoff: no row stamped before it can still appear, see the package
docstring), then, in one REPEATABLE READ snapshot, *plans* what is due — a first digest (``seq`` 1) for every window
closed since the last seal, a supplement for every sealed window that received *late* events — reads each window's
rows, signs one digest per window, *inserts* them with their leaves and *records* the run in the lifecycle ledger.
One seal runs at a time (advisory lock ``LOCK_CLASS, LOCK_SEAL``).

Example::

    result = seal(connections, settings, partitions, key=signing_key, window=checked_window(settings))
    result.status, [d.chain_seq for d in result.digests]
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from typing import Any

import psycopg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from psycopg import sql

from audit_db_core import ledger
from audit_db_core.config import AuditSettings, Period
from audit_db_core.errors import ComplianceError, ConfigurationError, IntegrityViolation
from audit_db_core.events import format_time
from audit_db_core.integrity.model import (
    _ZERO_HASH,
    ALGORITHM,
    Digest,
    Leaf,
    SealedDigest,
    SealResult,
    _aware,
    _elapsed,
    key_id_of,
)
from audit_db_core.integrity.storage import HEAD, _Row, insert_digests, load_digests, window_rows
from audit_db_core.merkle import merkle_root
from audit_db_core.migrate import LOCK_CLASS
from audit_db_core.partitions import PartitionBounds, PartitionManager, bounds_for
from audit_db_core.period_rows import LOG_TABLE, PeriodRows

logger = logging.getLogger("audit_db_core.integrity.sealing")

#: Advisory lock (LOCK_CLASS, LOCK_SEAL): one seal at a time keeps the chain linear (8: this feature's migration).
LOCK_SEAL = 8
_DAY_ANCHOR = dt.datetime(1970, 1, 5, tzinfo=dt.UTC)  # partitions' anchor: day windows nest in day partitions

_Plan = list[tuple[tuple[dt.datetime, dt.datetime], int]]


def checked_window(settings: AuditSettings) -> Period:
    """``AUDIT_INTEGRITY__WINDOW``, checked to nest in partitions (a window never spans two partitions)."""
    window = settings.integrity.window
    interval = settings.partitions.interval
    nests = window.days == 1 if interval.months else interval.days % window.days == 0
    if not nests:
        raise ConfigurationError("settings", [(
            "AUDIT_INTEGRITY__WINDOW",
            f"{window} does not divide the partition interval ({interval}): a window must lie inside one "
            "partition (use 1 day, or a divisor of a day-based interval)",
        )])
    return window


def seal(
    connections: Any, settings: AuditSettings, partitions: PartitionManager, *, key: Ed25519PrivateKey,
    window: Period, until: dt.datetime | None = None, run_id: str | None = None,
) -> SealResult:
    """One seal run (see :meth:`audit_db_core.integrity.IntegrityManager.seal`): ``busy`` when another holds the
    lock, else whatever the run did, recorded in the ledger."""
    started = time.perf_counter()
    with connections.dedicated_connection(operation="seal", autocommit=True) as conn:
        locked = conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (LOCK_CLASS, LOCK_SEAL)).fetchone()
        if locked != (True,):
            return SealResult("busy", (), None, None, None, "another seal is running", _elapsed(started))
        try:
            result = _SealRun(conn, settings, partitions, key, window, run_id, started).run(until)
        finally:
            if not conn.closed and not conn.broken:
                conn.execute("SELECT pg_advisory_unlock(%s, %s)", (LOCK_CLASS, LOCK_SEAL))
    logger.info("seal: %s", result.status, extra={"audit": {"digests": len(result.digests), "events": result.events,
                                                           "reason": result.reason}})
    return result


class _HeldBack(Exception):
    pass


class _SealRun:
    """The steps of one seal on its own (autocommit) connection, holding the seal lock."""

    def __init__(
        self, conn: psycopg.Connection[Any], settings: AuditSettings, partitions: PartitionManager,
        key: Ed25519PrivateKey, window: Period, run_id: str | None, started: float,
    ) -> None:
        self.conn = conn
        self.settings = settings
        self.partitions = partitions
        self.key = key
        self.window = window
        self.run_id = run_id
        self.started = started

    def window_of(self, ts: dt.datetime) -> PartitionBounds:
        return bounds_for(ts, self.window)

    def run(self, limit: dt.datetime | None) -> SealResult:
        try:
            t0, cutoff, holder = self._horizon()
        except _HeldBack as exc:
            return self._record("held_back", (), None, None, str(exc))
        closed_until = self.window_of(t0 - dt.timedelta(seconds=self.settings.integrity.seal_delay_seconds)).start
        if limit is not None:  # the last window that ends at or before `until` ends at this boundary
            closed_until = min(closed_until, self.window_of(limit).start)
        start_floor = None
        if self.settings.integrity.start is not None:
            start_floor = self.window_of(_aware(self.settings.integrity.start, "start", "settings")).start
        self.conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        try:
            return self._in_snapshot(t0, cutoff, holder, closed_until, start_floor)
        except BaseException:
            conn = self.conn
            if not conn.closed and not conn.broken and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                conn.execute("ROLLBACK")
            raise

    def _horizon(self) -> tuple[dt.datetime, dt.datetime, str]:
        """``(t0, cutoff, what holds the cutoff back)``, read before the seal's snapshot is taken."""
        row = self.conn.execute(
            "SELECT statement_timestamp(),"
            " min(a.xact_start),"
            " (array_agg(a.pid ORDER BY a.xact_start) FILTER (WHERE a.xact_start IS NOT NULL))[1],"
            " count(*) FILTER (WHERE a.query = '<insufficient privilege>')"
            " FROM pg_stat_activity a"
            " WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()"
            "   AND (a.backend_type IN ('client backend', 'background worker')"
            "        OR a.query = '<insufficient privilege>')"
        ).fetchone()
        assert row is not None
        t0, oldest, oldest_pid, hidden = row
        if hidden:
            # Their transactions may have stamped rows we cannot see yet; a cutoff past them could miss rows.
            raise ComplianceError(
                f"sealing must see every open transaction, and {hidden} session(s) of other roles are hidden from this "
                "role in pg_stat_activity: GRANT pg_read_all_stats to the role that seals",
                operation="seal")
        prepared = self.conn.execute(
            "SELECT gid, prepared FROM pg_prepared_xacts WHERE database = current_database() ORDER BY prepared LIMIT 1"
        ).fetchone()
        cutoff = t0 - dt.timedelta(seconds=self.settings.integrity.cutoff_grace_seconds)
        reason = ""
        if oldest is not None and oldest < cutoff:
            cutoff = oldest
            reason = f"a transaction open since {format_time(oldest)} (pid {oldest_pid})"
        if prepared is not None:
            # A prepared transaction's rows carry its start time, which PostgreSQL does not show: nothing is safe.
            raise _HeldBack(f"prepared transaction {prepared[0]!r} (prepared {format_time(prepared[1])}) is pending")
        return t0.astimezone(dt.UTC), cutoff.astimezone(dt.UTC), reason

    def _in_snapshot(
        self, t0: dt.datetime, cutoff: dt.datetime, holder: str, closed_until: dt.datetime,
        start_floor: dt.datetime | None,
    ) -> SealResult:
        """Plan, sign, insert and record, in the transaction just begun; commits or rolls back."""
        periods = PeriodRows(self.partitions, self.conn)  # the first statement: it takes the snapshot all reads share
        head = next(iter(load_digests(self.conn, HEAD)), None)
        if head is not None and cutoff <= head.ingested_to:
            self.conn.execute("ROLLBACK")
            why = holder or "the clock has not passed the last cutoff"
            return self._record("held_back", (), cutoff, head, f"the cutoff cannot move past the last seal's "
                                f"({format_time(head.ingested_to)}): {why}")
        plan = self._plan(periods, head, cutoff, closed_until, start_floor)
        new = self._sign(periods, plan, head, cutoff, t0)
        if not new:
            self.conn.execute("ROLLBACK")
            return self._record("nothing_to_seal", (), cutoff, head, "no window closed and no late event since the "
                                f"last seal, among events ingested before {format_time(cutoff)} (later ones wait for "
                                "the next seal)")
        insert_digests(self.conn, new)
        summaries = tuple(SealedDigest(d.chain_seq, d.window_start, d.window_end, d.seq, d.event_count,
                                       d.digest_hash.hex()) for d, _ in new)
        result = self._record("sealed", summaries, cutoff, new[-1][0], holder)
        self.conn.execute("COMMIT")
        return result

    def _sign(
        self, periods: PeriodRows, plan: _Plan, head: Digest | None, cutoff: dt.datetime, t0: dt.datetime,
    ) -> list[tuple[Digest, list[Leaf]]]:
        """One signed digest per planned window, linked after ``head``; a supplement with no new row is skipped."""
        new: list[tuple[Digest, list[Leaf]]] = []
        prev_hash = head.digest_hash if head is not None else _ZERO_HASH
        chain_seq = head.chain_seq if head is not None else 0
        key_id = key_id_of(self.key)
        for (w_start, w_end), seq in plan:
            ingested_from = head.ingested_to if seq > 1 and head is not None else None
            rows, error, _expired = window_rows(periods, self.conn, w_start, w_end, full=False,
                                                ingested_from=ingested_from, ingested_to=cutoff)
            if error:
                raise IntegrityViolation(f"cannot seal [{format_time(w_start)}, {format_time(w_end)}): {error}",
                                         operation="seal")
            if seq > 1 and not rows:
                continue
            leaves = _unique_leaves(rows)
            chain_seq += 1
            unsigned = Digest(chain_seq, w_start, w_end, seq, ingested_from, cutoff, len(leaves),
                              merkle_root([leaf.hash() for leaf in leaves]), prev_hash, ALGORITHM, key_id, t0)
            signed = dataclasses.replace(unsigned, digest_hash=unsigned.computed_hash(),
                                         signature=self.key.sign(unsigned.statement()))
            new.append((signed, leaves))
            prev_hash = signed.digest_hash
        return new

    def _plan(
        self, periods: PeriodRows, head: Digest | None, cutoff: dt.datetime, closed_until: dt.datetime,
        start_floor: dt.datetime | None,
    ) -> _Plan:
        """``[((window start, end), seq)]`` to seal, oldest window first."""
        sealed: dict[dt.datetime, tuple[dt.datetime, int]] = {
            s.astimezone(dt.UTC): (e.astimezone(dt.UTC), n) for s, e, n in self.conn.execute(
                "SELECT window_start, window_end, max(seq) FROM audit_digests GROUP BY 1, 2")}
        todo: dict[dt.datetime, tuple[dt.datetime, int]] = {}

        def add_range(begin: dt.datetime, stop: dt.datetime) -> None:
            w = self.window_of(begin)
            while w.end <= stop:
                if w.start not in sealed and (start_floor is None or w.start >= start_floor):
                    todo.setdefault(w.start, (w.end, 1))
                w = self.window_of(w.end)

        if not sealed:
            row = self.conn.execute(
                "SELECT min(event_time) FROM audit_log WHERE ingested_at < %s AND (%s::timestamptz IS NULL OR "
                "event_time >= %s)", (cutoff, start_floor, start_floor)).fetchone()
            if row is None or row[0] is None:
                return []
            add_range(row[0], closed_until)
        else:
            first = min(sealed)
            add_range(max(e for e, _ in sealed.values()), closed_until)
            for w_start in self._late_windows(periods, head, cutoff, closed_until):  # type: ignore[arg-type]
                if start_floor is not None and w_start < start_floor:
                    continue
                if w_start in sealed:
                    end, seq = sealed[w_start]
                    todo[w_start] = (end, seq + 1)
                elif w_start < first:
                    add_range(w_start, first)  # history arrived before the chain's first window: seal up to it
                else:
                    add_range(w_start, self.window_of(w_start).end)
        return [((s, e), n) for s, (e, n) in sorted(todo.items())]

    def _late_windows(
        self, periods: PeriodRows, head: Digest, cutoff: dt.datetime, closed_until: dt.datetime,
    ) -> list[dt.datetime]:
        """Starts of the closed windows that hold events ingested in ``[head's cutoff, cutoff)``: in ``audit_log``
        and in the tables of detached partitions (the BRIN index on ingested_at keeps this cheap)."""
        step = self.window.days * 86_400
        found: set[dt.datetime] = set()
        for table in [LOG_TABLE, *(p.name for p in periods.detached(self.conn))]:
            stmt = sql.SQL(
                "SELECT DISTINCT floor((extract(epoch FROM event_time) - {anchor}) / {step})::bigint FROM {t}"
                " WHERE ingested_at >= %s AND ingested_at < %s AND event_time < %s"
            ).format(anchor=sql.Literal(_DAY_ANCHOR.timestamp()), step=sql.Literal(step), t=sql.Identifier(table))
            for (index,) in self.conn.execute(stmt, (head.ingested_to, cutoff, closed_until)):
                found.add(_DAY_ANCHOR + dt.timedelta(seconds=int(index) * step))
        return sorted(found)

    def _record(
        self, status: str, digests: tuple[SealedDigest, ...], cutoff: dt.datetime | None, head: Digest | None,
        reason: str,
    ) -> SealResult:
        result = SealResult(status, digests, cutoff, head.chain_seq if head else None,
                            head.digest_hash.hex() if head else None, reason, _elapsed(self.started))
        details = {
            "status": status, "digests": len(digests), "supplements": result.supplements, "reason": reason,
            "cutoff": format_time(cutoff) if cutoff else None,
            "head_chain_seq": head.chain_seq if head else None,
            "first_window": format_time(digests[0].window_start) if digests else None,
            "last_window": format_time(digests[-1].window_start) if digests else None,
        }
        # Inside the seal's transaction when it made digests (they commit together), else on its own.
        ledger.record(self.conn, "seal", None, "ok" if status == "sealed" else "skipped", run_id=self.run_id,
                      rows=result.events, checksum=result.head_digest_hash if status == "sealed" else None,
                      duration_ms=result.duration_ms, details=details)
        return result


def _unique_leaves(rows: list[_Row]) -> list[Leaf]:
    out: list[Leaf] = []
    for r in rows:
        if out and out[-1].key == r.key:
            continue  # the same event in two tables (a detached partition and DEFAULT): sealed once
        out.append(Leaf(r.event_time.astimezone(dt.UTC), r.event_id, r.ingested_at.astimezone(dt.UTC),
                        r.content_hash))
    return out
