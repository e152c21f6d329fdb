"""Realistic, deterministic sample events for demos, benchmarks and tests.

Example::

    events = demo_events(1000, seed=1)       # spread over the last 30 days
    db.insert_many(events)
"""

from __future__ import annotations

import datetime as dt
import random

from audit_db_core.events import AuditEvent

ACTIONS = (
    ("patient.record.read", "PHI", 50),
    ("patient.record.update", "PHI", 12),
    ("patient.record.export", "PHI", 3),
    ("patient.record.print", "PHI", 2),
    ("prescription.create", "PHI", 6),
    ("lab.result.read", "PHI", 10),
    ("user.login", "INTERNAL", 12),
    ("user.logout", "INTERNAL", 6),
    ("user.password.change", "CONFIDENTIAL", 1),
    ("report.compliance.generate", "CONFIDENTIAL", 1),
    ("system.config.read", "PUBLIC", 2),
)
SOURCES = ("ehr-api", "portal", "lab-gateway", "pharmacy", "admin-console")


def demo_events(
    n: int,
    *,
    seed: int = 1,
    now: dt.datetime | None = None,
    span: dt.timedelta = dt.timedelta(days=30),
    principals: int = 50,
    organizations: int = 10,
) -> list[AuditEvent]:
    """``n`` events with event times in ``[now - span, now)``, reproducible for a given seed."""
    rng = random.Random(seed)
    end = now or dt.datetime.now(dt.UTC)
    weights = [w for _, _, w in ACTIONS]
    events = []
    for i in range(n):
        action, classification, _ = rng.choices(ACTIONS, weights)[0]
        roll = rng.random()
        status = "failure" if roll < 0.04 else "attempt" if roll < 0.06 else "success"
        patient = f"patient-{rng.randrange(5000):05d}"
        is_patient_action = classification == "PHI"
        events.append(
            AuditEvent(
                event_time=end - span * rng.random(),
                action=action,
                status=status,
                principal_id=f"user-{rng.randrange(principals):03d}",
                organization_id=f"org-{rng.randrange(organizations):02d}",
                target_resource_type="Patient" if is_patient_action else "System",
                target_resource_id=patient if is_patient_action else None,
                outcome_description="denied by policy" if status == "failure" else None,
                data_classification=classification,
                retention_policy="hipaa" if classification == "PHI" else "standard",
                correlation_id=f"req-{seed}-{i // 3:08d}",
                session_id=f"sess-{rng.randrange(2000):05d}",
                source=rng.choice(SOURCES),
                processing_latency_ms=rng.randrange(1, 250),
                details={
                    "ip": f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}",
                    "ward": rng.choice(["icu", "er", "oncology", "pediatrics", "outpatient"]),
                    "fields": rng.sample(["allergies", "medications", "diagnoses", "labs", "notes"], k=2),
                    "break_glass": rng.random() < 0.01,
                },
            )
        )
    return events
