"""What the query cache keeps in Redis, as bytes: compact JSON (``msgspec``), zlib-compressed, decoded straight
into the result type. Sealing (encryption and authentication) is :mod:`audit_db_core.cache_seal`'s; whatever does
not decode here is a :class:`~audit_db_core.cache_seal.Refused` value — a cache miss, never an error. Never pickle:
data from Redis is untrusted until authenticated, and JSON even then.

An L2 value's plaintext is the *envelope* ``{"v": VERSION, "s": [scopes], "l": [limits], "p": payload}``, as JSON,
zlib-compressed (level 1) when it is :data:`COMPRESS_MIN_BYTES` or more (a zlib stream starts with ``0x78``, the
JSON with ``{``). :data:`VERSION` is also part of the value's Redis key: a value of another format is never looked
up, and one found anyway is a plain miss.

Payloads: any JSON value (a count); a page through :data:`page_to_json` / :data:`page_from_json`, whose rows are the
``__dict__`` of :class:`~audit_db_core.events.StoredAuditEvent` — decoded by ``msgspec`` into typed values (UUID,
tz-aware datetimes, enums, bytes) and made into events without validation, as
:meth:`StoredAuditEvent.from_row <audit_db_core.events.StoredAuditEvent.from_row>` does for database rows (every
value was validated before it was stored, and the sealed value is authenticated).

Example::

    plaintext, size = encode_value(scope, limits, page_to_json.json_bytes(page))
    limits, doc = decode_value(plaintext, max_bytes, scope, page_from_json.json_type)
    page_from_json.from_typed(doc)                                    # a QueryPage equal to page
"""

from __future__ import annotations

import datetime as dt
import uuid
import zlib
from collections.abc import Sequence
from typing import Annotated, Any, Generic, TypedDict, TypeVar

import msgspec

from audit_db_core.cache_seal import Refused, inflate
from audit_db_core.events import AuditEvent, DataClassification, EventStatus, StoredAuditEvent
from audit_db_core.query import QueryPage

#: Format of the L2 values (3: msgspec JSON, rows as ``StoredAuditEvent`` fields; 2: stdlib JSON, hex hashes).
VERSION = 3
#: Below this many bytes of JSON a value is stored uncompressed (a count: zlib would only add bytes).
COMPRESS_MIN_BYTES = 256
_UTC = dt.UTC

_Aware = Annotated[dt.datetime, msgspec.Meta(tz=True)]


T = TypeVar("T")


class _Envelope(msgspec.Struct, Generic[T]):
    v: int  # VERSION
    s: list[str]  # the scope
    l: list[int]  # noqa: E741 - the limits (the field's name in the stored JSON)
    p: T  # the payload


_encoder = msgspec.json.Encoder(enc_hook=str)  # what json.dumps(default=str) did for the odd value
_any = msgspec.json.Decoder()
_envelopes: dict[Any, msgspec.json.Decoder[Any]] = {}  # per payload type: envelope and payload in one pass


def encode_value(scope: Sequence[str], limits: Sequence[int], payload: bytes) -> tuple[bytes, int]:
    """``(plaintext, JSON size)`` of an L2 value: the envelope around ``payload`` (JSON text), compressed when
    :data:`COMPRESS_MIN_BYTES` or more."""
    text = _encoder.encode(_Envelope(VERSION, list(scope), list(limits), msgspec.Raw(payload)))
    return (zlib.compress(text, 1) if len(text) >= COMPRESS_MIN_BYTES else text), len(text)


def encode_json(value: Any) -> bytes:
    """Any JSON-ready value (a payload without a codec of its own) as JSON text."""
    return _encoder.encode(value)


def decode_value(plaintext: bytes, limit: int, scope: Sequence[str],
                 payload_type: Any = Any) -> tuple[tuple[int, ...], Any]:
    """``(limits, payload)`` of an L2 value for ``scope``, the payload decoded as ``payload_type`` (a msgspec type;
    ``Any``: JSON builtins) in the same pass; :class:`Refused` when it is not one (decompression stops at ``limit``
    bytes). A value of another format is a plain miss (not suspicious)."""
    text = inflate(plaintext, limit) if plaintext[:1] == b"\x78" else plaintext
    decoder = _envelopes.get(payload_type)
    if decoder is None:
        decoder = _envelopes[payload_type] = msgspec.json.Decoder(_Envelope[payload_type])  # type: ignore[valid-type]
    try:
        doc = decoder.decode(text)
    except (msgspec.DecodeError, msgspec.ValidationError):
        try:
            version = _any.decode(text).get("v")
        except (msgspec.DecodeError, AttributeError):
            version = VERSION
        if version != VERSION:
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
_page = msgspec.json.Decoder(_Page)


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
    """A :class:`~audit_db_core.query.QueryPage` as JSON: ``page_to_json(page)`` gives JSON-ready builtins (for any
    :class:`~audit_db_core.interfaces.ResultCache`), ``page_to_json.json_bytes(page)`` the same as JSON text (what
    :class:`~audit_db_core.cache.QueryCache` stores)."""

    def _doc(self, page: QueryPage) -> _Page:
        return _Page([_row(e) for e in page.events], page.next_cursor, page.limit,  # type: ignore[misc]
                     page.extra)

    def __call__(self, page: QueryPage) -> dict[str, Any]:
        return msgspec.to_builtins(self._doc(page), enc_hook=str)  # type: ignore[no-any-return]

    def json_bytes(self, page: QueryPage) -> bytes:
        return _encoder.encode(self._doc(page))


class PageFromJson:
    """The inverse of :class:`PageToJson`: ``page_from_json(doc)`` from builtins, ``page_from_json.from_json_bytes``
    from JSON text. Raises ``msgspec.ValidationError`` / ``DecodeError`` on anything else. ``json_type`` and
    ``from_typed`` let :func:`decode_value` decode a page in the same pass as its envelope (what
    :class:`~audit_db_core.cache.QueryCache` does)."""

    json_type = _Page

    def __call__(self, doc: Any) -> QueryPage:
        return self.from_typed(msgspec.convert(doc, _Page))

    def from_json_bytes(self, data: bytes) -> QueryPage:
        return self.from_typed(_page.decode(data))

    @staticmethod
    def from_typed(doc: _Page) -> QueryPage:
        return QueryPage(events=_events(doc.rows), next_cursor=doc.next, limit=doc.limit, extra=doc.extra)


page_to_json = PageToJson()
page_from_json = PageFromJson()
