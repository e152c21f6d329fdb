"""How to encode a cached page for L2: candidate encodings of one page as the database returned it, each timed
from the page to the sealed bytes (what ``QueryCache.set`` does) and from the sealed bytes back to a ``QueryPage``
(what an L2 hit does), plus a Redis ``GET`` of the sealed value (what its size costs on the wire).

Candidates (each with zlib level 1 and without; every one sealed with AES-256-GCM as L2 values are):

- ``json`` — the stdlib ``json`` format of cache format 2 (rows with ISO times and hex hashes, rebuilt field by
  field through ``StoredAuditEvent.from_row``): the baseline;
- ``orjson`` — ``orjson.dumps`` / ``orjson.loads`` of the same rows (``orjson`` writes UUIDs, times and enums
  itself; hashes as hex), values converted back in Python, events made as ``cache_codec`` makes them;
- ``msgspec_json`` — what the cache stores (``audit_db_core.cache_codec``): ``msgspec`` JSON, rows decoded by a
  typed decoder straight into UUIDs, aware datetimes, enums and bytes;
- ``msgspec_msgpack`` — the same types in MessagePack (``msgspec.msgpack``).

Each decode is checked: the events equal the database's (``model_dump``) and their hashes match. Used by
``benchmarks/cache.py`` (``latency.l2_codecs`` in its report); never pickle, so pickle is not a candidate.
"""

from __future__ import annotations

import datetime as dt
import json
import statistics
import time
import uuid
import zlib
from collections.abc import Callable
from typing import Any

import msgspec

from audit_db_core.cache_codec import (
    _Envelope,
    _events,
    _Page,
    decode_value,
    encode_json,
    page_from_json,
    page_to_json,
)
from audit_db_core.cache_seal import CacheSeal, inflate
from audit_db_core.events import EVENT_COLUMNS, DataClassification, EventStatus, StoredAuditEvent
from audit_db_core.query import QueryPage

try:  # a candidate only where it is installed (the dev extra has it)
    import orjson
except ImportError:  # pragma: no cover
    orjson = None  # type: ignore[assignment]

LIMIT = 16 << 20
_STATUSES = {s.value: s for s in EventStatus}
_CLASSES = {c.value: c for c in DataClassification}


# -- format 2: stdlib json, as the cache wrote it before -------------------------------------------------------------


def _json_page(page: QueryPage) -> dict[str, Any]:
    rows = []
    for ev in page.events:
        row = {c: getattr(ev, c) for c in EVENT_COLUMNS}
        row["event_id"] = str(ev.event_id)
        row["event_time"] = ev.event_time.isoformat()
        row["status"] = ev.status.value
        row["data_classification"] = ev.data_classification.value
        row["content_hash"] = ev.stored_content_hash.hex() if ev.stored_content_hash is not None else None
        row["ingested_at"] = ev.ingested_at.isoformat() if ev.ingested_at is not None else None
        rows.append(row)
    return {"rows": rows, "next": page.next_cursor, "limit": page.limit}


def _json_encode(page: QueryPage, scope: list[str], limits: list[int]) -> bytes:
    return json.dumps({"s": scope, "l": limits, "p": _json_page(page)}, separators=(",", ":"), default=str).encode()


def _json_decode(text: bytes) -> QueryPage:
    doc = json.loads(text)["p"]
    events = []
    for row in doc["rows"]:
        row = dict(row)
        row["event_id"] = uuid.UUID(row["event_id"])
        row["event_time"] = dt.datetime.fromisoformat(row["event_time"])
        row["content_hash"] = bytes.fromhex(row["content_hash"]) if row["content_hash"] else None
        row["ingested_at"] = dt.datetime.fromisoformat(row["ingested_at"]) if row["ingested_at"] else None
        events.append(StoredAuditEvent.from_row(row))
    return QueryPage(events=events, next_cursor=doc["next"], limit=doc["limit"])


# -- orjson ------------------------------------------------------------------------------------------------------------


def _orjson_encode(page: QueryPage, scope: list[str], limits: list[int]) -> bytes:
    rows = [e.__dict__ for e in page.events]
    return orjson.dumps({"v": 3, "s": scope, "l": limits, "p": {"rows": rows, "next": page.next_cursor,
                                                                "limit": page.limit}},
                        default=lambda b: b.hex() if isinstance(b, bytes) else str(b))


def _orjson_decode(text: bytes) -> QueryPage:
    doc = orjson.loads(text)["p"]
    rows = doc["rows"]
    for row in rows:
        row["event_id"] = uuid.UUID(row["event_id"])
        row["event_time"] = dt.datetime.fromisoformat(row["event_time"])
        row["status"] = _STATUSES[row["status"]]
        row["data_classification"] = _CLASSES[row["data_classification"]]
        if row["ingested_at"] is not None:
            row["ingested_at"] = dt.datetime.fromisoformat(row["ingested_at"])
        if row["stored_content_hash"] is not None:
            row["stored_content_hash"] = bytes.fromhex(row["stored_content_hash"])
    return QueryPage(events=_events(rows), next_cursor=doc["next"], limit=doc["limit"])


# -- msgspec -----------------------------------------------------------------------------------------------------------


def _msgspec_json_encode(page: QueryPage, scope: list[str], limits: list[int]) -> bytes:
    return encode_json(_Envelope(3, scope, limits, msgspec.Raw(page_to_json.json_bytes(page))))


def _msgspec_json_decode(text: bytes, scope: tuple[str, ...]) -> QueryPage:
    _, doc = decode_value(text, LIMIT, scope, page_from_json.json_type)
    return page_from_json.from_typed(doc)


class _PackedEnvelope(msgspec.Struct):
    v: int
    s: list[str]
    l: list[int]  # noqa: E741
    p: _Page


_packer = msgspec.msgpack.Encoder()
_unpacker = msgspec.msgpack.Decoder(_PackedEnvelope)


def _msgpack_encode(page: QueryPage, scope: list[str], limits: list[int]) -> bytes:
    doc = _Page([e.__dict__ for e in page.events], page.next_cursor, page.limit, page.extra)  # type: ignore[misc]
    return _packer.encode(_PackedEnvelope(3, scope, limits, doc))


def _msgpack_decode(text: bytes) -> QueryPage:
    doc = _unpacker.decode(text).p
    return QueryPage(events=_events(doc.rows), next_cursor=doc.next, limit=doc.limit, extra=doc.extra)


# -- the comparison ----------------------------------------------------------------------------------------------------


def _timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def compare(page: QueryPage, scope: tuple[str, ...], seal: CacheSeal, redis_client: Any, key_prefix: str, *,
            repeats: int) -> dict[str, Any]:
    """Every candidate on ``page`` (see the module docstring); ``redis_client`` times a ``GET`` of each sealed value
    under ``key_prefix`` (the keys are deleted afterwards). Repeats are interleaved across candidates (repeat 1 of
    each, then repeat 2 …), so a burst of other work on the machine hits them alike; medians are reported."""
    s, limits = list(scope), [1] * len(scope)
    encodings: dict[str, tuple[Callable[[], bytes], Callable[[bytes], QueryPage]]] = {
        "json": (lambda: _json_encode(page, s, limits), _json_decode),
        "msgspec_json": (lambda: _msgspec_json_encode(page, s, limits),
                         lambda text: _msgspec_json_decode(text, scope)),
        "msgspec_msgpack": (lambda: _msgpack_encode(page, s, limits), _msgpack_decode),
    }
    if orjson is not None:
        encodings["orjson"] = (lambda: _orjson_encode(page, s, limits), _orjson_decode)
    expected = [e.model_dump() for e in page.events]
    now_ms = int(time.time() * 1000)
    steps: dict[str, tuple[Callable[[], Any], Callable[[], Any], Callable[[], Any]]] = {}
    sizes: dict[str, tuple[int, int]] = {}
    for name, (encode, decode) in encodings.items():
        for compressed in (True, False):
            label = f"{name}+zlib" if compressed else name
            redis_key = f"{key_prefix}:codec:{label}"

            def write(compressed: bool = compressed, redis_key: str = redis_key, encode: Any = encode) -> bytes:
                body = encode()
                return seal.seal(redis_key, zlib.compress(body, 1) if compressed else body, created_ms=now_ms,
                                 ttl_ms=600_000)

            blob = write()

            def read(blob: bytes = blob, compressed: bool = compressed, redis_key: str = redis_key,
                     decode: Any = decode) -> QueryPage:
                body = seal.unseal(redis_key, blob)[0]
                return decode(inflate(body, LIMIT) if compressed else body)

            got = read()
            if [e.model_dump() for e in got.events] != expected or not all(e.hash_matches for e in got.events):
                raise AssertionError(f"{label}: the decoded page differs from the database's")
            redis_client.set(redis_key, blob, px=600_000)
            def fetch(redis_key: str = redis_key) -> Any:
                return redis_client.get(redis_key)

            steps[label] = (write, read, fetch)
            sizes[label] = (len(encode()), len(blob))
    samples: dict[str, list[list[float]]] = {label: [[], [], []] for label in steps}
    try:
        for _ in range(repeats):
            for label, fns in steps.items():
                for i, fn in enumerate(fns):
                    samples[label][i].append(_timed(fn))
    finally:
        redis_client.delete(*(f"{key_prefix}:codec:{label}" for label in steps))
    out: dict[str, Any] = {}
    for label, (write_s, read_s, get_s) in samples.items():
        read_us, get_us = statistics.median(read_s) * 1e6, statistics.median(get_s) * 1e6
        out[label] = {
            "plain_bytes": sizes[label][0],
            "sealed_bytes": sizes[label][1],
            "encode_and_seal_us": round(statistics.median(write_s) * 1e6, 1),
            "open_and_decode_us": round(read_us, 1),
            "redis_get_us": round(get_us, 1),
            "hit_us": round(read_us + get_us, 1),
        }
    return {"events": len(page.events), "repeats": repeats, "candidates": out}
