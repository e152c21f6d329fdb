"""How to encode a cached page for L2: candidate encodings of one page as the database returned it, each timed
from the page to the sealed bytes (what ``QueryCache.set`` does) and from the sealed bytes back to a ``QueryPage``
(what an L2 hit does), plus a Redis ``GET`` of the sealed value (what its size costs on the wire).

Candidates (each uncompressed, with zlib level 1 and with LZ4 — Arrow's raw LZ4 block codec, as the cache uses it;
every one sealed with AES-256-GCM as L2 values are):

- ``json`` — the stdlib ``json`` format of cache format 2 (rows with ISO times and hex hashes, rebuilt field by
  field through ``StoredAuditEvent.from_row``): the baseline;
- ``orjson`` — ``orjson.dumps`` / ``orjson.loads`` of the same rows (``orjson`` writes UUIDs, times and enums
  itself; hashes as hex), values converted back in Python, events made as ``cache_codec`` makes them;
- ``msgspec_json`` — cache format 3: ``msgspec`` JSON, rows decoded by a typed decoder straight into UUIDs, aware
  datetimes, enums and bytes;
- ``msgspec_msgpack`` — what the cache stores (format 4, ``audit_db_core.cache_codec``): the same types in
  MessagePack, decoded by ``cache_codec.decode_value``; ``msgspec_msgpack+lz4`` is the cache's value.

Each decode is checked: the events equal the database's (``model_dump``) and their hashes match. Used by
``benchmarks/read_path.py`` (``l2_codecs`` in its report); never pickle, so pickle is not a candidate.
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

from benchmarks.read_data import CheckFailed
from audit_db_core.cache_codec import VERSION, _codec, _Envelope, _events, _Page, decode_value, page_from_json, page_to_json
from audit_db_core.cache_seal import CacheSeal
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

_json_encoder = msgspec.json.Encoder(enc_hook=str)
_json_envelope = msgspec.json.Decoder(_Envelope[_Page])
_packer = msgspec.msgpack.Encoder(enc_hook=str, uuid_format="bytes")  # as cache_codec's


def _msgspec_json_encode(page: QueryPage, scope: list[str], limits: list[int]) -> bytes:
    return _json_encoder.encode(_Envelope(3, scope, limits, page_to_json.document(page)))


def _msgspec_json_decode(text: bytes) -> QueryPage:
    return page_from_json.from_typed(_json_envelope.decode(text).p)


def _msgpack_encode(page: QueryPage, scope: list[str], limits: list[int]) -> bytes:
    return _packer.encode(_Envelope(VERSION, scope, limits, page_to_json.document(page)))


def _msgpack_decode(text: bytes, scope: tuple[str, ...]) -> QueryPage:
    _, doc = decode_value(b"\x00" + text, LIMIT, scope, page_from_json.payload_type)  # marker 0: as is
    return page_from_json.from_typed(doc)


# -- compression -------------------------------------------------------------------------------------------------------


def _lz4_compress(body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + _codec().compress(body, asbytes=True)


def _lz4_decompress(blob: bytes) -> bytes:
    return _codec().decompress(blob[4:], decompressed_size=int.from_bytes(blob[:4], "big"),  # type: ignore[no-any-return]
                               asbytes=True)


COMPRESSIONS: dict[str, tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]] = {
    "": (lambda body: body, lambda blob: blob),
    "+zlib": (lambda body: zlib.compress(body, 1), zlib.decompress),
    "+lz4": (_lz4_compress, _lz4_decompress),
}


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
        "msgspec_json": (lambda: _msgspec_json_encode(page, s, limits), _msgspec_json_decode),
        "msgspec_msgpack": (lambda: _msgpack_encode(page, s, limits), lambda text: _msgpack_decode(text, scope)),
    }
    if orjson is not None:
        encodings["orjson"] = (lambda: _orjson_encode(page, s, limits), _orjson_decode)
    expected = [e.model_dump() for e in page.events]
    now_ms = int(time.time() * 1000)
    steps: dict[str, tuple[Callable[[], Any], Callable[[], Any], Callable[[], Any]]] = {}
    sizes: dict[str, tuple[int, int]] = {}
    for name, (encode, decode) in encodings.items():
        for suffix, (squeeze, unsqueeze) in COMPRESSIONS.items():
            label = name + suffix
            redis_key = f"{key_prefix}:codec:{label}"

            def write(squeeze: Any = squeeze, redis_key: str = redis_key, encode: Any = encode) -> bytes:
                return seal.seal(redis_key, squeeze(encode()), created_ms=now_ms, ttl_ms=600_000)

            blob = write()

            def read(blob: bytes = blob, unsqueeze: Any = unsqueeze, redis_key: str = redis_key,
                     decode: Any = decode) -> QueryPage:
                return decode(unsqueeze(seal.unseal(redis_key, blob)[0]))

            got = read()
            if [e.model_dump() for e in got.events] != expected or not all(e.hash_matches for e in got.events):
                raise CheckFailed(f"{label}: the decoded page differs from the database's")
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
