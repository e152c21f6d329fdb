"""What integrity keeps in the database and next to archives: the digests (``audit_digests``), their leaves
(``audit_digest_leaves``, in chunks), the rows of a window as sealing and verification read them, and the digest
copy (``integrity.json``) written when a partition is archived.

Example::

    digests = load_digests(conn)                                  # the whole chain, in chain_seq order
    leaves = load_leaves(conn, [d.chain_seq for d in digests])
    write_archive_copy(conn, bounds, store, run_id=run_id)        # in the archive's transaction
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from audit_db_core import ledger
from audit_db_core.errors import AuditError
from audit_db_core.events import STORED_COLUMNS, StoredAuditEvent
from audit_db_core.integrity.model import (
    _DIGEST_FIELDS,
    ARCHIVE_COPY_NAME,
    Digest,
    Leaf,
    _leaves_from_bytes,
    archive_copy_bytes,
    unsealed_spans,
)
from audit_db_core.partitions import PartitionBounds, PartitionInfo
from audit_db_core.period_rows import PeriodRows

if TYPE_CHECKING:
    from audit_db_core.archive import ArchiveStore

logger = logging.getLogger("audit_db_core.integrity.storage")

LEAVES_PER_CHUNK = 65_536  # 4 MiB per audit_digest_leaves row

_DIGEST_SELECT = sql.SQL("SELECT {} FROM audit_digests").format(
    sql.SQL(", ").join(sql.Identifier(c) for c in _DIGEST_FIELDS))
#: The head of the chain, as a filter for :func:`load_digests`.
HEAD = sql.SQL(" WHERE chain_seq = (SELECT max(chain_seq) FROM audit_digests)")


# -- digests and leaves --------------------------------------------------------------------------------------------


def load_digests(conn: psycopg.Connection[Any], where: sql.Composable = sql.SQL(""),
                 params: Any = None) -> list[Digest]:
    """The digests that ``where`` selects (all by default), in chain order."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(_DIGEST_SELECT + where + sql.SQL(" ORDER BY chain_seq"), params).fetchall()
    return [Digest.from_row(r) for r in rows]


def load_leaves(conn: psycopg.Connection[Any], chain_seqs: Sequence[int]) -> dict[int, list[Leaf]]:
    """``chain_seq -> leaves`` (in leaf order) for each of ``chain_seqs``; an empty list for a digest without."""
    out: dict[int, bytearray] = {s: bytearray() for s in chain_seqs}
    if chain_seqs:
        for seq, data in conn.execute(
            "SELECT chain_seq, leaves FROM audit_digest_leaves WHERE chain_seq = ANY(%s) ORDER BY chain_seq, chunk",
            (list(chain_seqs),),
        ):
            out[seq] += bytes(data)
    return {s: _leaves_from_bytes(bytes(b)) for s, b in out.items()}


def insert_digests(conn: psycopg.Connection[Any], new: list[tuple[Digest, list[Leaf]]]) -> None:
    """Insert signed digests and their leaves (``LEAVES_PER_CHUNK`` records per leaves row)."""
    columns = sql.SQL(", ").join(sql.Identifier(c) for c in _DIGEST_FIELDS)
    placeholders = sql.SQL(", ").join(sql.Placeholder() * len(_DIGEST_FIELDS))
    with conn.cursor() as cur:
        cur.executemany(sql.SQL("INSERT INTO audit_digests ({}) VALUES ({})").format(columns, placeholders),
                        [tuple(getattr(d, c) for c in _DIGEST_FIELDS) for d, _ in new])
        chunks = []
        for d, leaves in new:
            for i in range(0, max(len(leaves), 1), LEAVES_PER_CHUNK):
                chunk = leaves[i:i + LEAVES_PER_CHUNK]
                if chunk:
                    chunks.append((d.chain_seq, i // LEAVES_PER_CHUNK, b"".join(leaf.record() for leaf in chunk)))
        if chunks:
            cur.executemany("INSERT INTO audit_digest_leaves (chain_seq, chunk, leaves) VALUES (%s, %s, %s)", chunks)


# -- the rows of a window ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Row:
    event_time: dt.datetime
    event_id: uuid.UUID
    ingested_at: dt.datetime
    content_hash: bytes
    source: str
    recomputed: bytes | None = None  # None: not recomputed (sealing), or could not be (see error)
    error: str | None = None

    @property
    def key(self) -> tuple[dt.datetime, uuid.UUID]:
        return (self.event_time, self.event_id)


_KEY_COLUMNS = ("event_time", "event_id", "ingested_at", "content_hash")


def window_rows(
    periods: PeriodRows, conn: psycopg.Connection[Any], start: dt.datetime, end: dt.datetime, *, full: bool,
    ingested_from: dt.datetime | None = None, ingested_to: dt.datetime | None = None,
) -> tuple[list[_Row], str | None, bool]:
    """The rows of the window ``[start, end)`` ingested in ``[ingested_from, ingested_to)``, wherever they live:
    ``(rows in (event_time, event_id) order, why they could not all be read, expired)``. ``full`` reads every
    stored column and recomputes each row's content hash; otherwise only what a leaf needs."""
    place = periods.locate(conn, start)
    conditions = [sql.SQL("event_time >= %(start)s"), sql.SQL("event_time < %(end)s")]
    if ingested_from is not None:
        conditions.append(sql.SQL("ingested_at >= %(from)s"))
    if ingested_to is not None:
        conditions.append(sql.SQL("ingested_at < %(to)s"))
    where = sql.SQL(" AND ").join(conditions)
    params = {"start": start, "end": end, "from": ingested_from, "to": ingested_to}
    out = [_row(source, row, full) for table in place.tables
           for source, row in periods.table_rows(conn, table, STORED_COLUMNS if full else _KEY_COLUMNS, where, params)]
    error = None
    if place.archive is not None:
        try:
            out.extend(_archived(periods, place.archive, start, end, full, ingested_from, ingested_to))
        except AuditError as exc:
            error = exc.message
    out.sort(key=lambda r: r.key)
    return out, error, place.expired


def _archived(
    periods: PeriodRows, part: PartitionInfo, start: dt.datetime, end: dt.datetime, full: bool,
    ingested_from: dt.datetime | None, ingested_to: dt.datetime | None,
) -> list[_Row]:
    out = []
    for source, row in periods.archive_rows(part, since=start, until=end):
        ingested = row["ingested_at"]
        if (ingested_from is not None and ingested < ingested_from) or (
                ingested_to is not None and ingested >= ingested_to):
            continue
        out.append(_row(source, row, full))
    return out


def _row(source: str, row: dict[str, Any], full: bool) -> _Row:
    event_id = row["event_id"]
    recomputed, error = _recompute(row) if full else (None, None)
    return _Row(row["event_time"], event_id if isinstance(event_id, uuid.UUID) else uuid.UUID(str(event_id)),
                row["ingested_at"], bytes(row["content_hash"]), source, recomputed, error)


def _recompute(row: dict[str, Any]) -> tuple[bytes | None, str | None]:
    """The content hash recomputed from a stored row's fields (details from an archive are JSON text)."""
    try:
        values = dict(row)
        if isinstance(values.get("details"), str):
            values["details"] = json.loads(values["details"])
        return StoredAuditEvent.from_row(values).content_hash, None
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        return None, f"its fields cannot be hashed ({type(exc).__name__})"


# -- the copy next to an archive -----------------------------------------------------------------------------------


def write_archive_copy(
    conn: psycopg.Connection[Any], bounds: PartitionBounds, store: ArchiveStore, *, run_id: str | None = None
) -> str | None:
    """Write ``integrity.json`` next to the archive of ``bounds`` (in the archive's transaction, after its export
    verified) and record it in the ledger (operation ``integrity_copy``, its SHA-256). Returns the SHA-256, or
    None when no digest covers the period yet (nothing is written)."""
    mine = load_digests(conn, sql.SQL(" WHERE window_start >= %s AND window_start < %s"), (bounds.start, bounds.end))
    if not mine:
        return None
    lo, hi = min(d.chain_seq for d in mine), max(d.chain_seq for d in mine)
    chain = load_digests(conn, sql.SQL(" WHERE chain_seq BETWEEN %s AND %s"), (max(lo - 1, 1), hi))
    leaves = load_leaves(conn, [d.chain_seq for d in mine])
    unsealed = unsealed_spans(bounds.start, bounds.end, [d.window for d in mine])
    data = archive_copy_bytes(bounds.name, bounds.start, bounds.end, [(d, leaves[d.chain_seq]) for d in mine], chain,
                              unsealed)
    sha = store.write_sidecar(bounds.name, ARCHIVE_COPY_NAME, data)
    ledger.record(conn, "integrity_copy", bounds.name, run_id=run_id, rows=sum(d.event_count for d in mine),
                  checksum=sha, details={"uri": store.sidecar_uri(bounds.name, ARCHIVE_COPY_NAME),
                                         "digests": len(mine), "chain": [lo, hi], "unsealed_spans": len(unsealed)})
    return sha
