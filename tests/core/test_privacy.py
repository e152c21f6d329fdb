"""GDPR against real PostgreSQL: identifiers stored as pseudonyms from ingestion on, queries by identity, the
subject access export (hot partitions and the archive of a purged period), erasure that is irreversible while
``verify`` still passes, the mapping kept from writers and readers, unknown subjects, bad settings."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import importlib.util
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pyarrow.parquet as pq
import pytest

from audit_db_core import (
    AuditDatabase,
    AuditEvent,
    AuditQuery,
    AuditSettings,
    AuditValidationError,
    ComplianceError,
    ConfigurationError,
)
from audit_db_core.integrity import generate_key_pair
from audit_db_core.ledger import entries
from audit_db_core.privacy import NO_SUBJECT, is_pseudonym
from tests.core.test_roles import LoginRoles, login_roles  # noqa: F401  (fixture)
from tests.conftest import archive_dir

UTC = dt.UTC
LOOKUP_KEY = "test-lookup-key-0123456789abcdefghijklmnop"
FIELDS = ["principal_id", "target_resource_id", "details.mrn"]
GRACE = 0.05
PATIENT = "patient-4711"
MRN = "MRN-000-4711"
DOCTOR = "dr.house"
JAN = dt.datetime(2021, 1, 5, 10, tzinfo=UTC)


def privacy_settings(url: str, tmp: Path, **overrides: Any) -> AuditSettings:
    private, _ = generate_key_pair()
    values: dict[str, Any] = {
        "database_url": url,
        "privacy": {"pseudonymize": FIELDS, "lookup_key": LOOKUP_KEY},
        "archive": {"root_uri": str(tmp / "archive")},
        "retention": {"default": "1 year"},
        "integrity": {"signing_key": private, "cutoff_grace_seconds": GRACE, "seal_delay_seconds": 0},
    }
    values.update(overrides)
    return AuditSettings(**values)


@pytest.fixture
def db(fresh_database: str, tmp_path: Path) -> Iterator[AuditDatabase]:
    with AuditDatabase(privacy_settings(fresh_database, tmp_path)) as database:
        yield database


def read(patient: str = PATIENT, *, who: str = DOCTOR, when: dt.datetime | None = None, **fields: Any) -> AuditEvent:
    values: dict[str, Any] = {"action": "patient.record.read", "status": "success", "principal_id": who,
                              "target_resource_type": "Patient", "target_resource_id": patient,
                              "data_classification": "PHI", "details": {"mrn": MRN if patient == PATIENT else None}}
    if when is not None:
        values["event_time"] = when
    values.update(fields)
    return AuditEvent(**values)


def log_text(url: str) -> str:
    """Every row of every table and archive-bearing registry the database holds about events, as text."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT string_agg(t::text, E'\\n') FROM ("
            " SELECT l::text AS t FROM audit_log l UNION ALL"
            " SELECT g::text FROM audit_lifecycle_ledger g UNION ALL"
            " SELECT d::text FROM audit_digests d UNION ALL"
            " SELECT p::text FROM audit_partitions p) x").fetchone()
    return rows[0] or ""


def archive_text(root: Path) -> str:
    """The decoded rows of every Parquet file under ``root``, plus every other file's bytes as text."""
    parts = []
    for path in sorted(root.rglob("*")):
        if path.suffix == ".parquet":
            parts.append(json.dumps(pq.read_table(path).to_pylist(), default=str))
        elif path.is_file():
            parts.append(path.read_bytes().decode("utf-8", "replace"))
    return "\n".join(parts)


def seal(db: AuditDatabase, **kwargs: Any) -> Any:
    time.sleep(GRACE * 3)  # rows written just now are inside the seal's grace margin
    return db.integrity.seal(**kwargs)


def stored(url: str, column: str) -> list[Any]:
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute(f"SELECT {column} FROM audit_log ORDER BY event_time, event_id")]


# -- ingestion -------------------------------------------------------------------------------------------------------


def test_every_write_path_stores_pseudonyms_and_the_hash_covers_them(db: AuditDatabase, fresh_database: str) -> None:
    db.insert(read())
    assert db.insert_many([read(), read("patient-2"), {"action": "user.login", "status": "success",
                                                        "principal_id": DOCTOR}]) == 3
    with db.transaction() as tx:
        tx.insert(read(who="nurse.joy"))
        tx.insert_many([read("patient-2", who="nurse.joy")])
    principals = stored(fresh_database, "principal_id")
    targets = [t for t in stored(fresh_database, "target_resource_id") if t is not None]
    mrns = [d.get("mrn") for d in stored(fresh_database, "details")]
    assert len(principals) == 6 and all(is_pseudonym(p) for p in principals + targets)
    assert len(set(principals)) == 2 and len(set(targets)) == 2  # one pseudonym per person, the same every time
    assert set(principals).isdisjoint(targets)
    assert all(m is None or is_pseudonym(m) for m in mrns) and len({m for m in mrns if m}) == 1
    text = log_text(fresh_database)
    for identifier in (PATIENT, MRN, DOCTOR, "nurse.joy", "patient-2"):
        assert identifier not in text
    # The stored hash is the hash of the stored (pseudonymized) row: integrity is unaffected.
    page = db.query(AuditQuery(limit=10))
    assert all(e.hash_matches for e in page.events)


def test_an_event_read_back_and_sent_again_is_not_pseudonymized_twice(db: AuditDatabase) -> None:
    db.insert(read())
    (back,) = db.query(AuditQuery()).events
    assert db.insert(back) is False  # the same event: idempotent, not a second row under a new pseudonym
    assert db.count(AuditQuery()) == 1


def test_a_non_string_value_of_a_pseudonymized_detail_is_refused(db: AuditDatabase, fresh_database: str) -> None:
    with pytest.raises(AuditValidationError) as exc:
        db.insert_many([read(), read(details={"mrn": 4711})])
    assert exc.value.fields == ["events[1].details.mrn"]
    assert "4711" not in str(exc.value)
    assert stored(fresh_database, "event_id") == []


def test_an_invalid_event_in_a_batch_is_named_and_nothing_of_it_is_written(
    db: AuditDatabase, fresh_database: str
) -> None:
    with pytest.raises(AuditValidationError) as exc:
        db.insert_many([read(), {"action": "x", "status": "nope", "principal_id": "someone"}])
    assert exc.value.fields == ["events[1].status"]
    assert stored(fresh_database, "event_id") == []
    with psycopg.connect(fresh_database) as conn:
        assert conn.execute("SELECT count(*) FROM audit_subjects").fetchone() == (0,)


def test_without_configured_fields_nothing_changes(fresh_database: str) -> None:
    with AuditDatabase(AuditSettings(database_url=fresh_database)) as plain:
        plain.insert(read())
        assert plain.query(AuditQuery(principal_id=DOCTOR)).events[0].principal_id == DOCTOR
    assert stored(fresh_database, "principal_id") == [DOCTOR]


# -- queries ---------------------------------------------------------------------------------------------------------


def test_queries_by_identity_find_the_pseudonymized_events(db: AuditDatabase) -> None:
    db.insert_many([read(), read(), read("patient-2"), read(who="nurse.joy")])
    assert db.count(AuditQuery(target_resource_id=PATIENT)) == 3
    assert db.count(AuditQuery(principal_id=DOCTOR)) == 3
    assert db.count(AuditQuery(details_contains={"mrn": MRN})) == 3
    assert db.count(AuditQuery(principal_id="nobody.we.know")) == 0
    page = db.query(AuditQuery(target_resource_id=PATIENT, limit=2))
    assert len(page) == 2 and page.next_cursor
    rest = db.query(AuditQuery(target_resource_id=PATIENT, limit=2, cursor=page.next_cursor))
    assert len(rest) == 1 and not {e.event_id for e in page} & {e.event_id for e in rest}
    # A pseudonym taken from a result is a valid filter as it is; the cached path translates the same way.
    pseudonym = page.events[0].target_resource_id
    assert db.count(AuditQuery(target_resource_id=pseudonym)) == 3
    assert len(db.query(AuditQuery(target_resource_id=PATIENT), consistency="eventual", read_your_writes=True)) == 3
    with db.transaction() as tx:
        assert tx.count(AuditQuery(principal_id=DOCTOR)) == 3
    assert db.privacy.pseudonym_for("target_resource_id", PATIENT) == pseudonym
    assert db.privacy.pseudonym_for("target_resource_id", "unknown") == NO_SUBJECT
    assert db.privacy.pseudonym_for("organization_id", "org-1") == "org-1"  # not pseudonymized


# -- export ----------------------------------------------------------------------------------------------------------


def _history(db: AuditDatabase, *, purge: bool = True) -> list[AuditEvent]:
    """January 2021 (archived, then purged after its year of retention) and today, for the patient and others."""
    db.partitions.create_partition("2021-01")
    old = [read(when=JAN), read(when=JAN + dt.timedelta(days=1), who="nurse.joy"),
           read("patient-2", when=JAN + dt.timedelta(days=2))]
    db.insert_many(old)
    new = [read(), read("patient-2"), read(who="nurse.joy", action="patient.record.export")]
    db.insert_many(new)
    result = seal(db, until=dt.datetime(2021, 2, 1, tzinfo=UTC))
    assert result.status == "sealed", result
    db.partitions.archive("2021-01")
    if purge:
        assert db.partitions.purge(dry_run=False).purged == ["audit_log_p2021_01"]
    return old + new


def test_export_holds_every_event_of_the_subject_hot_and_archived(
    db: AuditDatabase, fresh_database: str, tmp_path: Path
) -> None:
    _history(db)
    export = db.privacy.export_subject(PATIENT, requested_by="privacy.officer", run_id="ticket-17")
    assert export.found and export.complete
    assert [s.field for s in export.subjects] == ["target_resource_id"]
    assert len(export.events) == 4 and export.events_from_archives == 2
    assert {e["target_resource_id"] for e in export.events} == {PATIENT}
    assert sum(e["source"].startswith("audit_log_p2021_01/") for e in export.events) == 2
    # Other people in the subject's events stay pseudonymized: the export is about this subject only.
    assert all(is_pseudonym(e["principal_id"]) for e in export.events)
    assert all(e["details"]["mrn"] != MRN for e in export.events)  # another field: another subject
    path, size, digest = export.write(tmp_path / "out" / "export.json")
    doc = json.loads(path.read_text())
    assert doc["format"] == "audit-subject-export/1" and doc["event_count"] == 4 and size == path.stat().st_size
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    # Every field at once: the MRN subject joins in.
    both = db.privacy.export_subject(MRN, fields=["details.mrn"])
    assert len(both.events) == 4 and {e["details"]["mrn"] for e in both.events} == {MRN}
    with psycopg.connect(fresh_database) as conn:
        (entry, _) = entries(conn, operation="subject_export")
    assert entry.outcome == "ok" and entry.row_count == 4 and entry.run_id == "ticket-17"
    assert entry.details["subject_ids"] == export.subject_ids and entry.details["events_from_archives"] == 2
    assert PATIENT not in json.dumps(entry.details)


def test_export_and_erasure_read_a_detached_partition(fresh_database: str, tmp_path: Path) -> None:
    """Archived and detached (AUDIT_ARCHIVE__MODE=detach), not yet purged: the period's rows are in the detached
    table, outside audit_log, and still the subject's."""
    archive = {"root_uri": str(tmp_path / "archive"), "mode": "detach"}
    with AuditDatabase(privacy_settings(fresh_database, tmp_path, archive=archive)) as db:
        _history(db, purge=False)
        assert db.partitions.get("2021-01").detached
        export = db.privacy.export_subject(PATIENT)
        assert export.complete and len(export.events) == 4 and export.events_from_archives == 0
        assert sum(e["source"] == "audit_log_p2021_01" for e in export.events) == 2
        assert db.privacy.erase_subject(PATIENT).events_unlinked == 4


def test_an_unreadable_archive_is_named_and_the_rest_still_exported(
    db: AuditDatabase, fresh_database: str, tmp_path: Path
) -> None:
    """Without its manifest, or without an archive root, a purged period cannot be read: the export says which
    and why, and still holds the hot events; the erasure still erases."""
    _history(db)
    (archive_dir(tmp_path / "archive", "audit_log_p2021_01") / "manifest.json").unlink()
    export = db.privacy.export_subject(PATIENT)
    assert not export.complete and len(export.events) == 2 and export.events_from_archives == 0
    manifest = (archive_dir(tmp_path / "archive", "audit_log_p2021_01") / "manifest.json").as_uri()
    assert export.unreadable == [f"audit_log_p2021_01: no archive manifest at {manifest}"]
    with AuditDatabase(privacy_settings(fresh_database, tmp_path, archive={})) as no_archive:
        export = no_archive.privacy.export_subject(PATIENT)
        assert len(export.events) == 2
        (reason,) = export.unreadable
        assert reason.startswith("audit_log_p2021_01: ") and "AUDIT_ARCHIVE__ROOT_URI" in reason
        result = no_archive.privacy.erase_subject(PATIENT)
        assert result.found and result.events_unlinked == 2 and result.unreadable == export.unreadable


def test_export_by_subject_id_and_of_rows_written_before_pseudonymization(
    fresh_database: str, tmp_path: Path
) -> None:
    with AuditDatabase(AuditSettings(database_url=fresh_database)) as before:
        before.insert(read())  # stored in clear: the field was not pseudonymized yet
    with AuditDatabase(privacy_settings(fresh_database, tmp_path)) as db:
        db.insert(read())
        export = db.privacy.export_subject(PATIENT, fields=["target_resource_id"])
        assert len(export.events) == 2 and {e["target_resource_id"] for e in export.events} == {PATIENT}
        again = db.privacy.export_subject(subject_id=export.subject_ids[0])
        assert len(again.events) == 2
        result = db.privacy.erase_subject(PATIENT, fields=["target_resource_id"])
        # Erasure cannot reach the row stored in clear, and says so.
        assert result.found and result.events_unlinked == 1 and result.events_in_clear == 1


# -- erasure ---------------------------------------------------------------------------------------------------------


def test_erasure_is_irreversible_and_verification_still_passes(
    db: AuditDatabase, fresh_database: str, tmp_path: Path
) -> None:
    _history(db)
    assert seal(db).status == "sealed"
    before = db.integrity.verify()
    assert before.ok, before.summary()
    pseudonym = db.privacy.pseudonym_for("target_resource_id", PATIENT)
    mrn_pseudonym = db.privacy.pseudonym_for("details.mrn", MRN)
    assert is_pseudonym(pseudonym) and is_pseudonym(mrn_pseudonym)
    # The identifiers were never in the log, the ledger, the digests or the archive (pseudonyms from ingestion on).
    assert PATIENT not in log_text(fresh_database) + archive_text(tmp_path / "archive")
    # A HIPAA report about the patient, and one about the doctor, exported before the erasure: the ledger keeps
    # the pseudonyms the reports were asked for, not the identifiers (nor a plain hash of them).
    # (Reports are the 'reports' extra: CI's lane with the core alone has no pandas and skips this part.)
    if importlib.util.find_spec("pandas") is not None:
        db.insert(read("patient-9", who="nurse.joy", organization_id="general"))  # someone else, in that org
        since, until = dt.datetime.now(UTC) - dt.timedelta(days=1), dt.datetime.now(UTC) + dt.timedelta(days=1)
        db.reports.access_report("general", PATIENT, since, until).to_csv(tmp_path / "access.csv")
        db.reports.activity_report("general", DOCTOR, since, until).to_csv(tmp_path / "activity.csv")
        with psycopg.connect(fresh_database) as conn:
            exports = entries(conn, operation="report_export")
        assert [e.details.get("target_resource_id_pseudonym") for e in exports] == [pseudonym, None]
        assert is_pseudonym(exports[1].details["principal_id_pseudonym"])

    result = db.privacy.erase_subject(PATIENT, requested_by="privacy.officer")
    assert result.found and result.events_unlinked == 4 and result.events_in_clear == 0 and not result.unreadable
    assert result.vacuumed and result.fields == FIELDS

    # Not found any more: no export, no query, no mapping, no reveal.
    assert not db.privacy.export_subject(PATIENT).found
    assert db.count(AuditQuery(target_resource_id=PATIENT)) == 0
    assert db.privacy.reveal([pseudonym]) == {}
    with psycopg.connect(fresh_database) as conn:
        mapping = conn.execute("SELECT s::text FROM audit_subjects s").fetchall()
        lookups = [bytes(r[0]) for r in conn.execute("SELECT lookup FROM audit_subjects")]
    assert not any(PATIENT in r[0] or pseudonym in r[0] for r in mapping)
    # Not re-identifiable: the lookup key and the identifier give the lookup digest, which is gone, and nothing
    # derived from the identifier equals the pseudonym left in the log (it was random).
    candidate = hmac.new(LOOKUP_KEY.encode(), b"target_resource_id\x00" + PATIENT.encode(), hashlib.sha256).digest()
    assert candidate not in lookups
    derived = {hashlib.sha256(PATIENT.encode()).hexdigest()[:32], candidate.hex()[:32],
               hmac.new(LOOKUP_KEY.encode(), PATIENT.encode(), hashlib.sha256).hexdigest()[:32]}
    assert pseudonym[4:] not in derived
    text = log_text(fresh_database) + archive_text(tmp_path / "archive")
    assert PATIENT not in text and candidate.hex() not in text
    assert hashlib.sha256(PATIENT.encode()).hexdigest() not in text  # report exports included (the ledger)
    assert DOCTOR not in text and hashlib.sha256(DOCTOR.encode()).hexdigest() not in text
    assert text.count(pseudonym) >= 2  # the rows are all still there, unchanged, under their old pseudonym
    # The MRN was another subject: still linked.
    assert db.privacy.reveal([mrn_pseudonym]) == {mrn_pseudonym: MRN}

    # The proof: the rows and archives were never touched, so the digests still verify, and new ones seal.
    after = db.integrity.verify()
    assert after.ok and after.events_checked == before.events_checked, after.summary()

    # The ledger says who erased what, when, by subject id and counts, never the identifier.
    with psycopg.connect(fresh_database) as conn:
        (entry,) = entries(conn, operation="subject_erasure")
    assert entry.outcome == "ok" and entry.row_count == 4
    assert entry.details["subject_ids"] == result.subject_ids and entry.details["requested_by"] == "privacy.officer"

    # The same person again: a new subject, a new pseudonym; the erased events stay unlinked.
    db.insert(read())
    assert db.privacy.pseudonym_for("target_resource_id", PATIENT) not in (pseudonym, NO_SUBJECT)
    assert len(db.privacy.export_subject(PATIENT, fields=["target_resource_id"]).events) == 1


def test_erasure_by_subject_id(db: AuditDatabase) -> None:
    db.insert_many([read(), read("patient-2")])
    sid = db.privacy.export_subject(PATIENT, fields=["target_resource_id"]).subject_ids[0]
    result = db.privacy.erase_subject(subject_id=sid)
    assert result.found and result.subject_ids == [sid] and result.events_unlinked == 1
    assert db.count(AuditQuery(target_resource_id=PATIENT)) == 0
    assert db.count(AuditQuery(target_resource_id="patient-2")) == 1


def test_an_unknown_subject_is_a_clear_outcome_not_a_crash(db: AuditDatabase, fresh_database: str) -> None:
    db.insert(read())
    result = db.privacy.erase_subject("never-seen")
    assert not result.found and result.subject_ids == [] and result.events_unlinked == 0
    assert result.reason and "no data subject" in result.reason and "never-seen" not in result.reason
    again = db.privacy.erase_subject(subject_id=uuid.uuid4())
    assert not again.found and "subject_id" in (again.reason or "")
    assert not db.privacy.export_subject("never-seen").found
    with psycopg.connect(fresh_database) as conn:
        erasures = entries(conn, operation="subject_erasure")
    assert [e.outcome for e in erasures] == ["skipped", "skipped"]
    assert "never-seen" not in json.dumps([e.details for e in erasures])
    assert db.count(AuditQuery(target_resource_id=PATIENT)) == 1  # nothing else was erased


@pytest.mark.parametrize(("kwargs", "field"), [
    ({}, "value"),
    ({"value": "x", "subject_id": str(uuid.uuid4())}, "value"),
    ({"subject_id": "not-a-uuid"}, "subject_id"),
    ({"value": ""}, "value"),
    ({"value": "x", "fields": ["organization_id"]}, "fields"),
])
def test_bad_requests_name_the_argument(db: AuditDatabase, kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(AuditValidationError) as exc:
        db.privacy.erase_subject(**kwargs)
    assert field in exc.value.fields


# -- the mapping is kept apart ---------------------------------------------------------------------------------------


def test_writers_and_readers_cannot_read_the_mapping(
    fresh_database: str, login_roles: LoginRoles, tmp_path: Path  # noqa: F811
) -> None:
    writer = login_roles.url(login_roles.make("writer", "audit_writer"), fresh_database)
    reader = login_roles.url(login_roles.make("reader", "audit_reader"), fresh_database)
    with AuditDatabase(privacy_settings(writer, tmp_path)) as app:
        app.insert(read())  # pseudonymized through the SECURITY DEFINER function
        assert app.count(AuditQuery(target_resource_id=PATIENT)) == 1
        with pytest.raises(ComplianceError):
            app.privacy.reveal(app.query(AuditQuery()).events)
        with pytest.raises(ComplianceError):
            app.privacy.export_subject(PATIENT)
    with AuditDatabase(privacy_settings(reader, tmp_path)) as auditor:
        assert auditor.count(AuditQuery(target_resource_id=PATIENT)) == 1  # queries by identity work
        with pytest.raises(ComplianceError):
            auditor.privacy.erase_subject(PATIENT)
    for url in (writer, reader):
        with psycopg.connect(url) as conn:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("SELECT * FROM audit_subjects")
    with psycopg.connect(reader) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("SELECT * FROM audit_pseudonyms(ARRAY['x'], ARRAY[sha256('x')], ARRAY['x'])")
    # A temporary table cannot stand in for the mapping inside the SECURITY DEFINER function.
    with psycopg.connect(writer, autocommit=True) as conn:
        conn.execute("CREATE TEMP TABLE audit_subjects (lookup bytea, pseudonym text)")
        conn.execute("INSERT INTO audit_subjects VALUES (sha256('x'), 'psn_00000000000000000000000000000000')")
        rows = conn.execute("SELECT pseudonym FROM audit_pseudonyms_of(ARRAY[sha256('x')])").fetchall()
    assert rows == []


# -- settings --------------------------------------------------------------------------------------------------------


def test_settings_name_the_variable_and_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "postgresql://app@db/audit"
    with pytest.raises(ConfigurationError) as exc:
        AuditSettings(database_url=url, privacy={"pseudonymize": ["principal_id"]})
    assert exc.value.fields == ["AUDIT_PRIVACY__LOOKUP_KEY"]
    with pytest.raises(ConfigurationError) as exc:
        AuditSettings(database_url=url, privacy={"pseudonymize": ["principal_id"], "lookup_key": "short"})
    assert exc.value.fields == ["AUDIT_PRIVACY__LOOKUP_KEY"] and "short" not in str(exc.value)
    with pytest.raises(ConfigurationError) as exc:
        AuditSettings(database_url=url, privacy={"pseudonymize": ["organization_id"], "lookup_key": LOOKUP_KEY})
    assert exc.value.fields == ["AUDIT_PRIVACY__PSEUDONYMIZE"] and "organization_id" in str(exc.value)
    monkeypatch.setenv("AUDIT_DATABASE_URL", url)
    monkeypatch.setenv("AUDIT_PRIVACY__PSEUDONYMIZE", "principal_id, details.mrn")
    monkeypatch.setenv("AUDIT_PRIVACY__LOOKUP_KEY", LOOKUP_KEY)
    settings = AuditSettings()
    assert settings.privacy.pseudonymize == ("principal_id", "details.mrn")
    assert LOOKUP_KEY not in repr(settings)


def test_export_and_erasure_need_the_lookup_key(fresh_database: str) -> None:
    with AuditDatabase(AuditSettings(database_url=fresh_database)) as db:
        with pytest.raises(ConfigurationError) as exc:
            db.privacy.erase_subject(PATIENT, fields=["target_resource_id"])
        assert exc.value.fields == ["AUDIT_PRIVACY__LOOKUP_KEY"]
        with pytest.raises(AuditValidationError) as exc:
            db.privacy.export_subject(PATIENT)  # nothing is pseudonymized and no field was named
        assert exc.value.fields == ["fields"]
