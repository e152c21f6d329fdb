"""HIPAA reports over the audit log: access to a patient's record, a user's activity, the accounting of
disclosures, and the per-organization compliance summary — as pandas DataFrames, exported to CSV, JSON or Parquet.

Every report covers one period ``[since, until)`` (``since`` inclusive, ``until`` exclusive; timezone-aware
datetimes, ISO 8601 text, or dates meaning midnight UTC) and, except the summary, one organization. Rows are read
through a server-side cursor, ``AUDIT_REPORTS__BATCH_ROWS`` at a time, and come back oldest first with typed columns
(times ``datetime64[us, UTC]``, text ``str``, flags ``bool``, counts ``int64``).

=======================  ====================================================  ===================================
report                   rows                                                  served by the index
=======================  ====================================================  ===================================
``access_report``        every event on one target resource (a patient)        ``audit_log_target_time``
``activity_report``      every event of one principal (a user)                 ``audit_log_principal_time``
``disclosures``          every disclosure (optionally of one resource)         ``audit_log_org_compliance``
``compliance_summary``   one row per organization: counts for the period       the period's partitions, read once
=======================  ====================================================  ===================================

How events are recognised (``AUDIT_REPORTS__*``, see :class:`~audit_db_core.config.ReportSettings`):

- a *disclosure*: the action matches one of ``disclosure_actions`` (default ``*.disclose``, e.g.
  ``patient.record.disclose``) or ``details`` hold ``{"disclosure": true}``. The disclosures report shows
  ``details.recipient`` and ``details.purpose`` (what an accounting of disclosures must name);
- *break-glass*: ``details`` hold ``{"break_glass": true}`` (emergency access that overrode the usual checks);
- *after-hours*: the event's local time in ``timezone`` (default UTC) is outside ``[working_hours_start,
  working_hours_end)`` (default 07:00–19:00) or its day is not one of ``working_days`` (default Monday–Friday);
- a *PHI access*: ``data_classification = 'PHI'``; a *failure*: ``status = 'failure'``.

An organization with no stored event at all is an error naming ``organization_id`` (a typo must not look like a
clean record); a known organization with nothing in the period gets an empty report with its columns. With
``AUDIT_PRIVACY__PSEUDONYMIZE``, reports are asked by real identifiers (translated to their pseudonyms, as queries
are) and show what is stored: the pseudonyms (``db.privacy.reveal`` maps them back, for the maintainer role).

Every export (:meth:`ReportManager.write`, ``Report.to_csv`` …) appends a ``report_export`` entry to the lifecycle
ledger in the same transaction that publishes the file: the report, its period and organization, the format, the
path (as given: name files after the request, not the patient), who asked, the row count, the byte count and the
file's SHA-256. The ledger never holds the report's rows, and a target resource id (a patient identifier) only as
its SHA-256.

Example::

    report = db.reports.access_report("org-1", "p-123", since="2026-01-01", until="2026-02-01",
                                      target_resource_type="Patient")
    report.frame[["event_time", "principal_id", "action", "status"]]
    report.to_csv("p-123-january.csv", requested_by="privacy.officer")
"""

from __future__ import annotations

import datetime as dt
import getpass
import hashlib
import hmac
import io
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from psycopg import sql
from psycopg.rows import tuple_row
from psycopg.types.json import Jsonb

from audit_db_core.config import AuditSettings
from audit_db_core.errors import AuditValidationError
from audit_db_core.events import check_text, format_time
from audit_db_core.private_files import create_private, make_private, make_private_dirs
from audit_db_core.privacy import NO_SUBJECT, PrivacyManager, is_pseudonym

if TYPE_CHECKING:
    import psycopg

    from audit_db_core.connections import ConnectionManager

logger = logging.getLogger("audit_db_core.reports")

#: The reports :class:`ReportManager` makes, by name (the ``kind`` of a :class:`Report`).
REPORT_KINDS = ("access", "activity", "disclosures", "compliance_summary")
#: Export formats of :meth:`ReportManager.write`.
FORMATS = ("csv", "json", "parquet")
#: The ledger operation of an export.
LEDGER_OPERATION = "report_export"

_SUBJECT = "report"
_TABLE = sql.Identifier("audit_log")
_TIME = pa.timestamp("us", tz="UTC")
_CSV_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"  # times are UTC: the "Z" is true of every value
_PARQUET_METADATA_KEY = b"audit_db_core.report"

#: Columns of the per-event reports, in order: (name, Arrow type).
_EVENT_COLUMNS: tuple[tuple[str, pa.DataType], ...] = (
    ("event_time", _TIME),
    ("event_id", pa.string()),
    ("organization_id", pa.string()),
    ("principal_id", pa.string()),
    ("action", pa.string()),
    ("status", pa.string()),
    ("target_resource_type", pa.string()),
    ("target_resource_id", pa.string()),
    ("data_classification", pa.string()),
    ("outcome_description", pa.string()),
    ("source", pa.string()),
    ("session_id", pa.string()),
    ("correlation_id", pa.string()),
)
_FLAG_COLUMNS: tuple[tuple[str, pa.DataType], ...] = (
    ("disclosure", pa.bool_()),
    ("break_glass", pa.bool_()),
    ("after_hours", pa.bool_()),
)
_DISCLOSURE_COLUMNS: tuple[tuple[str, pa.DataType], ...] = (("recipient", pa.string()), ("purpose", pa.string()))
_SUMMARY_COLUMNS: tuple[tuple[str, pa.DataType], ...] = (
    ("organization_id", pa.string()),
    ("period_start", _TIME),
    ("period_end", _TIME),
    ("events", pa.int64()),
    ("failures", pa.int64()),
    ("phi_accesses", pa.int64()),
    ("after_hours", pa.int64()),
    ("break_glass", pa.int64()),
    ("disclosures", pa.int64()),
    ("principals", pa.int64()),
    ("first_event", _TIME),
    ("last_event", _TIME),
)

#: Arrow schema of each report (what :func:`read_report` restores a CSV or JSON file to).
SCHEMAS: dict[str, pa.Schema] = {
    "access": pa.schema(_EVENT_COLUMNS + _FLAG_COLUMNS),
    "activity": pa.schema(_EVENT_COLUMNS + _FLAG_COLUMNS),
    "disclosures": pa.schema(_EVENT_COLUMNS + _DISCLOSURE_COLUMNS + _FLAG_COLUMNS),
    "compliance_summary": pa.schema(_SUMMARY_COLUMNS),
}

_LIMITS = {"organization_id": 256, "principal_id": 256, "target_resource_type": 128, "target_resource_id": 256}


# -- input ------------------------------------------------------------------------------------------------------------


def _invalid(field_name: str, reason: str) -> AuditValidationError:
    return AuditValidationError(_SUBJECT, [(field_name, reason)])


def _moment(name: str, value: Any) -> dt.datetime:
    """A timezone-aware datetime (in UTC) from a datetime, a date (midnight UTC) or ISO 8601 text."""
    if isinstance(value, str):
        text = value.strip()
        try:
            value = dt.date.fromisoformat(text) if len(text) == 10 else dt.datetime.fromisoformat(
                text.replace("Z", "+00:00"))
        except ValueError:
            raise _invalid(name, "is not an ISO 8601 date or time (e.g. 2026-01-01 or 2026-01-01T00:00:00Z)") from None
    if isinstance(value, dt.datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise _invalid(name, "must be timezone-aware (a naive time is ambiguous); use UTC, e.g. 2026-01-01T00:00Z")
        return value.astimezone(dt.UTC)
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)
    raise _invalid(name, f"expected a datetime, a date or ISO 8601 text, not {type(value).__name__}")


def period(since: Any, until: Any) -> tuple[dt.datetime, dt.datetime]:
    """``(since, until)`` as UTC datetimes, checked: both given, aware, ``since < until``.

    >>> period("2026-01-01", "2026-02-01")[1]
    datetime.datetime(2026, 2, 1, 0, 0, tzinfo=datetime.timezone.utc)
    """
    problems = []
    start = end = None
    for name, value in (("since", since), ("until", until)):
        if value is None:
            problems.append((name, "is required (the period is [since, until))"))
            continue
        try:
            moment = _moment(name, value)
        except AuditValidationError as exc:
            problems += exc.problems
            continue
        if name == "since":
            start = moment
        else:
            end = moment
    if start is not None and end is not None and start >= end:
        problems.append(("until", "must be later than since (the period is [since, until))"))
    if problems:
        raise AuditValidationError(_SUBJECT, problems)
    assert start is not None and end is not None
    return start, end


def _identifier(name: str, value: Any, *, required: bool = True) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise _invalid(name, "is required" if value is None else f"must be text, not {type(value).__name__}")
    if not 1 <= len(value) <= _LIMITS[name]:
        raise _invalid(name, f"must be 1 to {_LIMITS[name]} characters long")
    try:
        check_text(value)
    except ValueError as exc:
        raise _invalid(name, str(exc)) from None
    return value


def _like_pattern(glob: str) -> str:
    """A ``*`` / ``?`` pattern as a LIKE pattern: LIKE's own wildcards and escape are matched literally."""
    escaped = glob.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def _format_of(path: Path, fmt: str | None) -> str:
    if fmt is None:
        suffix = path.suffix.lower().lstrip(".")
        if suffix not in FORMATS:
            raise _invalid("format", f"cannot be inferred from the file name: give one of {', '.join(FORMATS)}")
        return suffix
    if not isinstance(fmt, str) or fmt.lower() not in FORMATS:
        raise _invalid("format", f"must be one of {', '.join(FORMATS)}, not {fmt!r}")
    return fmt.lower()


# -- SQL ---------------------------------------------------------------------------------------------------------------


def _flags(settings: AuditSettings, local: sql.Composable) -> tuple[dict[str, sql.Composable], dict[str, Any]]:
    """SQL expressions of the disclosure / break-glass / after-hours flags, and their parameters. ``local`` is the
    event's local time (``timestamp without time zone`` in the reports' zone).

    The ``details`` containment values are built here, once, and bound as parameters: ``jsonb_build_object`` in
    the SQL would run once per row (it is not immutable), doubling the cost of a summary.
    """
    expressions = {
        "disclosure": sql.SQL("(details @> {} OR action LIKE ANY ({}::text[]))").format(
            sql.Placeholder("disclosure_match"), sql.Placeholder("disclosure_patterns")),
        "break_glass": sql.SQL("(details @> {})").format(sql.Placeholder("break_glass_match")),
        "after_hours": sql.SQL(
            "(extract(isodow FROM {local})::int <> ALL ({days}::int[])"
            " OR {local}::time < {start}::time OR {local}::time >= {end}::time)"
        ).format(local=local, days=sql.Placeholder("working_days"), start=sql.Placeholder("day_start"),
                 end=sql.Placeholder("day_end")),
    }
    r = settings.reports
    params = {
        "tz": r.timezone,
        "working_days": list(r.working_days),
        "day_start": r.working_hours_start,
        "day_end": r.working_hours_end,
        "disclosure_match": Jsonb({r.disclosure_flag: True}),
        "disclosure_patterns": [_like_pattern(p) for p in r.disclosure_actions],
        "break_glass_match": Jsonb({r.break_glass_flag: True}),
    }
    return expressions, params


_LOCAL_TIME = sql.SQL("(event_time AT TIME ZONE {})").format(sql.Placeholder("tz"))

#: The summary aggregates per (organization, principal) first, then per organization: one pass and two hash
#: aggregates instead of count(DISTINCT principal_id), which sorts every row of the period. (The local time is
#: inlined into each use: fencing the subquery would hide the column statistics, and with them the group count
#: that lets the planner choose the hash aggregate over a sort of every row.)
_SUMMARY = """
SELECT organization_id, {since}::timestamptz, {until}::timestamptz, sum(events)::bigint, sum(failures)::bigint,
       sum(phi_accesses)::bigint, sum(after_hours)::bigint, sum(break_glass)::bigint, sum(disclosures)::bigint,
       count(*), min(first_event), max(last_event)
FROM (
    SELECT organization_id, principal_id, count(*) AS events,
           count(*) FILTER (WHERE status = {failure}) AS failures,
           count(*) FILTER (WHERE data_classification = {phi}) AS phi_accesses,
           count(*) FILTER (WHERE {after_hours}) AS after_hours,
           count(*) FILTER (WHERE {break_glass}) AS break_glass,
           count(*) FILTER (WHERE {disclosure}) AS disclosures,
           min(event_time) AS first_event, max(event_time) AS last_event
    FROM (
        SELECT organization_id, principal_id, status, data_classification, action, details, event_time,
               {local_time} AS local_time
        FROM {table} WHERE {in_period}
    ) AS events
    GROUP BY organization_id, principal_id
) AS per_principal
GROUP BY organization_id
ORDER BY organization_id NULLS LAST
"""


def _event_select(kind: str, flags: dict[str, sql.Composable]) -> sql.Composable:
    columns: list[sql.Composable] = []
    for name, _ in _EVENT_COLUMNS:
        ident = sql.Identifier(name)
        columns.append(sql.SQL("{}::text").format(ident) if name == "event_id" else ident)
    if kind == "disclosures":
        for name, _ in _DISCLOSURE_COLUMNS:
            columns.append(sql.SQL("{} ->> {}").format(sql.Identifier("details"), sql.Literal(name)))
    columns += [flags[name] for name, _ in _FLAG_COLUMNS]
    return sql.SQL(", ").join(columns)


def statement(kind: str, settings: AuditSettings, **filters: Any) -> tuple[sql.Composed, dict[str, Any]]:
    """The SQL and parameters a report runs (``filters``: the validated values of its arguments).

    Public so that plans can be inspected (:meth:`ReportManager.explain`) and benchmarks run the very same query.
    """
    if kind not in REPORT_KINDS:
        raise _invalid("report", f"must be one of {', '.join(REPORT_KINDS)}, not {kind!r}")
    in_period = sql.SQL("event_time >= {} AND event_time < {}").format(sql.Placeholder("since"),
                                                                      sql.Placeholder("until"))
    if kind == "compliance_summary":
        flags, params = _flags(settings, sql.Identifier("local_time"))
        params.update(since=filters["since"], until=filters["until"], failure="failure", phi="PHI")
        stmt = sql.SQL(_SUMMARY).format(
            since=sql.Placeholder("since"), until=sql.Placeholder("until"), failure=sql.Placeholder("failure"),
            phi=sql.Placeholder("phi"), local_time=_LOCAL_TIME, table=_TABLE, in_period=in_period, **flags)
        return stmt, params
    flags, params = _flags(settings, _LOCAL_TIME)  # few rows: the local time may be computed per use
    params.update(since=filters["since"], until=filters["until"])
    conditions: list[sql.Composable] = [
        sql.SQL("organization_id = {}").format(sql.Placeholder("organization_id")), in_period,
    ]
    params["organization_id"] = filters["organization_id"]
    wanted = {
        "access": ("target_resource_type", "target_resource_id"),
        "activity": ("principal_id",),
        "disclosures": ("target_resource_id",),
    }[kind]
    for name in wanted:
        if filters.get(name) is not None:
            conditions.append(sql.SQL("{} = {}").format(sql.Identifier(name), sql.Placeholder(name)))
            params[name] = filters[name]
    if kind == "disclosures":
        conditions.append(flags["disclosure"])
    # Qualified: a bare "event_id" in ORDER BY would name the output column (its text), not the uuid.
    stmt = sql.SQL("SELECT {columns} FROM {table} WHERE {where} ORDER BY {table}.event_time, {table}.event_id").format(
        columns=_event_select(kind, flags), table=_TABLE, where=sql.SQL(" AND ").join(conditions))
    return stmt, params


# -- results -----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ExportResult:
    """One written export, as recorded in the lifecycle ledger."""

    path: Path
    format: str
    rows: int
    bytes: int
    sha256: str  # of the file's bytes
    duration_ms: float

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "format": self.format, "rows": self.rows, "bytes": self.bytes,
                "sha256": self.sha256, "duration_ms": self.duration_ms}


@dataclass(frozen=True, eq=False)
class Report:
    """A report's rows (``frame``) and what it covers. ``to_csv`` / ``to_json`` / ``to_parquet`` export it (and
    record the export in the ledger) through the :class:`ReportManager` that made it."""

    kind: str
    since: dt.datetime
    until: dt.datetime
    parameters: dict[str, Any]  # organization_id, principal_id, target_resource_type, target_resource_id
    frame: pd.DataFrame
    generated_at: dt.datetime
    duration_ms: float
    _manager: ReportManager | None = field(default=None, repr=False)
    #: ``parameters`` as the ledger may hold them (see :meth:`description`).
    recorded: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def rows(self) -> int:
        return len(self.frame)

    @property
    def columns(self) -> list[str]:
        return [str(c) for c in self.frame.columns]

    def __len__(self) -> int:
        return len(self.frame)

    def description(self) -> dict[str, Any]:
        """What the report covers, as the ledger and the logs keep it: never a person's identifier. An identifier
        of a pseudonymized field appears as its pseudonym (after a GDPR erasure nothing links it to the person), of
        a field stored in clear as a keyed hash (HMAC with ``AUDIT_PRIVACY__LOOKUP_KEY``; left out without one)."""
        out: dict[str, Any] = {"report": self.kind, "since": format_time(self.since), "until": format_time(self.until)}
        out.update({k: v for k, v in self.recorded.items() if v is not None})
        return out

    def _export(self, path: str | os.PathLike[str], fmt: str, requested_by: str | None, run_id: str | None
                ) -> ExportResult:
        if self._manager is None:
            raise _invalid("report", "was not made by a ReportManager: export it with db.reports.write(report, …)")
        return self._manager.write(self, path, fmt, requested_by=requested_by, run_id=run_id)

    def to_csv(self, path: str | os.PathLike[str], *, requested_by: str | None = None,
               run_id: str | None = None) -> ExportResult:
        """Write CSV (a header row always; UTC times as ``2026-01-01T08:00:00.000000Z``), recorded in the ledger.

        Example::

            db.reports.activity_report("org-1", "dr.house", "2026-01-01", "2026-02-01").to_csv("activity.csv")
        """
        return self._export(path, "csv", requested_by, run_id)

    def to_json(self, path: str | os.PathLike[str], *, requested_by: str | None = None,
                run_id: str | None = None) -> ExportResult:
        """Write JSON: pandas ``orient="table"`` (the columns and their types, then the rows), recorded in the
        ledger. ``pd.read_json(path, orient="table")`` reads it back."""
        return self._export(path, "json", requested_by, run_id)

    def to_parquet(self, path: str | os.PathLike[str], *, requested_by: str | None = None,
                   run_id: str | None = None) -> ExportResult:
        """Write zstd Parquet with the report's description in the file's key-value metadata, recorded in the
        ledger."""
        return self._export(path, "parquet", requested_by, run_id)


@dataclass(frozen=True)
class QueryPlan:
    """``EXPLAIN (FORMAT JSON)`` of a report's query; ``scans`` lists each scan node (type, relation, index)."""

    plan: dict[str, Any]
    scans: list[dict[str, str | None]]

    @property
    def indexes(self) -> set[str]:
        return {s["index"] for s in self.scans if s["index"]}

    @property
    def sequential_scans(self) -> set[str]:
        return {s["relation"] or "" for s in self.scans if s["node"] == "Seq Scan"}


def _scans(node: dict[str, Any], out: list[dict[str, str | None]]) -> list[dict[str, str | None]]:
    if "Scan" in node.get("Node Type", ""):
        out.append({"node": node["Node Type"], "relation": node.get("Relation Name"), "index": node.get("Index Name")})
    for child in node.get("Plans", ()):
        _scans(child, out)
    return out


def _record_batch(rows: list[tuple[Any, ...]], schema: pa.Schema) -> pa.RecordBatch:
    columns = list(zip(*rows, strict=True))
    return pa.RecordBatch.from_arrays([pa.array(columns[i], type=f.type) for i, f in enumerate(schema)],
                                      schema=schema)


def _requested_by() -> str | None:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name (a container without a passwd entry)
        return None


# -- the manager -------------------------------------------------------------------------------------------------------


class ReportManager:
    """Makes and exports the HIPAA reports; reach it as ``db.reports``.

    Example::

        summary = db.reports.compliance_summary("2026-01-01", "2026-02-01")
        summary.frame.set_index("organization_id")[["events", "failures", "phi_accesses", "break_glass"]]
        summary.to_parquet("compliance-2026-01.parquet")
    """

    def __init__(
        self,
        connections: ConnectionManager,
        settings: AuditSettings,
        *,
        read_connection: Callable[..., Any] | None = None,
    ) -> None:
        self._connections = connections
        self.settings = settings
        # Where report queries run: the analytics replica when AuditDatabase configures one, else the primary.
        # Ledger entries of exports always go to the primary.
        self._read_connection = read_connection or connections.connection

    # -- reports ---------------------------------------------------------------------------------------------------

    def access_report(
        self, organization_id: str, target_resource_id: str, since: Any, until: Any, *,
        target_resource_type: str | None = None,
    ) -> Report:
        """Every access to one target resource (a patient's record) in the organization during ``[since, until)``:
        when, by whom, what, with which outcome, and the disclosure / break-glass / after-hours flags."""
        filters = self._filters(organization_id, since, until, target_resource_id=target_resource_id,
                                target_resource_type=target_resource_type)
        return self._run("access", filters)

    def activity_report(self, organization_id: str, principal_id: str, since: Any, until: Any) -> Report:
        """Everything one principal (a user or a service) did in the organization during ``[since, until)``."""
        return self._run("activity", self._filters(organization_id, since, until, principal_id=principal_id))

    def disclosures(
        self, organization_id: str, since: Any, until: Any, target_resource_id: str | None = None
    ) -> Report:
        """The accounting of disclosures: every disclosure event of the organization during ``[since, until)``
        (of one target resource when ``target_resource_id`` is given), with ``recipient`` and ``purpose``."""
        filters = self._filters(organization_id, since, until, target_resource_id=target_resource_id,
                                optional=("target_resource_id",))
        return self._run("disclosures", filters)

    def compliance_summary(self, since: Any, until: Any) -> Report:
        """One row per organization with events in ``[since, until)``: events, failures, PHI accesses,
        after-hours, break-glass and disclosure events, distinct principals, first and last event."""
        start, end = period(since, until)
        return self._run("compliance_summary", {"since": start, "until": end})

    def explain(self, kind: str, *, analyze: bool = False, **arguments: Any) -> QueryPlan:
        """The plan of a report's query for these arguments (the same ones the report method takes).

        Example::

            plan = db.reports.explain("activity", organization_id="org-1", principal_id="dr.house",
                                      since="2026-01-01", until="2026-02-01")
            plan.indexes          # {'audit_log_p2026_01_principal_id_event_time_idx'}
        """
        if kind == "compliance_summary":
            start, end = period(arguments.get("since"), arguments.get("until"))
            filters: dict[str, Any] = {"since": start, "until": end}
        elif kind in ("access", "activity", "disclosures"):
            args = dict(arguments)
            required = {"access": "target_resource_id", "activity": "principal_id"}.get(kind)
            if required:
                args.setdefault(required, None)  # missing: "is required", as from the report method
            optional = ("target_resource_id",) if kind == "disclosures" else ("target_resource_type",)
            filters = self._filters(args.pop("organization_id", None), args.pop("since", None),
                                    args.pop("until", None), optional=optional, **args)
        else:
            raise _invalid("report", f"must be one of {', '.join(REPORT_KINDS)}, not {kind!r}")
        options = sql.SQL("ANALYZE, BUFFERS, FORMAT JSON" if analyze else "FORMAT JSON")
        with self._connections.connection(operation="report_explain") as conn, conn.transaction():
            self._configure(conn)
            stmt, params = statement(kind, self.settings, **self._stored_identifiers(filters, conn))
            row = conn.execute(sql.SQL("EXPLAIN ({}) ").format(options) + stmt, params).fetchone()
        assert row is not None
        document = row[0][0]
        return QueryPlan(plan=document, scans=_scans(document["Plan"], []))

    def _filters(
        self, organization_id: Any, since: Any, until: Any, *, optional: tuple[str, ...] = ("target_resource_type",),
        **values: Any,
    ) -> dict[str, Any]:
        start, end = period(since, until)
        out: dict[str, Any] = {"organization_id": _identifier("organization_id", organization_id),
                               "since": start, "until": end}
        for name, value in values.items():
            if name not in _LIMITS:
                raise _invalid(name, "is not a filter of this report")
            out[name] = _identifier(name, value, required=name not in optional)
        return out

    def _run(self, kind: str, filters: dict[str, Any]) -> Report:
        started = time.perf_counter()
        schema = SCHEMAS[kind]
        batch_rows = self.settings.reports.batch_rows
        batches: list[pa.RecordBatch] = []
        with self._read_connection(operation=f"report_{kind}") as conn:
            with conn.transaction():
                self._configure(conn)
                stored = self._stored_identifiers(filters, conn)
                stmt, params = statement(kind, self.settings, **stored)
                if kind == "compliance_summary":
                    # One row per organization: a plain query, which (unlike a cursor's) may run in parallel.
                    rows = conn.cursor(row_factory=tuple_row).execute(stmt, params).fetchall()
                    batches += [_record_batch(rows, schema)] if rows else []
                else:
                    with conn.cursor(name=f"audit_report_{uuid.uuid4().hex}", row_factory=tuple_row) as cur:
                        cur.itersize = batch_rows
                        cur.execute(stmt, params)
                        while rows := cur.fetchmany(batch_rows):
                            batches.append(_record_batch(rows, schema))
                            if len(rows) < batch_rows:  # a short batch is the last one: no empty FETCH to learn it
                                break
                if not batches and "organization_id" in filters:
                    self._check_organization(conn, filters["organization_id"])
        frame = pa.Table.from_batches(batches, schema=schema).to_pandas()
        del batches
        ms = round((time.perf_counter() - started) * 1000, 3)
        parameters = {k: v for k, v in filters.items() if k not in ("since", "until")}
        report = Report(kind=kind, since=filters["since"], until=filters["until"], parameters=parameters,
                        frame=frame, generated_at=dt.datetime.now(dt.UTC), duration_ms=ms, _manager=self,
                        recorded=self._recorded(parameters, stored))
        logger.info("report made", extra={"audit": {**report.description(), "rows": len(frame), "ms": ms}})
        return report

    def _stored_identifiers(self, filters: dict[str, Any], conn: psycopg.Connection[Any]) -> dict[str, Any]:
        """``filters`` with the identifiers of pseudonymized fields (``AUDIT_PRIVACY__PSEUDONYMIZE``) replaced by
        the pseudonyms they are stored under, as queries by identity are: a report asked for "p-123" finds its
        events. (An identifier without a subject matches nothing.)"""
        privacy = PrivacyManager(self._connections, self.settings)
        if not privacy.enabled:
            return filters
        out = dict(filters)
        for name in ("principal_id", "target_resource_id"):
            if out.get(name) is not None:
                out[name] = privacy.pseudonym_for(name, out[name], conn)
        return out

    def _recorded(self, parameters: dict[str, Any], stored: dict[str, Any]) -> dict[str, Any]:
        """What the ledger may keep of the report's filters: organization and resource type as given; a principal
        or target resource id as its pseudonym where the field is pseudonymized (``None`` when it names no
        subject), else as a keyed hash — domain-separated from the subject mapping's lookup digests — or not at
        all without a key. A plain SHA-256 of an identifier would be reversible by trying candidates."""
        out: dict[str, Any] = {}
        key = self.settings.privacy.lookup_key
        for name, value in parameters.items():
            if value is None or name not in ("principal_id", "target_resource_id"):
                out[name] = value
            elif stored.get(name) != value or is_pseudonym(value):
                out[f"{name}_pseudonym"] = None if stored.get(name) == NO_SUBJECT else stored.get(name)
            elif key is not None:
                out[f"{name}_hmac"] = hmac.new(key.get_secret_value().encode(),
                                               b"report-ledger\x00" + name.encode() + b"\x00" + value.encode(),
                                               hashlib.sha256).hexdigest()
        return out

    def _configure(self, conn: psycopg.Connection[Any]) -> None:
        """Session settings of a report, for its transaction only: reports legitimately read whole months (the
        pool's statement timeout is for interactive queries), and the summary's hash aggregates need room (with the
        default 4 MB the planner sorts every row of the period on disk instead)."""
        r = self.settings.reports
        conn.execute("SELECT set_config('statement_timeout', %s, true), set_config('work_mem', %s, true)",
                     (str(r.statement_timeout_ms), f"{r.work_mem_mb}MB"))

    @staticmethod
    def _check_organization(conn: psycopg.Connection[Any], organization_id: str) -> None:
        """An empty report for an organization the log has never seen is more likely a typo than a clean record."""
        row = conn.execute(
            sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE organization_id = %s)").format(_TABLE), (organization_id,)
        ).fetchone()
        if not (row and row[0]):
            raise _invalid("organization_id", f"no audit event is stored for organization {organization_id!r}")

    # -- export ----------------------------------------------------------------------------------------------------

    def write(
        self,
        report: Report,
        path: str | os.PathLike[str],
        format: str | None = None,  # noqa: A002 - the name users pass
        *,
        requested_by: str | None = None,
        run_id: str | None = None,
    ) -> ExportResult:
        """Write ``report`` to ``path`` as ``format`` (``csv``, ``json`` or ``parquet``; default: from the file's
        suffix) and record the export in the lifecycle ledger. Returns rows, bytes and the file's SHA-256.

        The file appears only once its ledger entry commits (written to a temporary file beside it, renamed inside
        the ledger transaction), so no export exists that the ledger does not account for. ``requested_by``
        (default: the OS user) and ``run_id`` (e.g. a Dagster run) are recorded with it.

        Example::

            result = db.reports.write(report, "access.json")           # format from the suffix
            result.rows, result.sha256
        """
        target, fmt = _export_target(report, path, format)
        started = time.perf_counter()
        temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            digest, size = _write_private_file(report, fmt, temporary)
            ms = round((time.perf_counter() - started) * 1000, 3)
            details = {**report.description(), "format": fmt, "path": str(target.resolve()),
                       "requested_by": requested_by if requested_by is not None else _requested_by(),
                       "generated_at": format_time(report.generated_at)}
            self._publish(temporary, target, (report.rows, size, digest, ms,
                                              Jsonb(details, dumps=_ledger_json), run_id))
        finally:
            temporary.unlink(missing_ok=True)
        result = ExportResult(path=target, format=fmt, rows=report.rows, bytes=size, sha256=digest, duration_ms=ms)
        logger.info("report exported", extra={"audit": {**details, "rows": report.rows, "bytes": size}})
        return result

    def _publish(self, temporary: Path, target: Path, entry: tuple[Any, ...]) -> None:
        """Rename the file into place inside the transaction that appends its ledger entry: both or neither."""
        published = False
        try:
            with self._connections.connection(operation="report_export") as conn, conn.transaction():
                # Through the function of migration 0010, so a reader (no write access to the ledger) may export
                # and still leave its entry; recorded under the caller's own name.
                conn.execute("SELECT audit_record_report_export(%s, %s, %s, %s, %s, %s)", entry)
                os.replace(temporary, target)
                published = True
        except BaseException:
            if published:  # renamed, but the ledger entry did not commit: an unrecorded export must not stay
                target.unlink(missing_ok=True)
            raise


def _export_target(report: Any, path: Any, format: str | None) -> tuple[Path, str]:  # noqa: A002
    """The checked target file (its directory made, owner-only) and format, or an error naming the argument."""
    if not isinstance(report, Report):
        raise _invalid("report", f"expected a Report (from db.reports), not {type(report).__name__}")
    if not isinstance(path, (str, os.PathLike)) or not str(path).strip():
        raise _invalid("path", "must be a file path")
    target = Path(path).expanduser()
    fmt = _format_of(target, format)
    if target.is_dir():
        raise _invalid("path", "is a directory: give a file name")
    try:
        make_private_dirs(target.parent)
    except OSError as exc:
        raise _invalid("path", f"its directory cannot be created ({exc.strerror or exc})") from None
    return target, fmt


def _write_private_file(report: Report, fmt: str, temporary: Path) -> tuple[str, int]:
    """Write the report to ``temporary`` (0600 before a byte of PHI is written); its SHA-256 and size."""
    try:
        os.close(create_private(temporary, exclusive=True))
        _WRITERS[fmt](report, temporary)
        make_private(temporary)
        return _sha256(temporary)
    except OSError as exc:
        raise _invalid("path", f"cannot be written ({exc.strerror or exc})") from None


# -- writers and reader ------------------------------------------------------------------------------------------------


def _sha256(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def _write_csv(report: Report, path: Path) -> None:
    report.frame.to_csv(path, index=False, date_format=_CSV_TIME_FORMAT)


def _write_json(report: Report, path: Path) -> None:
    report.frame.to_json(path, orient="table", index=False, date_format="iso", date_unit="us")


def _write_parquet(report: Report, path: Path) -> None:
    table = pa.Table.from_pandas(report.frame, schema=SCHEMAS[report.kind], preserve_index=False)
    metadata = dict(table.schema.metadata or {})
    metadata[_PARQUET_METADATA_KEY] = json.dumps(report.description(), sort_keys=True).encode()
    pq.write_table(table.replace_schema_metadata(metadata), path, compression="zstd")


_WRITERS = {"csv": _write_csv, "json": _write_json, "parquet": _write_parquet}


def read_report(path: str | os.PathLike[str], kind: str, format: str | None = None) -> pd.DataFrame:  # noqa: A002
    """Read an exported report back with the column types it was written with.

    Example::

        frame = read_report("access.csv", "access")
        frame["event_time"].dt.tz          # UTC
    """
    if kind not in SCHEMAS:
        raise _invalid("report", f"must be one of {', '.join(REPORT_KINDS)}, not {kind!r}")
    source = Path(path)
    fmt = _format_of(source, format)
    schema = SCHEMAS[kind]
    if fmt == "parquet":
        return pq.read_table(source, schema=schema).to_pandas()
    if fmt == "json":
        frame = pd.read_json(io.StringIO(source.read_text(encoding="utf-8")), orient="table")
    else:
        text_columns = {f.name: "str" for f in schema if pa.types.is_string(f.type)}
        frame = pd.read_csv(source, dtype=text_columns)
    return _typed(frame, schema)


def _typed(frame: pd.DataFrame, schema: pa.Schema) -> pd.DataFrame:
    frame = frame[schema.names].copy()
    for f in schema:
        if pa.types.is_timestamp(f.type):
            frame[f.name] = pd.to_datetime(frame[f.name], utc=True, format="ISO8601")
    return pa.Table.from_pandas(frame, schema=schema, preserve_index=False).to_pandas()


def description_of(path: str | os.PathLike[str]) -> Mapping[str, Any]:
    """The report description stored in an exported Parquet file's metadata."""
    raw = (pq.read_schema(Path(path)).metadata or {}).get(_PARQUET_METADATA_KEY)
    return json.loads(raw) if raw else {}


def _ledger_json(obj: Any) -> str:
    return json.dumps(obj, default=str, sort_keys=True)
