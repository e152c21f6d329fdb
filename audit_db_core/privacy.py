"""GDPR: pseudonymized identifiers, subject access export and erasure that leaves the proof intact.

Fields listed in ``AUDIT_PRIVACY__PSEUDONYMIZE`` (``principal_id``, ``target_resource_id``, ``details.<key>``) are
replaced, before an event is hashed and written, by the pseudonym of their data subject: ``psn_`` and 32 random hex
digits, drawn by the database the first time the subject is seen and kept in ``audit_subjects`` (migration
``0009_privacy``), apart from the log and readable only by ``audit_maintainer``. Writers get pseudonyms through a
``SECURITY DEFINER`` function and never read the mapping.

- A query by a real identifier is translated to its pseudonym (an identifier with no subject matches nothing).
- :meth:`PrivacyManager.export_subject` gathers every event that names the subject — hot partitions, detached
  ones and the archives of purged periods — with the subject's identifier put back.
- :meth:`PrivacyManager.erase_subject` deletes the subject's mapping row. The log is not touched, so its content
  hashes and the signed digest chain still verify; the pseudonyms left in the log were random, so nothing can
  lead from them back to the person any more.

Both are written to the lifecycle ledger (``subject_export``, ``subject_erasure``) with subject ids and counts,
never the identifier. Threat model and limits: docs/guides/privacy.md.

Example::

    settings = AuditSettings().with_overrides(privacy={"pseudonymize": ["principal_id", "target_resource_id"],
                                                       "lookup_key": "a secret of at least 32 characters ....."})
    with AuditDatabase(settings) as db:
        db.insert(AuditEvent(action="patient.record.read", status="success", principal_id="dr.house",
                             target_resource_id="p-123"))
        db.query(AuditQuery(target_resource_id="p-123")).events[0].target_resource_id   # 'psn_…'
        export = db.privacy.export_subject("p-123")           # the events, with 'p-123' put back
        result = db.privacy.erase_subject("p-123")            # result.found, result.events_unlinked
"""

from __future__ import annotations

import datetime as dt
import getpass
import hashlib
import hmac
import itertools
import json
import logging
import re
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from audit_db_core import ledger
from audit_db_core.config import PSEUDONYMIZABLE_FIELDS, AuditSettings
from audit_db_core.errors import AuditError, AuditValidationError, ConfigurationError
from audit_db_core.events import STORED_COLUMNS, AuditEvent, format_time
from audit_db_core.partitions import PartitionManager
from audit_db_core.period_rows import LOG_TABLE, PeriodRows
from audit_db_core.private_files import make_private_dirs, write_private
from audit_db_core.query import AuditQuery

logger = logging.getLogger("audit_db_core.privacy")

#: What the library writes in place of an identifier: ``psn_`` and 32 lowercase hex digits.
PSEUDONYM = re.compile(r"^psn_[0-9a-f]{32}\Z")
#: What a query by an identifier without a subject is translated to: the shape of no pseudonym ever issued.
NO_SUBJECT = "psn_no_such_subject"
EXPORT_FORMAT = "audit-subject-export/1"
_DETAIL_KEY = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
_MAX_VALUE = 4000


def is_pseudonym(value: Any) -> bool:
    """True for a value shaped like a pseudonym the library issues (``psn_`` + 32 hex digits)."""
    return isinstance(value, str) and PSEUDONYM.match(value) is not None


def _check_field(name: Any) -> str:
    if isinstance(name, str) and (name in PSEUDONYMIZABLE_FIELDS
                                  or (name.startswith("details.") and _DETAIL_KEY.match(name[8:]))):
        return name
    raise AuditValidationError("subject request", [
        ("fields", f"{name!r} is not a pseudonymizable field (principal_id, target_resource_id or details.<key>)")])


def _detail_key(name: str) -> str | None:
    return name[8:] if name.startswith("details.") else None


# -- results ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Subject:
    """One row of the mapping: a data subject as named in one field."""

    subject_id: uuid.UUID
    field: str
    identifier: str
    pseudonym: str
    created_at: dt.datetime

    def to_dict(self) -> dict[str, Any]:
        return {"subject_id": str(self.subject_id), "field": self.field, "identifier": self.identifier,
                "pseudonym": self.pseudonym, "created_at": format_time(self.created_at)}


@dataclass
class SubjectExport:
    """Everything the log holds about one data subject (``to_dict`` / ``to_json`` / ``write``).

    ``events`` are JSON-ready dicts of every stored column, the subject's own pseudonyms replaced by the
    identifier (other people's pseudonyms stay as they are), each with its ``source`` (the table or the archive
    file). ``complete`` is false when a source could not be read (``unreadable`` says which and why)."""

    found: bool
    fields: list[str]
    subjects: list[Subject]
    events: list[dict[str, Any]]
    events_from_archives: int
    unreadable: list[str]
    generated_at: dt.datetime

    @property
    def complete(self) -> bool:
        return not self.unreadable

    @property
    def subject_ids(self) -> list[str]:
        return [str(s.subject_id) for s in self.subjects]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": EXPORT_FORMAT,
            "generated_at": format_time(self.generated_at),
            "found": self.found,
            "complete": self.complete,
            "fields": list(self.fields),
            "subjects": [s.to_dict() for s in self.subjects],
            "event_count": len(self.events),
            "events_from_archives": self.events_from_archives,
            "unreadable": list(self.unreadable),
            "events": self.events,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, ensure_ascii=False)

    def write(self, path: str | Path) -> tuple[Path, int, str]:
        """Write the JSON document to ``path`` (its directory is created); returns ``(path, bytes, sha256)``."""
        target = Path(path)
        data = self.to_json().encode()
        try:
            make_private_dirs(target.parent)
            tmp = target.with_name(target.name + ".tmp")
            write_private(tmp, data)  # PHI: owner-only, whatever the umask
            tmp.replace(target)
        except OSError as exc:
            raise AuditError(f"cannot write the subject export to {target}: {exc.strerror or exc}",
                             operation="subject_export") from None
        return target, len(data), hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class ErasureResult:
    """What :meth:`PrivacyManager.erase_subject` did. ``found`` false: no subject matched, nothing was erased
    (``reason`` says why). ``events_unlinked``: events whose pseudonym no longer leads to anyone.
    ``events_in_clear``: events that still hold the identifier itself (written before the field was pseudonymized,
    which erasure cannot change). ``vacuumed``: the deleted rows were also removed from the table's pages."""

    found: bool
    subject_ids: list[str]
    fields: list[str]
    events_unlinked: int
    events_in_clear: int
    unreadable: list[str]
    vacuumed: bool
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"found": self.found, "subject_ids": list(self.subject_ids), "fields": list(self.fields),
                "events_unlinked": self.events_unlinked, "events_in_clear": self.events_in_clear,
                "unreadable": list(self.unreadable), "vacuumed": self.vacuumed, "reason": self.reason}


@dataclass
class _Matches:
    """The values that name a subject, per field: its pseudonyms (linked) and its identifier itself (in clear)."""

    by_field: dict[str, set[str]] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)  # pseudonym or identifier -> identifier

    def add(self, name: str, value: str, identifier: str) -> None:
        self.by_field.setdefault(name, set()).add(value)
        self.names[value] = identifier

    def hit(self, row: Mapping[str, Any]) -> tuple[bool, bool]:
        """``(names the subject, by a pseudonym)`` for one stored row."""
        found = linked = False
        for name, values in self.by_field.items():
            key = _detail_key(name)
            value = _details(row).get(key) if key else row.get(name)
            if isinstance(value, str) and value in values:
                found = True
                linked = linked or is_pseudonym(value)
        return found, linked


def _details(row: Mapping[str, Any]) -> dict[str, Any]:
    details = row.get("details")
    if isinstance(details, str):
        details = json.loads(details)
    return details if isinstance(details, dict) else {}


# -- the manager -----------------------------------------------------------------------------------------------------


class PrivacyManager:
    """Pseudonyms at ingestion, queries by identity, subject export and erasure; bound to one database
    (``db.privacy``). With ``AUDIT_PRIVACY__PSEUDONYMIZE`` empty, :meth:`protect` and :meth:`translate` change
    nothing and cost nothing."""

    def __init__(self, connections: Any, settings: AuditSettings) -> None:
        self._connections = connections
        self.settings = settings
        self.fields: tuple[str, ...] = settings.privacy.pseudonymize
        self._top = tuple(f for f in self.fields if f in PSEUDONYMIZABLE_FIELDS)
        self._detail_keys = tuple(k for k in (_detail_key(f) for f in self.fields) if k)

    @property
    def enabled(self) -> bool:
        return bool(self.fields)

    def lookup(self, name: str, value: str) -> bytes:
        """The mapping's index key of ``value`` in field ``name``: HMAC-SHA256(lookup key, name NUL value)."""
        key = self.settings.privacy.lookup_key
        if key is None:
            raise ConfigurationError("settings", [("AUDIT_PRIVACY__LOOKUP_KEY", "is not set: identifiers cannot be "
                                                   "looked up in the subject mapping without it")])
        return hmac.new(key.get_secret_value().encode(), name.encode() + b"\x00" + value.encode(),
                        hashlib.sha256).digest()

    # -- ingestion ---------------------------------------------------------------------------------------------------

    def protect_one(self, event: AuditEvent, conn: psycopg.Connection[Any]) -> AuditEvent:
        """``event`` with its configured fields replaced by pseudonyms (the same event when none applies)."""
        if not self.enabled:
            return event
        return self._protect_batch([event], conn, None)[0]

    def protect(self, events: Iterable[Any], conn: psycopg.Connection[Any]) -> Iterable[Any]:
        """The events of ``events`` with pseudonyms in place of identifiers, lazily, one round trip per batch of
        ``AUDIT_INGEST__BATCH_SIZE``. A batch holding an invalid item passes through unchanged, so that the insert
        refuses it with its usual error (naming ``events[i].field``) and nothing of it is written."""
        if not self.enabled:
            return events
        return self._protect_lazily(events, conn)

    def _protect_lazily(self, events: Iterable[Any], conn: psycopg.Connection[Any]) -> Iterator[Any]:
        size = self.settings.ingest.batch_size
        chunk: list[Any] = []
        seen = 0
        for item in events:
            chunk.append(item)
            if len(chunk) == size:
                yield from self._protect_chunk(chunk, conn, seen)
                seen += len(chunk)
                chunk = []
        if chunk:
            yield from self._protect_chunk(chunk, conn, seen)

    def _protect_chunk(self, chunk: list[Any], conn: psycopg.Connection[Any], offset: int) -> list[Any]:
        try:
            events = [item if isinstance(item, AuditEvent) else AuditEvent.model_validate(dict(item))
                      for item in chunk]
        except (AuditValidationError, TypeError, ValueError):
            return chunk  # the insert names the invalid item; nothing of this batch is written
        return self._protect_batch(events, conn, offset)

    def _protect_batch(
        self, events: list[AuditEvent], conn: psycopg.Connection[Any], offset: int | None
    ) -> list[AuditEvent]:
        wanted: dict[tuple[str, str], None] = {}
        for i, ev in enumerate(events):
            where = "event" if offset is None else f"events[{offset + i}]"
            for name, value in self._identifiers(ev, where):
                wanted[(name, value)] = None
        if not wanted:
            return events
        pseudonyms = self._issue(conn, list(wanted))
        out = []
        for ev in events:
            update: dict[str, Any] = {}
            for name in self._top:
                value = getattr(ev, name)
                if value is not None and not is_pseudonym(value):
                    update[name] = pseudonyms[(name, value)]
            if self._detail_keys:
                details = dict(ev.details)
                for key in self._detail_keys:
                    value = details.get(key)
                    if value is not None and not is_pseudonym(value):
                        details[key] = pseudonyms[(f"details.{key}", value)]
                if details != ev.details:
                    update["details"] = details
            # A new validated event: its content hash covers the pseudonym, never the identifier.
            out.append(ev.model_copy(update=update) if update else ev)
        return out

    def _identifiers(self, ev: AuditEvent, where: str) -> Iterator[tuple[str, str]]:
        for name in self._top:
            value = getattr(ev, name)
            if value is not None and not is_pseudonym(value):
                yield name, value
        for key in self._detail_keys:
            value = ev.details.get(key)
            if value is None or is_pseudonym(value):
                continue
            if not isinstance(value, str) or not value:
                raise AuditValidationError("AuditEvent", [(
                    f"{where}.details.{key}",
                    f"must be a non-empty string: details.{key} is listed in AUDIT_PRIVACY__PSEUDONYMIZE")])
            yield f"details.{key}", value

    def _issue(self, conn: psycopg.Connection[Any], pairs: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
        lookups = [self.lookup(name, value) for name, value in pairs]
        # Its own (sub)transaction: between insert_many's batches the connection is idle, and a statement there
        # would open a transaction that swallowed the next batch's commit.
        with conn.transaction():
            rows = conn.execute(
                "SELECT lookup, pseudonym FROM audit_pseudonyms(%s, %s, %s)",
                ([n for n, _ in pairs], lookups, [v for _, v in pairs]),
            ).fetchall()
        found = {bytes(lookup): pseudonym for lookup, pseudonym in rows}
        return {pair: found[lookup] for pair, lookup in zip(pairs, lookups, strict=True)}

    # -- queries -----------------------------------------------------------------------------------------------------

    def translate(self, query: AuditQuery, conn: psycopg.Connection[Any] | None = None) -> AuditQuery:
        """``query`` with identifiers in pseudonymized fields replaced by their pseudonyms (an identifier without
        a subject by :data:`NO_SUBJECT`, which matches nothing). Pseudonyms pass unchanged. The query cache keys
        on the translated filters, so no cache key is ever derived from an identifier."""
        if not self.enabled:
            return query
        wanted: list[tuple[str, str]] = []
        for name in self._top:
            value = getattr(query, name, None)
            if value is not None and not is_pseudonym(value):
                wanted.append((name, value))
        contains = query.details_contains or {}
        for key in self._detail_keys:
            value = contains.get(key)
            if isinstance(value, str) and not is_pseudonym(value):
                wanted.append((f"details.{key}", value))
        if not wanted:
            return query
        known = self._known(wanted, conn)
        update: dict[str, Any] = {}
        new_contains = dict(contains)
        for name, value in wanted:
            pseudonym = known.get((name, value), NO_SUBJECT)
            key = _detail_key(name)
            if key:
                new_contains[key] = pseudonym
            else:
                update[name] = pseudonym
        if new_contains != contains:
            update["details_contains"] = new_contains
        return query.model_copy(update=update)

    def pseudonym_for(self, name: str, value: str, conn: psycopg.Connection[Any] | None = None) -> str:
        """The pseudonym under which ``value`` is stored in field ``name``: itself when the field is not
        pseudonymized or ``value`` is a pseudonym, :data:`NO_SUBJECT` when it names no subject. For code that
        filters the log by identity with its own SQL (e.g. reports).

        Example::

            where_target = db.privacy.pseudonym_for("target_resource_id", "p-123")
        """
        if name not in self.fields or is_pseudonym(value):
            return value
        return self._known([(name, value)], conn).get((name, value), NO_SUBJECT)

    def _known(self, pairs: list[tuple[str, str]], conn: psycopg.Connection[Any] | None) -> dict[tuple[str, str], str]:
        lookups = [self.lookup(name, value) for name, value in pairs]
        stmt = "SELECT lookup, pseudonym FROM audit_pseudonyms_of(%s)"
        if conn is not None:
            rows = conn.execute(stmt, (lookups,)).fetchall()
        else:
            with self._connections.connection(operation="privacy_translate") as own:
                rows = own.execute(stmt, (lookups,)).fetchall()
        found = {bytes(lookup): pseudonym for lookup, pseudonym in rows}
        return {pair: found[lookup] for pair, lookup in zip(pairs, lookups, strict=True) if lookup in found}

    def reveal(self, items: Iterable[Any]) -> dict[str, str]:
        """``{pseudonym: identifier}`` for the pseudonyms among ``items`` (pseudonym strings, or events whose
        pseudonymized fields are read) that still have a subject. Reads the mapping: only ``audit_maintainer``
        may (anyone else gets a ComplianceError).

        Example::

            names = db.privacy.reveal(page.events)
            [names.get(e.principal_id, e.principal_id) for e in page.events]
        """
        wanted: set[str] = set()
        for item in items:
            if isinstance(item, str):
                values: Iterable[Any] = (item,)
            else:
                details = getattr(item, "details", None) or {}
                values = [getattr(item, n, None) for n in PSEUDONYMIZABLE_FIELDS] + list(details.values())
            wanted.update(v for v in values if is_pseudonym(v))
        if not wanted:
            return {}
        with self._connections.connection(operation="privacy_reveal") as conn:
            rows = conn.execute("SELECT pseudonym, value FROM audit_subjects WHERE pseudonym = ANY(%s)",
                                (sorted(wanted),)).fetchall()
        return dict(rows)

    # -- subject requests --------------------------------------------------------------------------------------------

    def _request(self, value: str | None, subject_id: Any, fields: Sequence[str] | None) -> tuple[list[str], str | None,
                                                                                                   uuid.UUID | None]:
        problems = []
        if (value is None) == (subject_id is None):
            problems.append(("value", "give exactly one of value (the identifier) and subject_id"))
        if value is not None and (not isinstance(value, str) or not value.strip() or len(value) > _MAX_VALUE
                                  or "\x00" in value):
            problems.append(("value", f"must be a non-empty string of at most {_MAX_VALUE} characters"))
        sid = None
        if subject_id is not None:
            try:
                sid = subject_id if isinstance(subject_id, uuid.UUID) else uuid.UUID(str(subject_id))
            except ValueError:
                problems.append(("subject_id", "is not a UUID (as listed by an export or an earlier erasure)"))
        if problems:
            raise AuditValidationError("subject request", problems)
        if isinstance(fields, str):
            fields = [fields]
        names = [_check_field(f) for f in (fields if fields else self.fields)]
        if not names:
            raise AuditValidationError("subject request", [(
                "fields", "no field to search: AUDIT_PRIVACY__PSEUDONYMIZE is empty, so name the fields")])
        return list(dict.fromkeys(names)), value, sid

    def _subjects(self, conn: psycopg.Connection[Any], names: list[str], value: str | None,
                  sid: uuid.UUID | None, *, lock: bool = False) -> list[Subject]:
        base = "SELECT subject_id, field, value, pseudonym, created_at FROM audit_subjects WHERE field = ANY(%s) AND "
        if sid is not None:
            stmt, params = base + "subject_id = %s", (names, sid)
        else:
            assert value is not None
            stmt, params = base + "lookup = ANY(%s)", (names, [self.lookup(n, value) for n in names])
        stmt += " ORDER BY field" + (" FOR UPDATE" if lock else "")
        return [Subject(r[0], r[1], r[2], r[3], r[4]) for r in conn.execute(stmt, params).fetchall()]

    @staticmethod
    def _matches(subjects: list[Subject], names: list[str], value: str | None) -> _Matches:
        m = _Matches()
        for s in subjects:
            m.add(s.field, s.pseudonym, s.identifier)
            m.add(s.field, s.identifier, s.identifier)
        # The identifier itself too: rows written before its field was pseudonymized still hold it in clear.
        if value is not None:
            for name in names:
                m.add(name, value, value)
        return m

    @staticmethod
    def _rows(conn: psycopg.Connection[Any], matches: _Matches,
              periods: PeriodRows) -> Iterator[tuple[str, dict[str, Any]]]:
        """``(source, row)`` of every stored row that names the subject: audit_log (attached partitions and
        DEFAULT), then detached partitions. The archives of purged periods are read by ``_archive_rows``."""
        conditions: list[sql.Composable] = []
        params: list[Any] = []
        for name, values in sorted(matches.by_field.items()):
            key = _detail_key(name)
            if key:
                for v in sorted(values):  # containment: served by the GIN index on details
                    conditions.append(sql.SQL("{} @> %s").format(sql.Identifier("details")))
                    params.append(Jsonb({key: v}))
            else:
                conditions.append(sql.SQL("{} = ANY(%s)").format(sql.Identifier(name)))
                params.append(sorted(values))
        if not conditions:
            return
        where = sql.SQL(" OR ").join(conditions)
        for table in [LOG_TABLE, *(p.name for p in periods.detached(conn))]:
            yield from periods.table_rows(conn, table, STORED_COLUMNS, where, params)

    @staticmethod
    def _archive_rows(periods: PeriodRows, matches: _Matches,
                      unreadable: list[str]) -> Iterator[tuple[str, dict[str, Any]]]:
        """Rows of purged periods, from their archives (every row is read: archives have no identity index). An
        archive that cannot be read is named in ``unreadable`` with the reason, and the others are still read."""
        purged = periods.purged()
        if not purged or not matches.by_field:
            return
        if periods.store() is None:
            unreadable.extend(f"{p.name}: {periods.store_error}" for p in purged)
            return
        for p in purged:
            try:
                for source, row in periods.archive_rows(p):
                    if matches.hit(row)[0]:
                        yield source, row
            except AuditError as exc:
                unreadable.append(f"{p.name}: {exc.message}")

    def _period_rows(self, conn: psycopg.Connection[Any]) -> PeriodRows:
        """The registry as ``conn`` sees it: where the rows of every period live."""
        return PeriodRows(PartitionManager(self._connections, self.settings), conn)

    def export_subject(
        self,
        value: str | None = None,
        *,
        subject_id: Any = None,
        fields: Sequence[str] | None = None,
        run_id: str | None = None,
        requested_by: str | None = None,
    ) -> SubjectExport:
        """Everything the log holds about the data subject named ``value`` (or ``subject_id``) in ``fields``
        (default: every pseudonymized field), machine-readable. Recorded in the lifecycle ledger
        (``subject_export``: subject ids and counts, never the identifier). An identifier that names no subject
        is an export with ``found`` false, not an error.

        Example::

            export = db.privacy.export_subject("p-123", requested_by="privacy.officer")
            export.write("p-123.json")
        """
        started = time.perf_counter()
        names, value, sid = self._request(value, subject_id, fields)
        unreadable: list[str] = []
        events: list[dict[str, Any]] = []
        from_archives = 0
        with self._connections.connection(operation="subject_export") as conn:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")  # one snapshot for every table
            subjects = self._subjects(conn, names, value, sid)
            matches = self._matches(subjects, names, value)
            periods = self._period_rows(conn)
            for source, row in self._rows(conn, matches, periods):
                events.append(_event_json(row, matches, source))
            for source, row in self._archive_rows(periods, matches, unreadable):
                events.append(_event_json(row, matches, source))
                from_archives += 1
            found = bool(subjects or events)
            ledger.record(
                conn, "subject_export", None, "ok" if found else "skipped", run_id=run_id, rows=len(events),
                duration_ms=(time.perf_counter() - started) * 1000,
                details={"subject_ids": [str(s.subject_id) for s in subjects], "fields": names, "found": found,
                         "events": len(events), "events_from_archives": from_archives,
                         "complete": not unreadable, "unreadable": len(unreadable),
                         "requested_by": requested_by or _os_user()},
            )
        events.sort(key=lambda e: (e["event_time"], e["event_id"]))
        logger.info("subject export: %d subject(s), %d event(s)", len(subjects), len(events),
                    extra={"audit": {"subject_ids": [str(s.subject_id) for s in subjects], "events": len(events)}})
        return SubjectExport(found, names, subjects, events, from_archives, unreadable, dt.datetime.now(dt.UTC))

    def erase_subject(
        self,
        value: str | None = None,
        *,
        subject_id: Any = None,
        fields: Sequence[str] | None = None,
        run_id: str | None = None,
        requested_by: str | None = None,
    ) -> ErasureResult:
        """Erase the data subject named ``value`` (or ``subject_id``) in ``fields`` (default: every pseudonymized
        field): delete its mapping rows, in one transaction with the ledger entry (``subject_erasure``: subject
        ids and counts, never the identifier). Irreversible: the log keeps its random pseudonyms, which nothing
        links to the person any more, and its hashes and digests stay valid. A later event for the same person
        gets a new subject and a new pseudonym. An unknown subject is a result with ``found`` false (and a ledger
        entry with outcome ``skipped``), not an error.

        Example::

            result = db.privacy.erase_subject("p-123", requested_by="privacy.officer")
            result.found, result.events_unlinked, result.subject_ids
        """
        started = time.perf_counter()
        names, value, sid = self._request(value, subject_id, fields)
        unreadable: list[str] = []
        with self._connections.connection(operation="subject_erasure") as conn:
            subjects = self._subjects(conn, names, value, sid, lock=True)
            matches = self._matches(subjects, names, value)
            linked = in_clear = 0
            periods = self._period_rows(conn)
            for _, row in itertools.chain(self._rows(conn, matches, periods),
                                          self._archive_rows(periods, matches, unreadable)):
                by_pseudonym = matches.hit(row)[1]
                linked += by_pseudonym
                in_clear += not by_pseudonym
            ids = [s.subject_id for s in subjects]
            if ids:
                conn.execute("DELETE FROM audit_subjects WHERE subject_id = ANY(%s)", (ids,))
            reason = None if ids else (
                f"no data subject with this {'subject_id' if sid else 'identifier'} in "
                f"{', '.join(names)}: nothing was erased")
            ledger.record(
                conn, "subject_erasure", None, "ok" if ids else "skipped", run_id=run_id, rows=linked,
                duration_ms=(time.perf_counter() - started) * 1000,
                details={"subject_ids": [str(i) for i in ids], "fields": names, "found": bool(ids),
                         "events_unlinked": linked, "events_in_clear": in_clear, "unreadable": len(unreadable),
                         "requested_by": requested_by or _os_user()},
            )
        vacuumed = self._vacuum() if ids else False
        if ids:
            logger.info("subject erased: %d subject(s), %d event(s) unlinked", len(ids), linked,
                        extra={"audit": {"subject_ids": [str(i) for i in ids], "events_unlinked": linked}})
        return ErasureResult(bool(ids), [str(i) for i in ids], names, linked if ids else 0, in_clear, unreadable,
                             vacuumed, reason)

    def _vacuum(self) -> bool:
        """Remove the deleted mapping rows from the table's pages now rather than at the next autovacuum (only
        once no older snapshot can still see them; the WAL and backups are another matter, see the guide)."""
        try:
            with self._connections.dedicated_connection(operation="subject_erasure", autocommit=True) as conn:
                conn.execute("VACUUM audit_subjects")
            return True
        except AuditError as exc:
            logger.warning("VACUUM audit_subjects after an erasure failed: %s", exc.message)
            return False


def _event_json(row: Mapping[str, Any], matches: _Matches, source: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in STORED_COLUMNS:
        value = row.get(name)
        if isinstance(value, dt.datetime):
            value = format_time(value)
        elif isinstance(value, (bytes, bytearray, memoryview)):
            value = bytes(value).hex()
        elif isinstance(value, uuid.UUID):
            value = str(value)
        out[name] = value
    out["details"] = dict(_details(row))
    restored = []
    for name, values in matches.by_field.items():
        key = _detail_key(name)
        current = out["details"].get(key) if key else out.get(name)
        if isinstance(current, str) and current in values:
            if key:
                out["details"][key] = matches.names[current]
            else:
                out[name] = matches.names[current]
            restored.append(name)
    out["restored_fields"] = sorted(restored)
    out["source"] = source
    return out


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
