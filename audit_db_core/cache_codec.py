"""What the query cache keeps in Redis, as bytes: MessagePack (``msgspec``), LZ4-compressed, decoded straight into
the result type. Sealing (encryption and authentication) is :mod:`audit_db_core.cache_seal`'s; whatever does not
decode here is a :class:`~audit_db_core.cache_seal.Refused` value — a cache miss, never an error. Never pickle: data
from Redis is untrusted until authenticated, and decoded by a typed decoder even then (no code, no classes named by
the data).

An L2 value's plaintext is one marker byte and the MessagePack *envelope* ``[VERSION, [scopes], [limits], payload]``:
marker ``0x00``, the envelope as is; marker ``0x01``, a 4-byte big-endian length (checked against the reader's
``AUDIT_CACHE__MAX_VALUE_BYTES`` before anything is decompressed) and the envelope as a raw LZ4 block (Arrow's LZ4
codec, from ``pyarrow``), written when the envelope is :data:`COMPRESS_MIN_BYTES` or more and LZ4 makes it smaller.
:data:`VERSION` is also part of the value's Redis key: a value of another format is never looked up, and one found
anyway is a plain miss.

Why MessagePack and LZ4 (``benchmarks/cache_codecs.py`` measures the candidates side by side; figures in
``benchmarks/README.md``): a page's times are MessagePack timestamps, its UUIDs and hashes 16 and 32 raw bytes,
rows decoded in one typed pass with no text to parse — a quarter less to decode than ``msgspec`` JSON and a third
of the cost to encode; LZ4 decompresses a 100-event page in about 5 µs where zlib took 60, at nearly zlib's size.

Payloads: any MessagePack-ready value (a count); a page through :data:`page_to_json` / :data:`page_from_json`, whose
rows are the ``__dict__`` of :class:`~audit_db_core.events.StoredAuditEvent` — decoded by ``msgspec`` into typed
values (UUID, tz-aware datetimes, enums, bytes) and made into events without validation, as
:meth:`StoredAuditEvent.from_row <audit_db_core.events.StoredAuditEvent.from_row>` does for database rows (every
value was validated before it was stored, and the sealed value is authenticated).

Example::

    plaintext, size = encode_value(scope, limits, page_to_json.document(page))
    limits, doc = decode_value(plaintext, max_bytes, scope, page_from_json.payload_type)
    page_from_json.from_typed(doc)                                    # a QueryPage equal to page
"""

from __future__ import annotations

import datetime as dt
import struct
import uuid
from collections.abc import Sequence
from typing import Annotated, Any, Generic, TypedDict, TypeVar

import msgspec

from audit_db_core.cache_seal import Refused
from audit_db_core.events import AuditEvent, DataClassification, EventStatus, StoredAuditEvent
from audit_db_core.query import QueryPage

#: Format of the L2 values (4: MessagePack, LZ4; 3: msgspec JSON, zlib; 2: stdlib JSON, hex hashes).
VERSION = 4
#: Below this many bytes an envelope is stored uncompressed (a count: LZ4 would only add bytes).
COMPRESS_MIN_BYTES = 256
_LZ4_BIT, _JSON_BIT = 1, 2  # the marker byte: 0 MessagePack, 1 MessagePack + LZ4, 2 JSON, 3 JSON + LZ4
_LENGTH = struct.Struct(">I")  # the envelope's size before compression
_EARLIER = frozenset(b"{\x78")  # how the plaintexts of formats 2 and 3 began: JSON, or a zlib stream of it
_UTC = dt.UTC

_Aware = Annotated[dt.datetime, msgspec.Meta(tz=True)]


T = TypeVar("T")


class _Envelope(msgspec.Struct, Generic[T], array_like=True):
    v: int  # VERSION
    s: list[str]  # the scope
    l: list[int]  # noqa: E741 - the limits
    p: T  # the payload


# enc_hook=str: what json.dumps(default=str) did for the odd value; UUIDs as their 16 bytes.
_packer = msgspec.msgpack.Encoder(enc_hook=str, uuid_format="bytes")
_json = msgspec.json.Encoder(enc_hook=str)
_decoders: dict[tuple[bool, Any], Any] = {}  # per (JSON?, payload type): envelope and payload in one pass
_lz4: Any = None  # pyarrow's LZ4 codec, made on first use (importing pyarrow is left to those who cache)


def _codec() -> Any:
    global _lz4
    if _lz4 is None:
        import pyarrow

        _lz4 = pyarrow.Codec("lz4_raw")  # one-shot block calls: stateless, safe from any thread
    return _lz4


def encode_value(scope: Sequence[str], limits: Sequence[int], payload: Any) -> tuple[bytes, int]:
    """``(plaintext, envelope size)`` of an L2 value: the envelope around ``payload`` (a value ``msgspec`` encodes:
    builtins, or a codec's ``document``), compressed when :data:`COMPRESS_MIN_BYTES` or more and LZ4 makes it
    smaller. MessagePack, or JSON for a value MessagePack cannot hold (an integer beyond 64 bits in details).
    Raises ``TypeError`` / ``OverflowError`` for a value neither can encode."""
    envelope = _Envelope(VERSION, list(scope), list(limits), payload)
    marker = 0
    try:
        body = _packer.encode(envelope)
    except OverflowError:
        body, marker = _json.encode(envelope), _JSON_BIT
    size = len(body)
    if size >= COMPRESS_MIN_BYTES:
        compressed = _codec().compress(body, asbytes=True)
        if len(compressed) + _LENGTH.size < size:
            return bytes((marker | _LZ4_BIT,)) + _LENGTH.pack(size) + compressed, size
    return bytes((marker,)) + body, size


def _envelope_bytes(plaintext: bytes, limit: int) -> tuple[bool, bytes]:
    """``(JSON?, envelope)`` of a plaintext: as is, or decompressed when its stated size is at most ``limit`` bytes
    (a larger one is refused, never decompressed)."""
    if not plaintext:
        raise Refused("undecodable (empty)")
    marker = plaintext[0]
    if marker in _EARLIER:
        raise Refused("a value of an earlier format (JSON)", suspicious=False)
    if marker > _LZ4_BIT | _JSON_BIT:
        raise Refused("undecodable (no marker of this format)")
    if not marker & _LZ4_BIT:
        return bool(marker & _JSON_BIT), plaintext[1:]
    if len(plaintext) < 1 + _LENGTH.size:
        raise Refused("undecodable (truncated)")
    (size,) = _LENGTH.unpack_from(plaintext, 1)
    if size > limit:
        raise Refused(f"larger than AUDIT_CACHE__MAX_VALUE_BYTES ({limit}) once decompressed")
    try:
        out = _codec().decompress(memoryview(plaintext)[1 + _LENGTH.size:], decompressed_size=size, asbytes=True)
    except Exception:  # pyarrow.ArrowException (corrupt data, or not the stated size): nothing to trust
        raise Refused("undecodable (not LZ4 of the stated size)") from None
    if len(out) != size:
        raise Refused("undecodable (not LZ4 of the stated size)")
    return bool(marker & _JSON_BIT), out


def decode_value(plaintext: bytes, limit: int, scope: Sequence[str],
                 payload_type: Any = Any) -> tuple[tuple[int, ...], Any]:
    """``(limits, payload)`` of an L2 value for ``scope``, the payload decoded as ``payload_type`` (a msgspec type;
    ``Any``: builtins) in the same pass; :class:`Refused` when it is not one (decompression stops at ``limit``
    bytes). A value of another format is a plain miss (not suspicious)."""
    is_json, body = _envelope_bytes(plaintext, limit)
    decoder = _decoders.get((is_json, payload_type))
    if decoder is None:
        kind = msgspec.json if is_json else msgspec.msgpack
        decoder = _decoders[is_json, payload_type] = kind.Decoder(_Envelope[payload_type])  # type: ignore[valid-type]
    try:
        doc = decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        try:
            head = (msgspec.json if is_json else msgspec.msgpack).decode(body)
            version = head[0] if isinstance(head, list) and head else None
        except msgspec.DecodeError:
            version = None
        if isinstance(version, int) and version != VERSION:
            raise Refused(f"a value of another format ({version}, not {VERSION})", suspicious=False) from None
        raise Refused("undecodable") from None
    if doc.v != VERSION:
        raise Refused(f"a value of another format ({doc.v}, not {VERSION})", suspicious=False)
    if len(doc.s) != len(scope) or len(doc.l) != len(scope) or tuple(doc.s) != tuple(scope):
        raise Refused("not a result of this query's scope")
    return tuple(doc.l), doc.p


# -- pages ---------------------------------------------------------------------------------------------------------


class _Row(TypedDict):
    """The ``__dict__`` of a :class:`StoredAuditEvent`, field by field (checked against the model below)."""

    event_id: uuid.UUID
    event_time: _Aware
    action: str
    status: EventStatus
    principal_id: str
    organization_id: str | None
    target_resource_type: str | None
    target_resource_id: str | None
    outcome_description: str | None
    data_classification: DataClassification
    retention_policy: str
    correlation_id: str | None
    session_id: str | None
    source: str | None
    event_version: str
    processing_latency_ms: int | None
    details: dict[str, Any]
    ingested_at: _Aware | None
    stored_content_hash: bytes | None


class _Page(msgspec.Struct):
    rows: list[_Row]
    next: str | None
    limit: int
    extra: dict[str, Any] = {}


_FIELDS = frozenset(_Row.__annotations__)
if _FIELDS != set(StoredAuditEvent.model_fields):  # a field added to the model must be added to the cache's rows
    raise RuntimeError(f"cache_codec._Row does not match StoredAuditEvent: {sorted(_FIELDS ^ set(StoredAuditEvent.model_fields))}")
_EMPTY_PRIVATE = {name: None for name in AuditEvent.__private_attributes__}
# Every event decoded here shares this one set as its __pydantic_fields_set__ (all fields are set): the events are
# frozen, and pydantic copies the set before any change (model_copy, deepcopy, pickle), so it is never mutated; a
# set per event was a third of the cost of making one.
_FIELDS_SET = set(_FIELDS)


def _slot_setter(name: str) -> Any:
    """The setter of a slot the model class inherits (``__dict__``, ``__pydantic_fields_set__``, …): called directly
    it is half the cost of ``object.__setattr__``, which looks the slot up on every call."""
    owner = next(k for k in StoredAuditEvent.__mro__ if name in vars(k))
    return vars(owner)[name].__set__


def _row(event: StoredAuditEvent) -> dict[str, Any]:
    if type(event) is StoredAuditEvent:
        return event.__dict__  # every field, as the model holds it
    return {name: getattr(event, name, None) for name in _FIELDS}


_set_dict, _set_fields_set, _set_extra, _set_private = (
    _slot_setter(n) for n in ("__dict__", "__pydantic_fields_set__", "__pydantic_extra__", "__pydantic_private__"))


def _events(rows: list[_Row]) -> list[StoredAuditEvent]:
    """Events from decoded rows, without validation (see the module docstring): what ``model_construct`` does —
    every field set, the private cache empty — without its per-call overhead."""
    cls, new, fields, private = StoredAuditEvent, object.__new__, _FIELDS_SET, _EMPTY_PRIVATE
    set_dict, set_fields_set, set_extra, set_private = _set_dict, _set_fields_set, _set_extra, _set_private
    out = []
    for row in rows:
        when = row["event_time"]
        if when.tzinfo is not _UTC:  # written by this module always in UTC; normalized should it not be
            row["event_time"] = when.astimezone(_UTC)
        event = new(cls)
        set_dict(event, row)
        set_fields_set(event, fields)
        set_extra(event, None)
        set_private(event, private.copy())
        out.append(event)
    return out


class PageToJson:
    """A :class:`~audit_db_core.query.QueryPage` for a cache: ``page_to_json(page)`` gives JSON-ready builtins (for
    any :class:`~audit_db_core.interfaces.ResultCache`), ``page_to_json.document(page)`` the typed document
    :func:`encode_value` writes (what :class:`~audit_db_core.cache.QueryCache` stores)."""

    def document(self, page: QueryPage) -> _Page:
        return _Page([_row(e) for e in page.events], page.next_cursor, page.limit,  # type: ignore[misc]
                     page.extra)

    def __call__(self, page: QueryPage) -> dict[str, Any]:
        return msgspec.to_builtins(self.document(page), enc_hook=str)  # type: ignore[no-any-return]


class PageFromJson:
    """The inverse of :class:`PageToJson`: ``page_from_json(doc)`` from builtins. Raises ``msgspec.ValidationError``
    on anything else. ``payload_type`` and ``from_typed`` let :func:`decode_value` decode a page in the same pass as
    its envelope (what :class:`~audit_db_core.cache.QueryCache` does)."""

    payload_type = _Page

    def __call__(self, doc: Any) -> QueryPage:
        return self.from_typed(msgspec.convert(doc, _Page))

    @staticmethod
    def from_typed(doc: _Page) -> QueryPage:
        return QueryPage(events=_events(doc.rows), next_cursor=doc.next, limit=doc.limit, extra=doc.extra)


page_to_json = PageToJson()
page_from_json = PageFromJson()
