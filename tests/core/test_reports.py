"""HIPAA reports against real PostgreSQL: exactly the expected rows and columns, nothing from another organization,
exports that read back identically and are recorded in the ledger, clear errors for bad input, index plans."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pyarrow.parquet as pq
import pytest

pd = pytest.importorskip("pandas", reason="HIPAA reports need the 'reports' extra")

from audit_db_core import AuditDatabase, AuditEvent, AuditSettings, AuditValidationError
from audit_db_core.ledger import entries
from audit_db_core.reports import SCHEMAS, Report, description_of, read_report

UTC = dt.UTC
SINCE = dt.datetime(2025, 3, 1, tzinfo=UTC)
UNTIL = dt.datetime(2025, 4, 1, tzinfo=UTC)
EVENT_COLUMNS = [
    "event_time", "event_id", "organization_id", "principal_id", "action", "status", "target_resource_type",
    "target_resource_id", "data_classification", "outcome_description", "source", "session_id", "correlation_id",
    "disclosure", "break_glass", "after_hours",
]
DISCLOSURE_COLUMNS = EVENT_COLUMNS[:13] + ["recipient", "purpose"] + EVENT_COLUMNS[13:]
SUMMARY_COLUMNS = ["organization_id", "period_start", "period_end", "events", "failures", "phi_accesses",
                   "after_hours", "break_glass", "disclosures", "principals", "first_event", "last_event"]


def at(day: int, hour: int = 0, minute: int = 0, second: int = 0, micro: int = 0, month: int = 3) -> dt.datetime:
    return dt.datetime(2025, month, day, hour, minute, second, micro, tzinfo=UTC)


def event(name: str, when: dt.datetime, principal: str, action: str, *, org: str | None = "org-a",
          target: str | None = None, status: str = "success", classification: str = "PHI",
          details: dict[str, Any] | None = None, outcome: str | None = None) -> tuple[str, AuditEvent]:
    return name, AuditEvent(
        event_time=when, principal_id=principal, action=action, status=status, organization_id=org,
        target_resource_type="Patient" if target else None, target_resource_id=target,
        data_classification=classification, outcome_description=outcome, details=details or {},
        source="ehr-api", session_id=f"sess-{name}", correlation_id=f"req-{name}",
    )


def seed_events() -> dict[str, AuditEvent]:
    """March 2025 (UTC): 1 Mar is a Saturday, 3 Mar a Monday. Working hours are 07:00–19:00 Monday–Friday."""
    return dict([
        event("A0", at(1), "dr.house", "patient.record.read", target="p-1"),  # Saturday, the first instant
        event("A1", at(3, 9), "dr.house", "patient.record.read", target="p-1"),
        event("A2", at(3, 22, 30), "nurse.joy", "patient.record.read", target="p-1", details={"break_glass": True}),
        event("A3", at(4, 12), "clerk.7", "patient.record.disclose", target="p-1", status="failure",
              outcome="recipient not authorised", details={"recipient": "Acme Insurance", "purpose": "payment"}),
        event("A4", at(5, 8), "dr.house", "patient.record.export", target="p-2",
              details={"disclosure": True, "recipient": "County court", "purpose": "subpoena"}),
        event("A5", at(5, 18, 59, 59, 999_999), "dr.house", "user.login", status="failure",
              classification="INTERNAL", details={"break_glass": "true"}),  # text, not true: no break-glass
        event("A6", at(5, 19), "nurse.joy", "user.logout", classification="INTERNAL"),  # 19:00 is after hours
        event("A7", at(1, month=4), "dr.house", "patient.record.read", target="p-1"),  # `until` is exclusive
        event("A8", at(28, 23, 59, 59, 999_999, month=2), "dr.house", "patient.record.read", target="p-1"),
        event("B1", at(3, 10), "dr.house", "patient.record.read", org="org-b", target="p-1"),
        event("B2", at(10, 11), "dr.house", "lab.result.disclose", org="org-b", target="p-9",
              details={"recipient": "Public health", "purpose": "reporting"}),
        event("N1", at(12, 3), "system", "system.config.read", org=None, classification="PUBLIC"),
    ])


@pytest.fixture
def seeded(db: AuditDatabase) -> dict[str, AuditEvent]:
    db.partitions.create_partition("2025-03")
    events = seed_events()
    assert db.insert_many(events.values()) == len(events)
    return events


def ids(report: Report) -> list[str]:
    return list(report.frame["event_id"])


def expect(events: dict[str, AuditEvent], *names: str) -> list[str]:
    return [str(events[n].event_id) for n in names]


def ledger_exports(url: str) -> list[Any]:
    with psycopg.connect(url) as conn:
        return entries(conn, operation="report_export")


# -- the reports -------------------------------------------------------------------------------------------------------


def test_access_report_lists_every_access_to_the_patient_in_the_organization(
    db: AuditDatabase, seeded: dict[str, AuditEvent]
) -> None:
    report = db.reports.access_report("org-a", "p-1", SINCE, UNTIL, target_resource_type="Patient")
    assert report.kind == "access" and report.columns == EVENT_COLUMNS
    assert ids(report) == expect(seeded, "A0", "A1", "A2", "A3")  # oldest first; B1 (org-b), A7, A8 excluded
    frame = report.frame.set_index("event_id")
    a2, a3 = frame.loc[str(seeded["A2"].event_id)], frame.loc[str(seeded["A3"].event_id)]
    assert (a2["principal_id"], a2["break_glass"], a2["after_hours"], a2["disclosure"]) == ("nurse.joy", True, True, False)
    assert (a3["status"], a3["outcome_description"], a3["disclosure"]) == ("failure", "recipient not authorised", True)
    assert list(report.frame["after_hours"]) == [True, False, True, False]  # Saturday, 09:00, 22:30, 12:00
    assert set(report.frame["organization_id"]) == {"org-a"}
    # Typed columns, UTC times, exactly the stored instants.
    assert str(report.frame["event_time"].dtype) == "datetime64[us, UTC]"
    assert report.frame["event_time"].iloc[0].to_pydatetime() == seeded["A0"].event_time
    assert report.frame["break_glass"].dtype == bool
    # Without the type, the same rows.
    assert ids(db.reports.access_report("org-a", "p-1", SINCE, UNTIL)) == ids(report)


def test_activity_report_lists_what_one_user_did_in_the_organization(
    db: AuditDatabase, seeded: dict[str, AuditEvent]
) -> None:
    report = db.reports.activity_report("org-a", "dr.house", "2025-03-01", "2025-04-01")  # dates: midnight UTC
    assert report.columns == EVENT_COLUMNS
    assert ids(report) == expect(seeded, "A0", "A1", "A4", "A5")
    assert list(report.frame["action"]) == ["patient.record.read", "patient.record.read", "patient.record.export",
                                            "user.login"]
    assert list(report.frame["after_hours"]) == [True, False, False, False]  # 18:59:59.999999 is still working time
    assert list(report.frame["break_glass"]) == [False] * 4  # "true" as text is not the flag
    assert report.frame["target_resource_id"].isna().tolist() == [False, False, False, True]


def test_disclosures_by_action_name_or_details_flag(db: AuditDatabase, seeded: dict[str, AuditEvent]) -> None:
    report = db.reports.disclosures("org-a", SINCE, UNTIL)
    assert report.columns == DISCLOSURE_COLUMNS
    assert ids(report) == expect(seeded, "A3", "A4")  # *.disclose, and {"disclosure": true}; B2 is org-b's
    assert list(report.frame["recipient"]) == ["Acme Insurance", "County court"]
    assert list(report.frame["purpose"]) == ["payment", "subpoena"]
    assert ids(db.reports.disclosures("org-a", SINCE, UNTIL, target_resource_id="p-1")) == expect(seeded, "A3")
    assert ids(db.reports.disclosures("org-b", SINCE, UNTIL)) == expect(seeded, "B2")


def test_compliance_summary_counts_per_organization(db: AuditDatabase, seeded: dict[str, AuditEvent]) -> None:
    report = db.reports.compliance_summary(SINCE, UNTIL)
    assert report.columns == SUMMARY_COLUMNS
    frame = report.frame
    assert list(frame["organization_id"].fillna("(none)")) == ["org-a", "org-b", "(none)"]
    counts = ["events", "failures", "phi_accesses", "after_hours", "break_glass", "disclosures", "principals"]
    assert frame[counts].values.tolist() == [
        [7, 2, 5, 3, 1, 2, 3],  # A0–A6
        [2, 0, 2, 0, 0, 1, 1],  # B1, B2
        [1, 0, 0, 1, 0, 0, 1],  # N1, at 03:00
    ]
    assert all(str(frame[c].dtype) == "int64" for c in counts)
    assert frame["first_event"].iloc[0].to_pydatetime() == seeded["A0"].event_time
    assert frame["last_event"].iloc[0].to_pydatetime() == seeded["A6"].event_time
    assert set(frame["period_start"]) == {pd.Timestamp(SINCE)} and set(frame["period_end"]) == {pd.Timestamp(UNTIL)}


def test_working_hours_follow_the_configured_time_zone_and_days(
    settings: AuditSettings, seeded: dict[str, AuditEvent]
) -> None:
    # New York is UTC-5 until 9 March 2025: 09:00Z is 04:00 there, Saturday 00:00Z is Friday 19:00.
    new_york = settings.with_overrides(reports={"timezone": "America/New_York"})
    with AuditDatabase(new_york) as db:
        report = db.reports.access_report("org-a", "p-1", SINCE, UNTIL)
    assert list(report.frame["after_hours"]) == [True, True, False, False]  # 19:00 Fri, 04:00, 17:30, 07:00
    weekends = settings.with_overrides(reports={"working_days": "sat,sun", "working_hours_start": "00:00",
                                                "working_hours_end": "23:59:59"})
    with AuditDatabase(weekends) as db:
        report = db.reports.access_report("org-a", "p-1", SINCE, UNTIL)
    assert list(report.frame["after_hours"]) == [False, True, True, True]


def test_disclosure_patterns_are_configurable_and_match_literally(
    settings: AuditSettings, seeded: dict[str, AuditEvent]
) -> None:
    exports = settings.with_overrides(reports={"disclosure_actions": "patient.record.exp*", "disclosure_flag": "none"})
    with AuditDatabase(exports) as db:
        assert ids(db.reports.disclosures("org-a", SINCE, UNTIL)) == expect(seeded, "A4")
        # "_" and "%" are literal characters of a pattern, not LIKE wildcards.
        db.insert(AuditEvent(event_time=at(20), action="patient_record_exp", status="success",
                             principal_id="u", organization_id="org-a"))
        literal = settings.with_overrides(reports={"disclosure_actions": "patient_record_exp", "disclosure_flag": "x"})
    with AuditDatabase(literal) as db:
        report = db.reports.disclosures("org-a", SINCE, UNTIL)
    assert list(report.frame["action"]) == ["patient_record_exp"]


def test_large_results_stream_in_batches_without_losing_rows(settings: AuditSettings) -> None:
    small_batches = settings.with_overrides(reports={"batch_rows": 100})
    with AuditDatabase(small_batches) as db:
        db.partitions.create_partition("2025-03")
        db.insert_many(AuditEvent(event_time=SINCE + dt.timedelta(minutes=i), action="patient.record.read",
                                  status="success", principal_id="busy", organization_id="org-a",
                                  target_resource_type="Patient", target_resource_id=f"p-{i % 7}")
                       for i in range(1234))
        report = db.reports.activity_report("org-a", "busy", SINCE, UNTIL)
    assert report.rows == 1234
    assert report.frame["event_time"].is_monotonic_increasing and report.frame["event_id"].is_unique


def test_reports_by_identity_find_pseudonymized_events(settings: AuditSettings) -> None:
    private = settings.with_overrides(privacy={"pseudonymize": ["principal_id", "target_resource_id"],
                                               "lookup_key": "reports-test-lookup-key-0123456789abcdef"})
    with AuditDatabase(private) as db:
        db.partitions.create_partition("2025-03")
        db.insert_many(seed_events().values())
        access = db.reports.access_report("org-a", "p-1", SINCE, UNTIL)
        activity = db.reports.activity_report("org-a", "dr.house", SINCE, UNTIL)
        nobody = db.reports.access_report("org-a", "p-never-seen", SINCE, UNTIL)
        names = db.privacy.reveal(list(access.frame["principal_id"]) + list(access.frame["target_resource_id"]))
    assert access.rows == 4 and activity.rows == 4 and nobody.rows == 0
    # What is stored is shown: pseudonyms, which the maintainer can map back.
    assert all(v.startswith("psn_") for v in access.frame["principal_id"])
    assert [names[v] for v in access.frame["principal_id"]] == ["dr.house", "dr.house", "nurse.joy", "clerk.7"]
    assert {names[v] for v in access.frame["target_resource_id"]} == {"p-1"}


# -- empty and bad input -----------------------------------------------------------------------------------------------


def test_a_period_without_data_gives_an_empty_report_with_its_columns(
    db: AuditDatabase, seeded: dict[str, AuditEvent], tmp_path: Path
) -> None:
    june = (dt.datetime(2025, 6, 1, tzinfo=UTC), dt.datetime(2025, 7, 1, tzinfo=UTC))
    reports = [
        db.reports.access_report("org-a", "p-1", *june),
        db.reports.activity_report("org-a", "dr.house", *june),
        db.reports.disclosures("org-a", *june),
        db.reports.compliance_summary(*june),
        db.reports.access_report("org-a", "no-such-patient", SINCE, UNTIL),
    ]
    for report in reports:
        assert report.rows == 0 and report.columns == list(SCHEMAS[report.kind].names)
    empty = reports[0]
    assert str(empty.frame["event_time"].dtype) == "datetime64[us, UTC]"
    empty.to_csv(tmp_path / "empty.csv")
    assert (tmp_path / "empty.csv").read_text().splitlines() == [",".join(EVENT_COLUMNS)]
    empty.to_json(tmp_path / "empty.json")
    document = json.loads((tmp_path / "empty.json").read_text())
    assert [f["name"] for f in document["schema"]["fields"]] == EVENT_COLUMNS and document["data"] == []
    empty.to_parquet(tmp_path / "empty.parquet")
    table = pq.read_table(tmp_path / "empty.parquet")
    assert table.num_rows == 0 and table.schema.names == EVENT_COLUMNS
    for fmt in ("csv", "json", "parquet"):
        back = read_report(tmp_path / f"empty.{fmt}", "access")
        assert back.empty and list(back.columns) == EVENT_COLUMNS


@pytest.mark.parametrize(
    ("call", "field", "reason"),
    [
        (lambda r: r.access_report("org-zzz", "p-1", SINCE, UNTIL), "organization_id", "no audit event is stored"),
        (lambda r: r.activity_report("org-a", "dr.house", UNTIL, SINCE), "until", "must be later than since"),
        (lambda r: r.disclosures("org-a", SINCE, SINCE), "until", "must be later than since"),
        (lambda r: r.compliance_summary(dt.datetime(2025, 3, 1), UNTIL), "since", "must be timezone-aware"),
        (lambda r: r.compliance_summary("March", UNTIL), "since", "not an ISO 8601 date"),
        (lambda r: r.compliance_summary(SINCE, None), "until", "is required"),
        (lambda r: r.access_report("org-a", "", SINCE, UNTIL), "target_resource_id", "1 to 256 characters"),
        (lambda r: r.access_report("org-a", None, SINCE, UNTIL), "target_resource_id", "is required"),
        (lambda r: r.activity_report(None, "dr.house", SINCE, UNTIL), "organization_id", "is required"),
        (lambda r: r.activity_report("org-a", "x\x00y", SINCE, UNTIL), "principal_id", "NUL"),
        (lambda r: r.explain("activity", organization_id="org-a", since=SINCE, until=UNTIL), "principal_id",
         "is required"),
        (lambda r: r.explain("billing", since=SINCE, until=UNTIL), "report", "must be one of access, activity"),
    ],
)
def test_bad_input_is_an_error_naming_the_field(
    db: AuditDatabase, seeded: dict[str, AuditEvent], call: Any, field: str, reason: str
) -> None:
    with pytest.raises(AuditValidationError) as info:
        call(db.reports)
    assert info.value.fields == [field]
    assert reason in str(info.value)


def test_bad_export_arguments_name_the_field(db: AuditDatabase, seeded: dict[str, AuditEvent], tmp_path: Path) -> None:
    report = db.reports.activity_report("org-a", "dr.house", SINCE, UNTIL)
    cases = [
        (lambda: db.reports.write(report, tmp_path / "r.csv", "xml"), "format", "must be one of csv, json, parquet"),
        (lambda: db.reports.write(report, tmp_path / "r.txt"), "format", "cannot be inferred"),
        (lambda: db.reports.write(report.frame, tmp_path / "r.csv"), "report", "expected a Report"),
        (lambda: db.reports.write(report, tmp_path, "csv"), "path", "is a directory"),
    ]
    for call, field, reason in cases:
        with pytest.raises(AuditValidationError) as info:
            call()
        assert info.value.fields == [field] and reason in str(info.value)
    assert list(tmp_path.iterdir()) == [] and ledger_exports(db.settings.database_url.get_secret_value()) == []


# -- exports -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "json", "parquet"])
def test_exports_round_trip_and_are_recorded_in_the_ledger(
    db: AuditDatabase, seeded: dict[str, AuditEvent], tmp_path: Path, fmt: str
) -> None:
    report = db.reports.access_report("org-a", "p-1", SINCE, UNTIL, target_resource_type="Patient")
    path = tmp_path / "out" / f"access.{fmt}"  # the directory is made
    result = getattr(report, f"to_{fmt}")(path, requested_by="privacy.officer", run_id="run-42")
    assert result.rows == 4 and result.format == fmt and result.path == path
    data = path.read_bytes()
    assert result.bytes == len(data) and result.sha256 == hashlib.sha256(data).hexdigest()
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left

    back = read_report(path, "access")
    pd.testing.assert_frame_equal(back, report.frame, check_dtype=True)

    (entry,) = ledger_exports(db.settings.database_url.get_secret_value())
    assert (entry.operation, entry.outcome, entry.row_count, entry.byte_count, entry.checksum, entry.run_id) == (
        "report_export", "ok", 4, len(data), result.sha256, "run-42")
    details = entry.details
    assert details["report"] == "access" and details["format"] == fmt and details["organization_id"] == "org-a"
    assert details["requested_by"] == "privacy.officer" and details["path"] == str(path.resolve())
    assert details["since"] == "2025-03-01T00:00:00.000000Z" and details["until"] == "2025-04-01T00:00:00.000000Z"
    # Without pseudonyms and without a lookup key the patient identifier is not recorded at all — not even as a
    # plain SHA-256, which anyone could recompute from a list of candidate ids; no row of the report is there.
    text = json.dumps(details)
    assert not any(k.startswith("target_resource_id") for k in details)
    assert hashlib.sha256(b"p-1").hexdigest() not in text
    assert "p-1" not in text and "dr.house" not in text and "nurse.joy" not in text


def test_with_a_lookup_key_the_ledger_keeps_a_keyed_hash_of_an_identifier_in_clear(
    fresh_database: str, seeded: dict[str, AuditEvent], tmp_path: Path
) -> None:
    key = "report-ledger-test-key-0123456789abcdef"
    settings = AuditSettings(database_url=fresh_database, privacy={"lookup_key": key})
    with AuditDatabase(settings) as keyed:
        keyed.reports.access_report("org-a", "p-1", SINCE, UNTIL).to_csv(tmp_path / "a.csv")
        with keyed.connections.connection() as conn:
            (entry,) = entries(conn, operation="report_export")
    expected = hmac.new(key.encode(), b"report-ledger\x00target_resource_id\x00p-1", hashlib.sha256).hexdigest()
    assert entry.details["target_resource_id_hmac"] == expected  # an auditor with the key can match a known id
    assert "p-1" not in json.dumps(entry.details)


def test_csv_and_json_are_readable_without_the_library(
    db: AuditDatabase, seeded: dict[str, AuditEvent], tmp_path: Path
) -> None:
    report = db.reports.disclosures("org-a", SINCE, UNTIL)
    db.reports.write(report, tmp_path / "d.csv")
    lines = (tmp_path / "d.csv").read_text().splitlines()
    assert lines[0] == ",".join(DISCLOSURE_COLUMNS)
    assert lines[1].startswith("2025-03-04T12:00:00.000000Z,") and ",Acme Insurance,payment," in lines[1]
    db.reports.write(report, tmp_path / "d.json")
    frame = pd.read_json(tmp_path / "d.json", orient="table")
    assert list(frame["recipient"]) == ["Acme Insurance", "County court"]
    assert str(frame["event_time"].dt.tz) == "UTC"
    summary = db.reports.compliance_summary(SINCE, UNTIL)
    summary.to_parquet(tmp_path / "s.parquet")
    assert description_of(tmp_path / "s.parquet") == {"report": "compliance_summary", "since": "2025-03-01T00:00:00.000000Z",
                                                      "until": "2025-04-01T00:00:00.000000Z"}


def test_an_export_the_ledger_cannot_record_leaves_no_file(
    db: AuditDatabase, seeded: dict[str, AuditEvent], tmp_path: Path
) -> None:
    report = db.reports.activity_report("org-a", "dr.house", SINCE, UNTIL)
    # The ledger cannot take the entry for real: the function exports record through is gone.
    with psycopg.connect(db.settings.database_url.get_secret_value(), autocommit=True) as conn:
        conn.execute("DROP FUNCTION audit_record_report_export(bigint, bigint, text, double precision, jsonb, text)")
    with pytest.raises(Exception, match="audit_record_report_export"):
        report.to_csv(tmp_path / "a.csv")
    assert list(tmp_path.iterdir()) == []


# -- plans -------------------------------------------------------------------------------------------------------------

FILL = """
INSERT INTO audit_log (event_id, event_time, action, status, principal_id, organization_id, target_resource_type,
    target_resource_id, data_classification, retention_policy, event_version, content_hash, details)
SELECT md5('plan:' || i)::uuid, '2025-03-01'::timestamptz + i * interval '40 seconds', 'patient.record.read',
    'success', 'user-' || mod(i, 200), 'org-' || mod(i, 5), 'Patient', 'p-' || mod(i, 5000), 'PHI', 'hipaa', '1',
    sha256(i::text::bytea), jsonb_build_object('break_glass', mod(i, 100) = 0)
FROM generate_series(1, %s) AS g(i)
"""


def index_columns(url: str, names: set[str]) -> list[str]:
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute("SELECT indexdef FROM pg_indexes WHERE indexname = ANY(%s)", (list(names),))]


def test_access_and_activity_reports_use_an_index_on_a_large_month(settings: AuditSettings) -> None:
    url = settings.database_url.get_secret_value()
    with AuditDatabase(settings) as db:
        db.partitions.create_partition("2025-03")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(FILL, (60_000,))
            conn.execute("ANALYZE audit_log_p2025_03")
        # p-42 and user-7 belong to org-2 (i % 5 == 2): 12 and 300 of the month's 60,000 rows.
        access = db.reports.explain("access", organization_id="org-2", target_resource_type="Patient",
                                    target_resource_id="p-42", since=SINCE, until=UNTIL)
        activity = db.reports.explain("activity", organization_id="org-2", principal_id="user-7",
                                      since=SINCE, until=UNTIL)
        assert db.reports.access_report("org-2", "p-42", SINCE, UNTIL, target_resource_type="Patient").rows == 12
        assert db.reports.activity_report("org-2", "user-7", SINCE, UNTIL).rows == 300
    for plan, column in ((access, "target_resource_id"), (activity, "principal_id")):
        assert plan.sequential_scans == set(), plan.plan
        assert plan.indexes, plan.plan
        definitions = index_columns(url, plan.indexes)
        assert definitions and all(column in d or "organization_id" in d for d in definitions), definitions
        # Pruned to the month's partition (a bitmap index scan names no relation; its heap scan does).
        assert {s["relation"] for s in plan.scans} - {None} == {"audit_log_p2025_03"}, plan.scans


# -- the command line --------------------------------------------------------------------------------------------------

CLI = [sys.executable, "-m", "audit_db_core.cli"]


def cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDIT_")}
    env["AUDIT_DATABASE_URL"] = url
    return subprocess.run([*CLI, "report", *args], env=env, capture_output=True, text=True, timeout=120)


def test_cli_writes_each_report(db: AuditDatabase, seeded: dict[str, AuditEvent], tmp_path: Path) -> None:
    url = db.settings.database_url.get_secret_value()
    period_args = ["--since", "2025-03-01", "--until", "2025-04-01T00:00:00Z"]
    runs = [
        ("access", ["--org", "org-a", "--target-id", "p-1", "--target-type", "Patient", "--format", "csv"], 4),
        ("activity", ["--org", "org-a", "--principal", "dr.house", "--format", "json"], 4),
        ("disclosures", ["--org", "org-a", "--format", "parquet"], 2),
        ("summary", ["--format", "csv"], 3),
    ]
    for kind, args, rows in runs:
        out = tmp_path / f"{kind}.{args[-1]}"
        done = cli(url, kind, *args, *period_args, "--output", str(out), "--requested-by", "auditor")
        assert done.returncode == 0, done.stderr
        assert f"{rows} rows" in done.stdout and str(out) in done.stdout
        frame = read_report(out, "compliance_summary" if kind == "summary" else kind)
        assert len(frame) == rows
    recorded = ledger_exports(url)
    assert [e.details["report"] for e in recorded] == ["access", "activity", "disclosures", "compliance_summary"]
    assert {e.details["requested_by"] for e in recorded} == {"auditor"}


@pytest.mark.parametrize(
    ("args", "option", "reason"),
    [
        (["access", "--org", "org-zzz", "--target-id", "p-1"], "--org", "no audit event is stored"),
        (["activity", "--org", "org-a", "--principal", "u", "--since", "2025-04-01", "--until", "2025-03-01"],
         "--until", "must be later than since"),
        (["activity", "--org", "org-a", "--principal", "u", "--since", "yesterday"], "--since", "ISO 8601"),
        (["disclosures", "--org", "org-a", "--output", "report.xlsx"], "--format", "cannot be inferred"),
        (["disclosures", "--org", "org-a", "--format", "xml"], "--format", "invalid choice"),
        (["access", "--org", "org-a"], "--target-id", "required"),
    ],
)
def test_cli_bad_input_exits_2_naming_the_option(
    db: AuditDatabase, seeded: dict[str, AuditEvent], tmp_path: Path, args: list[str], option: str, reason: str
) -> None:
    args = [str(tmp_path / a) if a.endswith(".xlsx") else a for a in args]
    base = {"--since": "2025-03-01", "--until": "2025-04-01", "--output": str(tmp_path / "r.csv")}
    extra = [x for k, v in base.items() if k not in args for x in (k, v)]
    done = cli(db.settings.database_url.get_secret_value(), *args, *extra)
    assert done.returncode == 2, done.stdout + done.stderr
    assert option in done.stderr and reason in done.stderr
    assert "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == []
