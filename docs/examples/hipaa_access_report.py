"""A HIPAA access report: who looked at one patient's record during a week, for the privacy officer.

Records a week of accesses to a patient's record (a visit, an after-hours break-glass read, a disclosure, and one
access by another organization that must not appear), then makes the access report — with its after-hours and
break-glass flags — and exports it to CSV. The export is recorded in the lifecycle ledger with the file's SHA-256,
never its rows. Each run uses a patient of its own, so it can be run again on the same database.

Needs the ``reports`` extra (pandas)::

    eval "$(.venv/bin/audit-platform local up)"       # or set AUDIT_DATABASE_URL yourself
    .venv/bin/python docs/examples/hipaa_access_report.py --output-dir /tmp/reports

Exits 0 when the report says what was recorded, 1 otherwise.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import sys
import uuid
from pathlib import Path

from audit_db_core import AuditDatabase, AuditEvent, AuditSettings
from audit_db_core.ledger import entries


def last_monday(today: dt.date) -> dt.date:
    """The Monday of last week: a working day long enough ago to be a closed period."""
    return today - dt.timedelta(days=today.weekday() + 7)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, default=Path("."), help="where the CSV goes (default: here)")
    args = parser.parse_args()

    patient = f"p-{uuid.uuid4().hex[:8]}"
    monday = last_monday(dt.datetime.now(dt.UTC).date())
    since = dt.datetime.combine(monday, dt.time(), dt.UTC)
    until = since + dt.timedelta(days=7)

    def at(day: int, hour: int, minute: int = 0) -> dt.datetime:
        return since + dt.timedelta(days=day, hours=hour, minutes=minute)

    record = {"target_resource_type": "Patient", "target_resource_id": patient, "data_classification": "PHI"}
    with AuditDatabase(AuditSettings()) as db:
        db.migrate()
        db.insert_many([
            AuditEvent(event_time=at(0, 9), action="patient.record.read", status="success", principal_id="dr.house",
                       organization_id="st-mary", **record),
            AuditEvent(event_time=at(0, 23, 40), action="patient.record.read", status="success",
                       principal_id="nurse.joy", organization_id="st-mary", details={"break_glass": True}, **record),
            AuditEvent(event_time=at(1, 14), action="patient.record.disclose", status="success",
                       principal_id="clerk.7", organization_id="st-mary",
                       details={"recipient": "Acme Insurance", "purpose": "payment"}, **record),
            AuditEvent(event_time=at(2, 10), action="patient.record.read", status="success", principal_id="dr.who",
                       organization_id="general-hospital", **record),
        ])
        db.partitions.rescue_default()  # last week's period may have no partition yet: as the daily job would

        report = db.reports.access_report("st-mary", patient, since, until, target_resource_type="Patient")
        columns = ["event_time", "principal_id", "action", "status", "after_hours", "break_glass"]
        print(f"access to {patient} at st-mary, week of {monday}:")
        print(report.frame[columns].to_string(index=False))

        args.output_dir.mkdir(parents=True, exist_ok=True)
        path = args.output_dir / f"access-report-{monday}.csv"  # named after the request, not the patient
        export = report.to_csv(path, requested_by="privacy.officer")
        print(f"{export.rows} rows written to {export.path} (sha256 {export.sha256})")
        with db.connections.connection() as conn:
            entry = entries(conn, operation="report_export")[-1]
        print(f"ledger: {entry.operation} by {entry.details['requested_by']}, {entry.row_count} rows, "
              f"sha256 {entry.checksum}")

    ok = (list(report.frame["principal_id"]) == ["dr.house", "nurse.joy", "clerk.7"]  # not general-hospital's
          and list(report.frame["after_hours"]) == [False, True, False]
          and list(report.frame["break_glass"]) == [False, True, False]
          and hashlib.sha256(path.read_bytes()).hexdigest() == export.sha256 == entry.checksum
          and patient not in str(entry.details))
    print("ok" if ok else "UNEXPECTED RESULTS")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
