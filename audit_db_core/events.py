"""The audit event: fields, validation, canonical form and content hash.

An :class:`AuditEvent` is immutable. The library fills ``event_id`` (a UUIDv7, time-ordered) and ``event_time``
(now, UTC) when they are absent. Bad input raises :class:`~audit_db_core.errors.AuditValidationError`, which
names every offending field and the reason, and never echoes the value (it may be PHI).

The *canonical form* is a compact JSON object of every event field (``details`` included, ``ingested_at`` and
the hash itself excluded) with sorted keys, UTC times written ``YYYY-MM-DDTHH:MM:SS.ffffffZ``, and numbers in
plain decimal notation (so ``1``, ``1.0`` and ``1e0`` are one number, as they are for ``jsonb``). The
``content_hash`` is SHA-256 over its UTF-8 bytes; it is the same before and after a round trip through
PostgreSQL.

Example::

    event = AuditEvent(action="patient.record.read", status="success", principal_id="dr.house",
                       target_resource_type="Patient", target_resource_id="p-123",
                       data_classification="PHI", details={"fields": ["allergies"]})
    event.content_hash.hex()
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import json
import math
import operator
import os
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any, ClassVar

import msgspec
import pydantic
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_serializer, field_validator

from audit_db_core.errors import AuditValidationError


class EventStatus(str, enum.Enum):
    ATTEMPT = "attempt"
    SUCCESS = "success"
    FAILURE = "failure"


class DataClassification(str, enum.Enum):
    PUBLIC = "PUBLIC"
    INTERNAL = "INTERNAL"
    CONFIDENTIAL = "CONFIDENTIAL"
    PHI = "PHI"


#: Limits on ``details`` (the canonical JSON size in bytes, and the nesting depth of objects and arrays).
MAX_DETAILS_BYTES = 64 * 1024
MAX_DETAILS_DEPTH = 16

#: Column order of ``audit_log`` as the library writes it (COPY) and reads it.
EVENT_COLUMNS: tuple[str, ...] = (
    "event_id",
    "event_time",
    "action",
    "status",
    "principal_id",
    "organization_id",
    "target_resource_type",
    "target_resource_id",
    "outcome_description",
    "data_classification",
    "retention_policy",
    "correlation_id",
    "session_id",
    "source",
    "event_version",
    "processing_latency_ms",
    "details",
)
STORED_COLUMNS: tuple[str, ...] = (*EVENT_COLUMNS, "content_hash", "ingested_at")

_ACTION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:/\-]*$"
_POLICY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"


_VERSION_7 = 0x7 << 76
_VARIANT_RFC = 0x2 << 62
_CLEAR = ~((0xF << 76) | (0x3 << 62))


def new_event_id() -> uuid.UUID:
    """A UUIDv7 (RFC 9562): the 48-bit Unix time in milliseconds, then 74 random bits. Ids sort by creation time
    and index well; the embedded time is the real clock (no counter that runs ahead under load)."""
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    return uuid.UUID(int=value & _CLEAR | _VERSION_7 | _VARIANT_RFC)


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class _EventFields(BaseModel):
    """The fields of an event with every rule pydantic-core checks on its own (types, lengths, patterns, ranges,
    enums), ``event_time`` parsed and in UTC, ``details`` a mapping. :class:`AuditEvent` adds the rules on text
    (no NUL, valid Unicode) and on ``details`` (JSON types, depth, size), written in Python."""

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=False, use_enum_values=False)

    event_id: uuid.UUID = Field(default_factory=new_event_id)
    event_time: dt.datetime = Field(default_factory=utc_now, description="timezone-aware; stored in UTC")
    action: str = Field(min_length=1, max_length=128, pattern=_ACTION_PATTERN, description="e.g. patient.record.read")
    status: EventStatus
    principal_id: str = Field(min_length=1, max_length=256, description="the user or service that acted")
    organization_id: str | None = Field(default=None, min_length=1, max_length=256)
    target_resource_type: str | None = Field(default=None, min_length=1, max_length=128)
    target_resource_id: str | None = Field(default=None, min_length=1, max_length=256)
    outcome_description: str | None = Field(default=None, max_length=4000)
    data_classification: DataClassification = DataClassification.INTERNAL
    retention_policy: str = Field(default="standard", min_length=1, max_length=64, pattern=_POLICY_PATTERN)
    correlation_id: str | None = Field(default=None, min_length=1, max_length=128)
    session_id: str | None = Field(default=None, min_length=1, max_length=128)
    source: str | None = Field(default=None, min_length=1, max_length=128, description="the emitting service")
    event_version: str = Field(default="1", min_length=1, max_length=16)
    processing_latency_ms: int | None = Field(default=None, ge=0, le=2_147_483_647)
    details: dict[str, Any] = Field(default_factory=dict, description="a JSON object, at most 64 KiB and 16 deep")

    @field_validator("event_time", mode="before")
    @classmethod
    def _parse_time(cls, value: Any) -> Any:
        return aware_time(value)

    @field_validator("event_time")
    @classmethod
    def _to_utc(cls, value: dt.datetime) -> dt.datetime:
        try:
            return value.astimezone(dt.UTC)
        except OverflowError:
            raise ValueError("is out of the supported range (years 1 to 9999 in UTC)") from None

    @field_validator("details", mode="before")
    @classmethod
    def _details_object(cls, value: Any) -> Any:
        if value is None:
            return {}
        if type(value) is not dict and not isinstance(value, Mapping):
            raise ValueError(f"must be a JSON object (a dict), not {type(value).__name__}")
        return value


class AuditEvent(_EventFields):
    """One audit record: who (principal) did what (action) to which resource, when, and with what outcome."""

    _subject: ClassVar[str] = "AuditEvent"
    _canonical: bytes | None = PrivateAttr(default=None)
    _details_json: str | None = PrivateAttr(default=None)
    _hash: bytes | None = PrivateAttr(default=None)

    def __init__(self, **data: Any) -> None:
        if type(self) is AuditEvent and self._init_fast(data):
            return
        self._init_checked(data)

    def _init_fast(self, data: dict[str, Any]) -> bool:
        """Build the event with every rule checked at C speed (:func:`_fast_event`), or return False when only
        :meth:`_init_checked` can tell."""
        fast = _fast_event(data)
        if fast is None:
            return False
        fields, given, canonical, details_text, details = fast
        fields["details"] = details
        # What pydantic's __init__ would set (model_construct, from_row), with the cache already filled.
        object.__setattr__(self, "__dict__", fields)
        object.__setattr__(self, "__pydantic_fields_set__", given)
        object.__setattr__(self, "__pydantic_extra__", None)
        object.__setattr__(self, "__pydantic_private__", {
            "_canonical": canonical, "_details_json": details_text, "_hash": hashlib.sha256(canonical).digest()})
        return True

    def _init_checked(self, data: dict[str, Any]) -> None:
        """Every rule checked one by one; a refusal names each offending field and why."""
        try:
            super().__init__(**data)
        except pydantic.ValidationError as exc:
            raise AuditValidationError.from_pydantic(self._subject, exc) from None
        # The content hash is part of the event, fixed when it is made (events are immutable): computing it here
        # keeps it off the write path, and validates details (JSON types, text, depth, size) in the same pass.
        # Events read back (model_construct) compute it only when asked.
        try:
            self._compute_canonical()
        except ValueError as exc:
            raise AuditValidationError(self._subject, [("details", str(exc))]) from None
        details_text = self.__pydantic_private__["_details_json"]
        size = _utf8_size(details_text)
        if size > MAX_DETAILS_BYTES:
            raise AuditValidationError(
                self._subject, [("details", f"is {size} bytes as JSON; the limit is {MAX_DETAILS_BYTES}")]
            )
        # Keep a private copy, parsed from the hashed text: a caller mutating its own dict afterwards cannot make
        # the event disagree with its hash, and details read back from the database compare equal.
        self.__dict__["details"] = json.loads(details_text)

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any) -> AuditEvent:  # type: ignore[override]
        if isinstance(obj, Mapping) and not kwargs:
            return cls(**obj)  # through __init__, which names the fields
        try:
            return super().model_validate(obj, **kwargs)
        except pydantic.ValidationError as exc:
            raise AuditValidationError.from_pydantic(cls._subject, exc) from None

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> AuditEvent:  # type: ignore[override]
        """A copy; with ``update``, a new validated event (its hash computed afresh, never the original's)."""
        if not update:
            return super().model_copy(deep=deep)
        return type(self)(**{**self.model_dump(), **update})

    @field_validator(
        "action", "principal_id", "organization_id", "target_resource_type", "target_resource_id",
        "outcome_description", "retention_policy", "correlation_id", "session_id", "source", "event_version",
    )
    @classmethod
    def _text_is_storable(cls, value: Any) -> Any:
        if isinstance(value, str):
            check_text(value)
        return value

    # -- canonical form ------------------------------------------------------------------------------------------

    def canonical_dict(self) -> dict[str, Any]:
        """Every hashed field as JSON-ready values (times as UTC strings, enums as their values)."""
        return {
            "event_id": str(self.event_id),
            "event_time": format_time(self.event_time),
            "action": self.action,
            "status": self.status.value,
            "principal_id": self.principal_id,
            "organization_id": self.organization_id,
            "target_resource_type": self.target_resource_type,
            "target_resource_id": self.target_resource_id,
            "outcome_description": self.outcome_description,
            "data_classification": self.data_classification.value,
            "retention_policy": self.retention_policy,
            "correlation_id": self.correlation_id,
            "session_id": self.session_id,
            "source": self.source,
            "event_version": self.event_version,
            "processing_latency_ms": self.processing_latency_ms,
            "details": self.details,
        }

    def canonical_bytes(self) -> bytes:
        """The canonical form, UTF-8 encoded (what :attr:`content_hash` is computed over)."""
        cache = self.__pydantic_private__  # direct: pydantic's attribute hook is slow on the ingest path
        if cache["_canonical"] is None:
            self._compute_canonical()
        return cache["_canonical"]  # type: ignore[no-any-return]

    def _compute_canonical(self) -> None:
        # The canonical text is the sorted-key JSON of canonical_dict(); built as
        # {<fields before "details">,"details":<canonical details>,<fields after>} so that the details text is
        # computed once and serves as the jsonb column's value too.
        # The top-level keys are fixed, so _CANONICAL_TEMPLATE holds them in sorted order and each scalar goes
        # through json's C string escaper (what _emit uses): no dict, no sort, no encoder per event.
        details = canonical_json(self.details, "details")
        latency = self.processing_latency_ms
        text = _CANONICAL_TEMPLATE % (
            _text(self.action),
            _text(self.correlation_id),
            _text(self.data_classification.value),
            details,
            _text(str(self.event_id)),
            _text(format_time(self.event_time)),
            _text(self.event_version),
            _text(self.organization_id),
            _text(self.outcome_description),
            _text(self.principal_id),
            "null" if latency is None else str(int(latency)),
            _text(self.retention_policy),
            _text(self.session_id),
            _text(self.source),
            _text(self.status.value),
            _text(self.target_resource_id),
            _text(self.target_resource_type),
        )
        cache = self.__pydantic_private__
        cache["_details_json"] = details
        cache["_canonical"] = text.encode()
        cache["_hash"] = hashlib.sha256(cache["_canonical"]).digest()

    @property
    def content_hash(self) -> bytes:
        """SHA-256 of :meth:`canonical_bytes` (32 bytes)."""
        cache = self.__pydantic_private__
        if cache["_hash"] is None:
            self._compute_canonical()
        return cache["_hash"]  # type: ignore[no-any-return]

    def details_json(self) -> str:
        """``details`` as JSON text for the ``jsonb`` column (its canonical text: sorted keys, plain numbers)."""
        cache = self.__pydantic_private__
        if cache["_details_json"] is None:
            self._compute_canonical()
        return cache["_details_json"]  # type: ignore[no-any-return]

    def row(self) -> tuple[Any, ...]:
        """The values for :data:`EVENT_COLUMNS` plus ``content_hash``, as written to ``audit_log``."""
        cache = self.__pydantic_private__
        if cache["_hash"] is None:
            self._compute_canonical()
        return _row(self.__dict__, cache["_details_json"], cache["_hash"])


def event_row(data: Mapping[str, Any]) -> tuple[Any, ...]:
    """``AuditEvent(**data).row()`` without building the event: the same rules and errors, the same row.

    What ``insert_many`` writes for a mapping. Example::

        event_row({"action": "user.login", "status": "success", "principal_id": "u1"})
    """
    fast = _fast_event(data if type(data) is dict else dict(data))
    if fast is None:
        return AuditEvent(**data).row()
    fields, _, canonical, details_text, _ = fast
    return _row(fields, details_text, hashlib.sha256(canonical).digest())


def _row(fields: Mapping[str, Any], details_text: str, digest: bytes) -> tuple[Any, ...]:
    return (
        fields["event_id"],
        fields["event_time"],
        fields["action"],
        fields["status"]._value_,
        fields["principal_id"],
        fields["organization_id"],
        fields["target_resource_type"],
        fields["target_resource_id"],
        fields["outcome_description"],
        fields["data_classification"]._value_,
        fields["retention_policy"],
        fields["correlation_id"],
        fields["session_id"],
        fields["source"],
        fields["event_version"],
        fields["processing_latency_ms"],
        details_text,
        digest,
    )


def _fast_event(data: dict[str, Any]) -> tuple[dict[str, Any], set[str], bytes, str, Any] | None:
    """An event's fields, the names given, its canonical bytes, details text and private copy of ``details``,
    with every rule checked at C speed; None when only the checked construction can tell (it then decides, and
    names what is wrong): the fields' own rules in pydantic-core, the rest on the canonical text
    (:func:`_fast_canonical`). A false alarm only costs the checked path; nothing that path refuses passes
    here, and what passes is the same event, hash and all."""
    try:
        values = _EventFields.__pydantic_validator__.validate_python(data)
    except pydantic.ValidationError:
        return None
    fields = values.__dict__
    fast = _fast_canonical(fields)
    if fast is None:
        return None
    return (fields, values.__pydantic_fields_set__, *fast)


#: The canonical object of an event with its keys in sorted order (``canonical_dict`` spelled out).
_CANONICAL_TEMPLATE = (
    '{"action":%s,"correlation_id":%s,"data_classification":%s,"details":%s,"event_id":%s,"event_time":%s,'
    '"event_version":%s,"organization_id":%s,"outcome_description":%s,"principal_id":%s,'
    '"processing_latency_ms":%s,"retention_policy":%s,"session_id":%s,"source":%s,"status":%s,'
    '"target_resource_id":%s,"target_resource_type":%s}'
)
_escape = json.encoder.encode_basestring  # C: json.dumps(text, ensure_ascii=False) for one string


def _text(value: str | None) -> str:
    """A text field (validated, or read back) as canonical JSON; a NUL (model_construct) still raises."""
    if value is None:
        return "null"
    if "\x00" in value:
        check_text(value)
    return _escape(value)


def _utf8_size(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode())


class StoredAuditEvent(AuditEvent):
    """An event read back from the database, with what the database added."""

    ingested_at: dt.datetime | None = None
    stored_content_hash: bytes | None = Field(default=None, description="the content_hash column as stored")

    @field_serializer("stored_content_hash", when_used="json")
    def _hex(self, value: bytes | None) -> str | None:
        return value.hex() if value is not None else None

    _subject: ClassVar[str] = "StoredAuditEvent"

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> StoredAuditEvent:
        """Build from a ``dict_row`` of ``STORED_COLUMNS`` without re-validating (the row was validated on write)."""
        return cls.from_values((*_event_values(row), row.get("content_hash"), row.get("ingested_at")))

    @classmethod
    def from_values(cls, values: Sequence[Any]) -> StoredAuditEvent:
        """Build from the values of ``STORED_COLUMNS`` in that order (a tuple row, as the library's queries select
        them) without re-validating: the row was validated on write, and the database kept it as written.

        What ``model_construct`` does, without its per-call overhead: every field is set, the private cache starts
        empty, times come out in UTC (already so from a connection whose ``TimeZone`` is UTC: then no conversion),
        enums are looked up by value. Every event read back shares one set of field names (``model_fields_set``: all
        of them), which pydantic never changes on a frozen model — a set of its own would be half an event's memory.
        Also a psycopg row factory: ``conn.cursor(row_factory=stored_event_row)``.
        """
        (event_id, event_time, action, status, principal_id, organization_id, target_resource_type,
         target_resource_id, outcome_description, data_classification, retention_policy, correlation_id, session_id,
         source, event_version, processing_latency_ms, details, content_hash, ingested_at) = values
        if event_time.tzinfo is not _UTC:
            event_time = event_time.astimezone(_UTC)
        if ingested_at is not None and ingested_at.tzinfo is not _UTC:
            ingested_at = ingested_at.astimezone(_UTC)
        obj = _new_object(cls)
        _set_dict(obj, {
            "event_id": event_id, "event_time": event_time, "action": action, "status": _STATUSES[status],
            "principal_id": principal_id, "organization_id": organization_id,
            "target_resource_type": target_resource_type, "target_resource_id": target_resource_id,
            "outcome_description": outcome_description,
            "data_classification": _CLASSIFICATIONS[data_classification],
            "retention_policy": retention_policy, "correlation_id": correlation_id, "session_id": session_id,
            "source": source, "event_version": event_version, "processing_latency_ms": processing_latency_ms,
            "details": {} if details is None else details, "ingested_at": ingested_at,
            "stored_content_hash": content_hash if content_hash is None or type(content_hash) is bytes
            else bytes(content_hash),
        })
        _set_fields_set(obj, _STORED_FIELDS)
        _set_extra(obj, None)
        _set_private(obj, _EMPTY_PRIVATE.copy())
        return obj

    @property
    def hash_matches(self) -> bool:
        """True when the stored hash equals the hash recomputed from the stored fields."""
        return self.stored_content_hash == self.content_hash


def aware_time(value: Any) -> Any:
    """Parse ISO 8601 text; refuse a naive datetime (the zone would be a guess). Other types pass through."""
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError("not an ISO 8601 timestamp") from None
    if isinstance(value, dt.datetime) and (value.tzinfo is None or value.utcoffset() is None):
        raise ValueError("must be timezone-aware (a naive time is ambiguous); use UTC, e.g. datetime.now(UTC)")
    return value


# -- canonical JSON ------------------------------------------------------------------------------------------------


def format_time(value: dt.datetime) -> str:
    """UTC, microseconds, ``Z`` suffix: ``2026-11-29T04:19:42.000000Z``."""
    value = value.astimezone(dt.UTC)
    if type(value) is dt.datetime:  # %-formatting: faster than isoformat (and ~3x faster than strftime)
        return "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ" % (
            value.year, value.month, value.day, value.hour, value.minute, value.second, value.microsecond)
    return value.isoformat(timespec="microseconds")[:-6] + "Z"  # a subclass (pandas' Timestamp): its own


def canonical_json(value: Any, path: str = "") -> str:
    """Deterministic JSON: sorted keys, no spaces, plain-decimal numbers. Raises ValueError naming the path.

    The common case (no float that JSON would spell with an exponent or a trailing ``.0``) is one C-speed
    ``json.dumps`` after a walk that checks types, keys, depth and text; the rest goes through an exact emitter
    that writes every number in normalized plain decimal. Both produce the same text for the same value.
    """
    if _plain_json(value, 0):
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        try:
            text.encode("utf-8")
            return text
        except UnicodeEncodeError:
            pass  # the exact emitter names the offending path
    parts: list[str] = []
    _emit(value, parts, path, 0)
    return "".join(parts)


def _plain_float(literal: str) -> float:
    """A float literal of the fast path's text, refused when the canonical form spells it otherwise: with an
    exponent (``1e-7``, ``1e16``) or a trailing ``.0`` (``3.0``, ``-0.0``)."""
    if "e" in literal or literal.endswith(".0"):
        raise ValueError(f"{literal} is not in plain decimal")
    return float(literal)


#: msgspec's JSON encoder with dict keys sorted (by code point, as ``sort_keys``), UUIDs in their canonical text.
_encode_sorted = msgspec.json.Encoder(order="deterministic").encode
#: msgspec's JSON decoder, every float literal through _plain_float.
_decode_plain = msgspec.json.Decoder(float_hook=_plain_float).decode


def _fast_canonical(fields: dict[str, Any]) -> tuple[bytes, str, Any] | None:
    """The canonical bytes, the details text and the private copy of ``details`` for validated fields (an
    ``_EventFields.__dict__``), from one pass of msgspec's encoder over every field and one of its decoder over
    ``details``; None when those cannot tell (the checked construction then decides).

    msgspec writes what the canonical form writes (``_CANONICAL_TEMPLATE`` and :func:`canonical_json`: keys
    sorted, no spaces, the same string escapes, raw UTF-8, integers and plain-decimal floats alike; the tests
    hold it to every code point and to random floats), so its text is the canonical form when:

    - no NUL is escaped in it (``\\u0000``: the rule on text; a backslash followed by "u0000" is a false alarm)
      and it is UTF-8 (msgspec refuses a lone surrogate);
    - every float in ``details`` is spelled in plain decimal (checked on each float literal as the details
      text is decoded), and nesting is within the limit (fewer containers than the limit, or else walked);
    - the decoded ``details`` equal the given ones. That refuses whatever msgspec writes as something else
      (NaN and infinity as ``null``, sets, bytes, datetimes, dataclasses), what it does not read back (an
      integer beyond 64 bits) and tuples (written as arrays). The decoded value is the copy the event keeps.
    """
    when = fields["event_time"]
    if when.microsecond and when.tzinfo is dt.UTC and type(when) is dt.datetime:
        top = fields  # msgspec writes this time as format_time does (it drops the fraction only when it is 0)
    else:
        top = {**fields, "event_time": format_time(when)}
    details = fields["details"]
    try:
        canonical = _encode_sorted(top)
        # No string before "details" (action, correlation_id, data_classification) or after it can hold an
        # unescaped quote, so these two markers occur where the keys are and nowhere else.
        details_json = canonical[canonical.index(b'"details":') + 10 : canonical.rindex(b',"event_id":')]
        if b"\\u0000" in canonical or len(details_json) > MAX_DETAILS_BYTES:
            return None
        if details_json.count(b"{") + details_json.count(b"[") > MAX_DETAILS_DEPTH and not _plain_json(details, 0):
            return None
        copy = _decode_plain(details_json)
        return (canonical, details_json.decode(), copy) if copy == details else None
    except Exception:  # a type msgspec refuses, a surrogate, a float not in plain decimal, an integer too large
        return None


def _plain_json(value: Any, depth: int) -> bool:
    """True when ``json.dumps`` spells ``value`` canonically: only str keys, no NUL, depth within the limit,
    finite floats whose repr is already plain decimal. False sends the value through the exact emitter.

    Exact types only: a subclass (``numpy.float64``, an ``IntEnum``, a ``StrEnum``) may spell itself differently
    (``repr(np.float64(3.0))`` is ``'np.float64(3.0)'``, so the ``.0`` test would miss it and json would write
    ``3.0`` where the canonical form is ``3``). Plain loops: ``all()`` over a generator costs twice as much here.
    """
    kind = type(value)
    if kind is str:
        return "\x00" not in value
    if value is None or kind is int or kind is bool:
        return True
    if kind is float:
        text = repr(value)
        return "e" not in text and not text.endswith(".0") and math.isfinite(value)
    if depth >= MAX_DETAILS_DEPTH:
        return False
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str or "\x00" in key or not _plain_json(item, depth + 1):
                return False
        return True
    if kind is list or kind is tuple:
        for item in value:
            if not _plain_json(item, depth + 1):
                return False
        return True
    return False


def _emit(value: Any, out: list[str], path: str, depth: int) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, str):
        check_text(value, path)
        out.append(json.dumps(value, ensure_ascii=False))
    elif isinstance(value, int):
        out.append(str(int(value)))
    elif isinstance(value, float):
        out.append(_number(value, path))
    elif isinstance(value, Mapping):
        if depth >= MAX_DETAILS_DEPTH:
            raise ValueError(f"{path or 'value'}: nested deeper than {MAX_DETAILS_DEPTH} levels")
        out.append("{")
        first = True
        for key in sorted(value, key=_key_of(path)):
            if not first:
                out.append(",")
            first = False
            sub = f"{path}.{key}" if path else key
            check_text(key, sub)
            out.append(json.dumps(key, ensure_ascii=False))
            out.append(":")
            _emit(value[key], out, sub, depth + 1)
        out.append("}")
    elif isinstance(value, list | tuple):
        if depth >= MAX_DETAILS_DEPTH:
            raise ValueError(f"{path or 'value'}: nested deeper than {MAX_DETAILS_DEPTH} levels")
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _emit(item, out, f"{path}[{i}]", depth + 1)
        out.append("]")
    else:
        raise ValueError(f"{path or 'value'}: {type(value).__name__} is not a JSON type (convert it to a string)")


def _key_of(path: str) -> Any:
    def key(k: Any) -> str:
        if not isinstance(k, str):
            raise ValueError(f"{path or 'value'}: object keys must be strings, not {type(k).__name__}")
        return k

    return key


def _number(value: float, path: str) -> str:
    # jsonb keeps numbers as numeric and prints them without exponent (1e100 comes back as 1000…0, 1.0 as 1.0):
    # writing every number in plain, normalized decimal makes the hash independent of that spelling.
    if not math.isfinite(value):
        raise ValueError(f"{path or 'value'}: NaN and infinity are not JSON numbers")
    d = Decimal(repr(float(value)))  # float(): a subclass's repr may not be a number (np.float64(3.0))
    if d == 0:
        return "0"  # numeric has no negative zero
    return format(d.normalize(), "f")


def check_text(text: str, path: str = "") -> None:
    where = f"{path}: " if path else ""
    if "\x00" in text:
        raise ValueError(f"{where}contains a NUL character, which PostgreSQL cannot store")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{where}is not valid Unicode (lone surrogate)") from None


_STATUSES = {s.value: s for s in EventStatus}
_CLASSIFICATIONS = {c.value: c for c in DataClassification}
_EMPTY_PRIVATE = {name: None for name in AuditEvent.__private_attributes__}
_STORED_FIELDS = set(StoredAuditEvent.model_fields)  # shared by the events from_values makes: never change it
_event_values = operator.itemgetter(*EVENT_COLUMNS)
_UTC = dt.UTC
# The slots every pydantic model has, set directly (what model_construct does through object.__setattr__).
_new_object = object.__new__
_set_dict = vars(BaseModel)["__dict__"].__set__
_set_fields_set = vars(BaseModel)["__pydantic_fields_set__"].__set__
_set_extra = vars(BaseModel)["__pydantic_extra__"].__set__
_set_private = vars(BaseModel)["__pydantic_private__"].__set__


def stored_event_row(cursor: Any) -> Callable[[Sequence[Any]], StoredAuditEvent]:
    """A psycopg row factory for a query that selects ``STORED_COLUMNS``: each row comes out as a
    :class:`StoredAuditEvent` (see :meth:`StoredAuditEvent.from_values`), with no tuple or dict in between."""
    return StoredAuditEvent.from_values
