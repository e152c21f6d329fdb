"""``AuditQuery``: filters over the audit log, composed into parameterised SQL, with keyset pagination.

Results come newest first (``event_time DESC, event_id DESC``). A page holds at most ``limit`` events and a
``next_cursor`` when more remain; pass it back as ``cursor`` to get the next page. Keyset pagination never skips
or repeats a row, however deep the page. Every value goes to PostgreSQL as a parameter; the SQL text depends only
on *which* filters are set.

``include_restored=True`` also reads the months that left the log (purged, or detached after archival) and were
brought back by :meth:`PartitionManager.restore <audit_db_core.partitions.PartitionManager.restore>`: the restored
tables overlapping the query's window are found in the partition registry and the lifecycle ledger and joined to
the log with ``UNION ALL``. Without it (the default) the SQL reads ``audit_log`` alone, as it always did.

Example::

    q = AuditQuery(principal_id="dr.house", action=["patient.record.read", "patient.record.export"],
                   since=datetime(2026, 11, 1, tzinfo=UTC), limit=50)
    page = db.query(q)
    while page.next_cursor:
        page = db.query(q.model_copy(update={"cursor": page.next_cursor}))
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import functools
import hashlib
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import psycopg
import pydantic
from psycopg import sql
from psycopg.types.json import Jsonb
from pydantic import BaseModel, ConfigDict, Field, field_validator

from audit_db_core.errors import AuditValidationError
from audit_db_core.events import (
    STORED_COLUMNS,
    DataClassification,
    EventStatus,
    StoredAuditEvent,
    check_text,
    aware_time,
    canonical_json,
    format_time,
)

#: The largest page any query may ask for, whatever the settings say.
ABSOLUTE_MAX_PAGE_SIZE = 10_000
_MAX_LIST = 100


#: The fields of :meth:`AuditQuery.filters`, in declaration order; of them, the times and the lists.
_FILTER_FIELDS = ("since", "until", "principal_id", "organization_id", "action", "status", "target_resource_type",
                  "target_resource_id", "data_classification", "correlation_id", "session_id", "details_contains")
_TIME_FIELDS = frozenset({"since", "until"})
#: Where a query keeps its fingerprint: an entry of its __dict__ that is no field and no attribute name (pydantic's
#: dumps, repr, equality and hash look at the fields only); the fields a copy may change and keep it.
_FINGERPRINT = "(fingerprint)"
_PAGING_FIELDS = frozenset({"cursor", "limit"})
_LIST_FIELDS = frozenset({"action", "status", "data_classification"})


class AuditQuery(BaseModel):
    """Filters (all optional, combined with AND); lists mean "any of". ``since`` is inclusive, ``until`` exclusive."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    since: dt.datetime | None = None
    until: dt.datetime | None = None
    principal_id: str | None = Field(default=None, min_length=1, max_length=256)
    organization_id: str | None = Field(default=None, min_length=1, max_length=256)
    action: tuple[str, ...] | None = Field(default=None, description="one action or a list of them")
    status: tuple[EventStatus, ...] | None = None
    target_resource_type: str | None = Field(default=None, min_length=1, max_length=128)
    target_resource_id: str | None = Field(default=None, min_length=1, max_length=256)
    data_classification: tuple[DataClassification, ...] | None = None
    correlation_id: str | None = Field(default=None, min_length=1, max_length=128)
    session_id: str | None = Field(default=None, min_length=1, max_length=128)
    details_contains: dict[str, Any] | None = Field(default=None, description="jsonb containment: details @> this")
    limit: int | None = Field(
        default=None, ge=1, le=ABSOLUTE_MAX_PAGE_SIZE, description="page size; unset = AUDIT_QUERY__DEFAULT_PAGE_SIZE"
    )
    cursor: str | None = Field(default=None, max_length=512)
    include_restored: bool = Field(
        default=False,
        description="also read the restored tables of months no longer in the log (PartitionManager.restore)",
    )

    _subject: ClassVar[str] = "AuditQuery"

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except pydantic.ValidationError as exc:
            raise AuditValidationError.from_pydantic(self._subject, exc) from None

    @field_validator("action", "status", "data_classification", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, str):
            return (value,)
        if isinstance(value, Sequence | set | frozenset):
            items = list(value)
            if not items:
                raise ValueError("must not be an empty list (leave it unset to match every value)")
            if len(items) > _MAX_LIST:
                raise ValueError(f"at most {_MAX_LIST} values")
            return tuple(sorted({_plain(v) for v in items}, key=str))
        return (value,)

    @field_validator("action")
    @classmethod
    def _actions(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for item in value or ():
            if not isinstance(item, str) or not 1 <= len(item) <= 128:
                raise ValueError("each action must be a string of 1 to 128 characters")
        return value

    @field_validator("since", "until", mode="before")
    @classmethod
    def _aware(cls, value: Any) -> Any:
        return aware_time(value)

    @field_validator("*", mode="after")
    @classmethod
    def _storable(cls, value: Any) -> Any:
        for item in value if isinstance(value, tuple) else (value,):
            if isinstance(item, str):
                check_text(item)
        return value

    @field_validator("details_contains")
    @classmethod
    def _json_object(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            if not value:
                raise ValueError("must not be empty (leave it unset to match every event)")
            canonical_json(value)
        return value

    @field_validator("until")
    @classmethod
    def _window(cls, value: dt.datetime | None, info: pydantic.ValidationInfo) -> dt.datetime | None:
        since = info.data.get("since")
        if value is not None and since is not None and since >= value:
            raise ValueError("must be later than since (the window is [since, until))")
        return value

    # -- shape ---------------------------------------------------------------------------------------------------

    def filters(self) -> dict[str, Any]:
        """The filters only (no limit, no cursor), JSON-ready: what a cursor and a cache key are bound to.

        What ``model_dump(mode="json", exclude={"limit", "cursor"}, exclude_none=True)`` gives, with times as UTC
        ``…Z`` text, built field by field (every page with a next page and every cache key needs it: pydantic's
        serializer costs several times more)."""
        data: dict[str, Any] = {}
        values = self.__dict__
        for name in _FILTER_FIELDS:
            value = values[name]
            if value is None:
                continue
            if name in _TIME_FIELDS:
                data[name] = format_time(value)
            elif name in _LIST_FIELDS:
                data[name] = [_plain(v) for v in value]
            elif name == "details_contains":  # any JSON value: pydantic's own JSON form, as model_dump gives it
                data[name] = self.model_dump(mode="json", include={name})[name]
            else:
                data[name] = value
        # include_restored only when set: the default query keeps the cursors and cache keys it always had
        if self.include_restored:
            data["include_restored"] = True
        return data

    def fingerprint(self) -> str:
        """SHA-256 of the canonical JSON of :meth:`filters` (hex); computed once per query (the query is frozen).

        Every page with a next page needs it for its cursor, and every page read with a cursor to check it: kept
        with the query, and across :meth:`model_copy` when only ``cursor`` or ``limit`` change (a paging loop)."""
        found: str | None = self.__dict__.get(_FINGERPRINT)
        if found is None:
            data = self.filters()
            text = canonical_json(data) if self.details_contains is not None else _canonical_filters(data)
            found = self.__dict__[_FINGERPRINT] = hashlib.sha256(text.encode()).hexdigest()
        return found

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> AuditQuery:
        """A copy (see pydantic's ``model_copy``); a copy with other filters computes its own fingerprint."""
        copied = super().model_copy(update=update, deep=deep)
        if update and not set(update) <= _PAGING_FIELDS:
            copied.__dict__.pop(_FINGERPRINT, None)
        return copied


@dataclass(frozen=True)
class QueryPage:
    """One page of results, newest first."""

    events: list[StoredAuditEvent]
    next_cursor: str | None
    limit: int
    extra: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.events)

    def __iter__(self) -> Any:
        return iter(self.events)


# -- cursor --------------------------------------------------------------------------------------------------------


def encode_cursor(query: AuditQuery, last: StoredAuditEvent) -> str:
    # {"t":…,"i":…,"f":…} as json.dumps(…, separators=(",", ":")) writes it: the three values need no escaping
    payload = f'{{"t":"{format_time(last.event_time)}","i":"{last.event_id}","f":"{query.fingerprint()[:16]}"}}'
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


_escape = json.encoder.encode_basestring  # C: json.dumps(text, ensure_ascii=False) for one string


def _canonical_filters(data: dict[str, Any]) -> str:
    """``canonical_json(data)`` for filters without ``details_contains``: every value is text (validated as
    storable), a list of text, or ``True`` (``include_restored``), and every key a plain name — so the sorted-key
    JSON is spelled out here rather than by an encoder made per call."""
    parts = []
    for key in sorted(data):
        value = data[key]
        if value is True:
            parts.append(f'"{key}":true')
        elif isinstance(value, list):
            parts.append(f'"{key}":[{",".join(map(_escape, value))}]')
        else:
            parts.append(f'"{key}":{_escape(value)}')
    return "{" + ",".join(parts) + "}"


def decode_cursor(query: AuditQuery) -> tuple[dt.datetime, uuid.UUID] | None:
    if query.cursor is None:
        return None
    bad = AuditValidationError("AuditQuery", [("cursor", "is not a cursor returned by this library")])
    try:
        raw = base64.urlsafe_b64decode(query.cursor + "=" * (-len(query.cursor) % 4))
        payload = json.loads(raw)
        when = dt.datetime.fromisoformat(payload["t"].replace("Z", "+00:00"))
        event_id = uuid.UUID(payload["i"])
        fingerprint = payload["f"]
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError, AttributeError):
        raise bad from None
    if when.tzinfo is None:
        raise bad
    if fingerprint != query.fingerprint()[:16]:
        raise AuditValidationError(
            "AuditQuery", [("cursor", "belongs to a query with other filters; start again without a cursor")]
        )
    return when, event_id


# -- SQL -----------------------------------------------------------------------------------------------------------

_LOG = "audit_log"
_TABLE = sql.Identifier(_LOG)
_SELECT_COLUMNS = sql.SQL(", ").join(sql.Identifier(c) for c in STORED_COLUMNS)


def page_size(query: AuditQuery, max_page_size: int, default_page_size: int = 100) -> int:
    """The page size a query gets: its ``limit``, else the default (never above the cap)."""
    if query.limit is None:
        return min(default_page_size, max_page_size)
    if query.limit > max_page_size:
        raise AuditValidationError(
            "AuditQuery", [("limit", f"must be at most {max_page_size} (the page size cap); page with the cursor")]
        )
    return query.limit


#: The equality filters and the "any of" filters, in the order their conditions appear in the SQL.
_EQ_COLUMNS = ("principal_id", "organization_id", "target_resource_type", "target_resource_id", "correlation_id",
               "session_id")
_ANY_COLUMNS = ("action", "status", "data_classification")
#: A condition of the WHERE clause by its operator: the SQL around the column identifier (``{}``).
_CONDITIONS = {">=": "{} >= %s", "<": "{} < %s", "=": "{} = %s", "any": "{} = ANY(%s)", "@>": "{} @> %s"}
#: The shape of a query: (column, operator) of each condition, in order; ``None`` for the keyset cursor condition.
Shape = tuple[tuple[str, str] | None, ...]


def query_shape(query: AuditQuery, *, with_cursor: bool) -> tuple[Shape, list[Any]]:
    """Which conditions ``query`` has (its *shape*: the SQL text depends on nothing else) and their parameters."""
    shape: list[tuple[str, str] | None] = []
    params: list[Any] = []
    if query.since is not None:
        shape.append(("event_time", ">="))
        params.append(query.since)
    if query.until is not None:
        shape.append(("event_time", "<"))
        params.append(query.until)
    for column in _EQ_COLUMNS:
        value = getattr(query, column)
        if value is not None:
            shape.append((column, "="))
            params.append(value)
    for column in _ANY_COLUMNS:
        values = getattr(query, column)
        if values is not None:
            if len(values) == 1:
                shape.append((column, "="))
                params.append(_plain(values[0]))
            else:
                shape.append((column, "any"))
                params.append([_plain(v) for v in values])
    if query.details_contains is not None:
        shape.append(("details", "@>"))
        params.append(Jsonb(query.details_contains))
    if with_cursor:
        position = decode_cursor(query)
        if position is not None:
            shape.append(None)
            params.extend(position)
    return tuple(shape), params


@functools.lru_cache(maxsize=512)
def _where(shape: Shape) -> sql.Composable:
    conds: list[sql.Composable] = []
    for cond in shape:
        if cond is None:
            conds.append(sql.SQL("({}, {}) < (%s, %s)").format(sql.Identifier("event_time"),
                                                              sql.Identifier("event_id")))
        else:
            column, op = cond
            conds.append(sql.SQL(_CONDITIONS[op]).format(sql.Identifier(column)))
    if not conds:
        return sql.SQL("")
    return sql.SQL(" WHERE ") + sql.SQL(" AND ").join(conds)


def where_clause(query: AuditQuery, *, with_cursor: bool) -> tuple[sql.Composable, list[Any]]:
    """``WHERE …`` (or nothing) and its parameters. Only fixed SQL fragments and identifiers enter the text."""
    shape, params = query_shape(query, with_cursor=with_cursor)
    return _where(shape), params


# The restored tables a query with include_restored reads: for each month that left the log (purged, or detached
# after archival) and overlaps the window, the newest table its restores (ledgered with their table) loaded that
# still exists. Months still attached are left out: their rows are in audit_log already, a copy would repeat them.
# to_regclass(quote_ident(...)) resolves the name as the unqualified identifier of the page query will.
_RESTORED_TABLES = sql.SQL("""
SELECT restored.name
FROM audit_partitions p
CROSS JOIN LATERAL (
    SELECT l.details ->> 'table' AS name
    FROM audit_lifecycle_ledger l
    WHERE l.partition_name = p.partition_name AND l.operation = 'restore' AND l.outcome = 'ok'
      AND to_regclass(quote_ident(l.details ->> 'table')) IS NOT NULL
    ORDER BY l.entry_id DESC
    LIMIT 1
) restored
WHERE (p.state = 'purged' OR p.detached)
  AND (%(since)s::timestamptz IS NULL OR p.range_end > %(since)s::timestamptz)
  AND (%(until)s::timestamptz IS NULL OR p.range_start < %(until)s::timestamptz)
ORDER BY p.range_start
""")


def restored_tables(conn: psycopg.Connection[Any], query: AuditQuery) -> list[str]:
    """The restored tables ``query`` reads besides ``audit_log`` (none unless ``query.include_restored``).

    Reads the partition registry and the lifecycle ledger: the role needs ``audit_reader`` (or
    ``audit_maintainer``); ``audit_writer`` alone is refused with a ComplianceError naming the privilege."""
    if not query.include_restored:
        return []
    rows = conn.execute(_RESTORED_TABLES, {"since": query.since, "until": query.until}).fetchall()
    return [str(r[0]) for r in rows]


def _source(restored: Sequence[str]) -> sql.Composable:
    """What the query reads: ``audit_log``, or it and the restored tables as one ``UNION ALL`` (the filters of the
    outer query are pushed down into every branch by the planner, so partition pruning still applies)."""
    if not restored:
        return _TABLE
    branches = [sql.SQL("SELECT {} FROM {}").format(_SELECT_COLUMNS, sql.Identifier(t))
                for t in (_LOG, *restored)]
    return sql.SQL("({}) AS {}").format(sql.SQL(" UNION ALL ").join(branches), sql.Identifier("audit_events"))


def select_statement(query: AuditQuery, limit: int, restored: Sequence[str] = ()) -> tuple[sql.Composed, list[Any]]:
    """The page query for ``limit`` rows (see :func:`page_size`); one more row is fetched to know whether a next
    page exists. ``restored``: tables from :func:`restored_tables` read along with the log."""
    shape, params = query_shape(query, with_cursor=True)
    return _select(shape, tuple(restored)), [*params, limit + 1]


def count_statement(query: AuditQuery, restored: Sequence[str] = ()) -> tuple[sql.Composed, list[Any]]:
    shape, params = query_shape(query, with_cursor=False)
    return _count(shape, tuple(restored)), params


def page_query(query: AuditQuery, limit: int, restored: Sequence[str] = ()) -> tuple[bytes | sql.Composed, list[Any]]:
    """:func:`select_statement` as the bytes sent to the server, composed once per query shape (the text depends
    only on which filters are set) and then taken from a cache: only the parameters are built per call. With
    restored tables (rare, and their names vary) the statement itself."""
    shape, params = query_shape(query, with_cursor=True)
    params.append(limit + 1)
    return (_select(shape, tuple(restored)) if restored else _select_text(shape)), params


def count_query(query: AuditQuery, restored: Sequence[str] = ()) -> tuple[bytes | sql.Composed, list[Any]]:
    """:func:`count_statement` as bytes, composed once per query shape (see :func:`page_query`)."""
    shape, params = query_shape(query, with_cursor=False)
    return (_count(shape, tuple(restored)) if restored else _count_text(shape)), params


@functools.lru_cache(maxsize=512)
def _select(shape: Shape, restored: tuple[str, ...]) -> sql.Composed:
    return (sql.SQL("SELECT {} FROM {}").format(_SELECT_COLUMNS, _source(restored)) + _where(shape)
            + sql.SQL(" ORDER BY {} DESC, {} DESC LIMIT %s").format(sql.Identifier("event_time"),
                                                                    sql.Identifier("event_id")))


@functools.lru_cache(maxsize=512)
def _count(shape: Shape, restored: tuple[str, ...]) -> sql.Composed:
    return sql.SQL("SELECT count(*) FROM {}").format(_source(restored)) + _where(shape)


# ASCII only (fixed fragments and the library's identifiers): the same bytes in every client encoding.
@functools.lru_cache(maxsize=512)
def _select_text(shape: Shape) -> bytes:
    return _select(shape, ()).as_bytes(None)


@functools.lru_cache(maxsize=512)
def _count_text(shape: Shape) -> bytes:
    return _count(shape, ()).as_bytes(None)


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, EventStatus | DataClassification) else value
