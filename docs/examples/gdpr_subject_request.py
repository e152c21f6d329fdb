"""A GDPR subject request: export everything the audit log holds about one patient, then erase the patient.

Identifiers in ``principal_id`` and ``target_resource_id`` are stored as random pseudonyms from ingestion on; the
mapping back to the person lives apart. The export finds the patient's events (with the patient's identifier put
back, other people's pseudonyms left alone) and writes them to JSON; the erasure deletes the mapping, so the events
stay — counted, sealed, verifiable — but lead to nobody. Both requests are recorded in the lifecycle ledger without
the identifier.

Settings come from the environment. ``AUDIT_PRIVACY__PSEUDONYMIZE`` and ``AUDIT_PRIVACY__LOOKUP_KEY`` are used when
set; otherwise this demo pseudonymizes both fields with a key of its own run. With ``AUDIT_INTEGRITY__SIGNING_KEY``
set (``audit-platform integrity keygen``) it also seals the events and shows that the signed digests still verify
after the erasure. Each run uses a patient of its own::

    eval "$(.venv/bin/audit-platform local up)"       # or set AUDIT_DATABASE_URL yourself
    .venv/bin/python docs/examples/gdpr_subject_request.py --output-dir /tmp/dsr

Exits 0 when export, erasure (and verification) did what they should, 1 otherwise.
"""

from __future__ import annotations

import argparse
import datetime as dt
import secrets
import sys
import time
import uuid
from pathlib import Path

from audit_db_core import AuditDatabase, AuditEvent, AuditQuery, AuditSettings


def settings_for_the_demo() -> AuditSettings:
    settings = AuditSettings()
    if settings.privacy.pseudonymize:
        return settings
    print("AUDIT_PRIVACY__PSEUDONYMIZE is not set: pseudonymizing principal_id and target_resource_id with a "
          "lookup key of this run only")
    return settings.with_overrides(privacy={"pseudonymize": ["principal_id", "target_resource_id"],
                                            "lookup_key": secrets.token_urlsafe(32)})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, default=Path("."), help="where the export goes (default: here)")
    args = parser.parse_args()

    patient, other = f"p-{uuid.uuid4().hex[:8]}", f"p-{uuid.uuid4().hex[:8]}"
    request = f"DSR-{uuid.uuid4().hex[:8]}"  # the ticket of this request: the run id of its ledger entries
    two_days_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=2)  # a closed day: sealable
    settings = settings_for_the_demo()
    sealing = settings.integrity.signing_key is not None
    checks: dict[str, bool] = {}
    with AuditDatabase(settings) as db:
        db.migrate()
        db.insert_many(AuditEvent(action="patient.record.read", status="success", principal_id=doctor,
                                  target_resource_type="Patient", target_resource_id=target,
                                  data_classification="PHI", event_time=two_days_ago + dt.timedelta(minutes=i))
                       for i, (doctor, target) in enumerate([("dr.house", patient), ("nurse.joy", patient),
                                                             ("dr.house", other)]))
        db.partitions.rescue_default()  # two days ago may be last month, without a partition: as the daily job would
        stored = db.query(AuditQuery(target_resource_id=patient)).events
        print(f"{patient} is stored as {stored[0].target_resource_id}; {len(stored)} events found by identity")
        checks["stored as a pseudonym"] = all(e.target_resource_id != patient for e in stored) and len(stored) == 2
        if sealing:
            time.sleep(settings.integrity.cutoff_grace_seconds + 0.5)  # past the seal's cutoff margin
            print(f"sealed: {db.integrity.seal().status}")

        export = db.privacy.export_subject(patient, requested_by="privacy.officer", run_id=request)
        args.output_dir.mkdir(parents=True, exist_ok=True)
        path, size, sha256 = export.write(args.output_dir / "subject-export.json")  # named after the request
        print(f"export: {len(export.events)} events of {len(export.subjects)} subject(s) in {path} "
              f"({size} bytes, sha256 {sha256})")
        checks["export"] = export.found and {e["target_resource_id"] for e in export.events} == {patient}

        before = db.count(AuditQuery())
        erasure = db.privacy.erase_subject(patient, requested_by="privacy.officer", run_id=request)
        print(f"erasure: {erasure.events_unlinked} events no longer lead to the patient")
        checks["erasure"] = erasure.found and erasure.events_unlinked == 2
        checks["nothing leads to the patient"] = (not db.privacy.export_subject(patient, run_id=request).found
                                                  and db.count(AuditQuery(target_resource_id=patient)) == 0)
        checks["every event is still there"] = db.count(AuditQuery()) == before
        checks["the other patient is untouched"] = db.count(AuditQuery(target_resource_id=other)) == 1
        if sealing:
            report = db.integrity.verify()
            print(f"integrity: {report.summary()}")
            checks["the signed digests still verify"] = report.ok
        else:
            print("integrity: not checked (set AUDIT_INTEGRITY__SIGNING_KEY: audit-platform integrity keygen)")

        with db.connections.connection() as conn:
            ledgered = conn.execute(
                "SELECT operation, outcome, row_count, details FROM audit_lifecycle_ledger WHERE run_id = %s"
                " ORDER BY entry_id", (request,)).fetchall()
        for operation, outcome, rows, details in ledgered:
            print(f"ledger {request}: {operation} {outcome}, {rows} events, subjects {details['subject_ids']}")
        checks["ledgered without the identifier"] = (
            [(op, outcome) for op, outcome, *_ in ledgered]
            == [("subject_export", "ok"), ("subject_erasure", "ok"), ("subject_export", "skipped")]
            and all(patient not in str(details) for *_, details in ledgered))

    for name, passed in checks.items():
        print(f"{'ok' if passed else 'FAILED'}: {name}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
