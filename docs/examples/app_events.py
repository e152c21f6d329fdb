"""An application writing audit events and answering questions about them.

Writes one event (``insert``), a batch (``insert_many``, COPY) and a unit of work (``transaction``), then reads
them back: filters, keyset paging with the cursor, counting. Every event of a run carries the run's ``session_id``,
so the script can be run again on the same database.

Run it against any migrated database (the script migrates, which is a no-op on a current schema)::

    eval "$(.venv/bin/audit-platform local up)"       # or set AUDIT_DATABASE_URL yourself
    .venv/bin/python docs/examples/app_events.py

Exits 0 when every step found what it wrote, 1 otherwise.
"""

from __future__ import annotations

import datetime as dt
import sys
import uuid

from audit_db_core import AuditDatabase, AuditEvent, AuditQuery, AuditSettings


def main() -> int:
    session = f"demo-{uuid.uuid4().hex[:12]}"  # one per run: the reads below see this run's events only
    now = dt.datetime.now(dt.UTC)
    with AuditDatabase(AuditSettings()) as db:
        db.migrate()

        # One event: a chart view. A retry of the same object writes nothing twice.
        view = AuditEvent(action="patient.record.read", status="success", principal_id="dr.house",
                          organization_id="st-mary", target_resource_type="Patient", target_resource_id="p-123",
                          data_classification="PHI", session_id=session, source="ehr-api",
                          details={"fields": ["allergies", "medications"]})
        stored_once = db.insert(view) and not db.insert(view)

        # A batch: a night of lab results, newest 250 seconds apart.
        results = [AuditEvent(action="lab.result.read", status="success", principal_id="dr.foreman",
                              organization_id="st-mary", target_resource_type="Patient",
                              target_resource_id=f"p-{i % 7}", data_classification="PHI", session_id=session,
                              event_time=now - dt.timedelta(seconds=250 * i)) for i in range(120)]
        written = db.insert_many(results)
        print(f"insert_many wrote {written} events")

        # A unit of work: the export attempt and its outcome commit together, or not at all.
        with db.transaction() as tx:
            tx.insert(AuditEvent(action="patient.record.export", status="attempt", principal_id="dr.cuddy",
                                 target_resource_type="Patient", target_resource_id="p-123",
                                 data_classification="PHI", session_id=session))
            tx.insert(AuditEvent(action="patient.record.export", status="failure", principal_id="dr.cuddy",
                                 target_resource_type="Patient", target_resource_id="p-123",
                                 data_classification="PHI", session_id=session,
                                 outcome_description="denied by policy"))

        # Who touched p-123 in this session? Newest first.
        touched = db.query(AuditQuery(session_id=session, target_resource_id="p-123"))
        for e in touched:
            print(f"{e.event_time:%Y-%m-%d %H:%M:%S} {e.principal_id:<11} {e.action:<22} {e.status.value}")

        # Failures only, then every page of the lab results, 50 at a time.
        failures = db.query(AuditQuery(session_id=session, status="failure"))
        query = AuditQuery(session_id=session, action="lab.result.read", limit=50)
        page = db.query(query)
        seen, pages = [e.event_id for e in page], 1
        while page.next_cursor:
            page = db.query(query.model_copy(update={"cursor": page.next_cursor}))
            seen += [e.event_id for e in page]
            pages += 1
        total = db.count(AuditQuery(session_id=session))
        print(f"{len(seen)} lab results in {pages} pages; {len(failures)} failure(s); {total} events in the session")

    ok = (stored_once and written == 120 and [e.principal_id for e in touched] == ["dr.cuddy", "dr.cuddy", "dr.house"]
          and [e.outcome_description for e in failures] == ["denied by policy"]
          and len(seen) == len(set(seen)) == 120 and pages == 3 and total == 123)
    print("ok" if ok else "UNEXPECTED RESULTS")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
