"""``subject_request_job`` run in process against real PostgreSQL: an export and an erasure from run config, with
the identifier absent from every event the run logged (metadata included)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from audit_db_core import AuditDatabase, AuditEvent, AuditQuery, AuditSettings
from audit_platform.jobs import subject_request_job
from audit_platform.resources import AuditDatabaseResource

LOOKUP_KEY = "platform-test-lookup-key-0123456789abcdef"
PATIENT = "patient-0815"


@pytest.fixture(autouse=True)
def _privacy_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("AUDIT_REPLICA_URLS", "AUDIT_REDIS_URL", "AUDIT_ARCHIVE__ROOT_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AUDIT_PRIVACY__PSEUDONYMIZE", "principal_id,target_resource_id")
    monkeypatch.setenv("AUDIT_PRIVACY__LOOKUP_KEY", LOOKUP_KEY)
    monkeypatch.setenv("AUDIT_REPORTS__DIRECTORY", str(tmp_path / "reports"))


def _seed(url: str) -> None:
    with AuditDatabase(AuditSettings(database_url=url)) as db:  # privacy settings from the environment above
        db.insert_many([AuditEvent(action="patient.record.read", status="success", principal_id="dr.who",
                                   target_resource_type="Patient", target_resource_id=PATIENT) for _ in range(3)])


def _run(url: str, instance: dg.DagsterInstance, **config: Any) -> dg.ExecuteInProcessResult:
    return subject_request_job.execute_in_process(
        run_config={"ops": {"subject_request": {"config": config}}},
        resources={"audit_db": AuditDatabaseResource(database_url=url)}, instance=instance, raise_on_error=False)


def _logged(instance: dg.DagsterInstance, result: dg.ExecuteInProcessResult) -> str:
    """Everything the run wrote to Dagster's event log: messages, metadata, outputs."""
    return "\n".join(repr(record) for record in instance.all_logs(result.run_id))


def _metadata(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    (event,) = [e for e in result.all_node_events if e.event_type_value == "STEP_OUTPUT"]
    return {k: v.value for k, v in event.step_output_data.metadata.items()}


def test_export_then_erase_from_run_config(fresh_database: str, tmp_path: Path) -> None:
    _seed(fresh_database)
    with dg.DagsterInstance.ephemeral() as instance:
        export = _run(fresh_database, instance, kind="export", value=PATIENT, field="target_resource_id",
                      requested_by="dpo")
        assert export.success
        meta = _metadata(export)
        assert meta["found"] is True and meta["events"] == 3 and meta["complete"] is True
        path = Path(meta["path"])
        assert path.parent == tmp_path / "reports" / "subject-exports" and path.name == f"{export.run_id}.json"
        doc = json.loads(path.read_text())
        assert {e["target_resource_id"] for e in doc["events"]} == {PATIENT}
        assert PATIENT not in _logged(instance, export)

        # The erasure by subject id: the run config holds no identifier either.
        erase = _run(fresh_database, instance, kind="erase", subject_id=meta["subject_ids"])
        assert erase.success
        erased = _metadata(erase)
        assert erased["found"] is True and erased["events_unlinked"] == 3
        assert erased["subject_ids"] == meta["subject_ids"]
        logged = _logged(instance, erase)
        assert "events_unlinked" in logged and meta["subject_ids"] in logged  # the log holds the metadata …
        assert PATIENT not in logged  # … and never the identifier

        # An unknown subject: a successful run that says nothing matched, never a crash.
        again = _run(fresh_database, instance, kind="erase", value=PATIENT)
        assert again.success and _metadata(again)["found"] is False and _metadata(again)["subject_ids"] == "none"
        assert any("no data subject matched" in (r.user_message or "") for r in instance.all_logs(again.run_id))
        assert PATIENT not in _logged(instance, again)
    with AuditDatabase(AuditSettings(database_url=fresh_database)) as db:
        assert db.count(AuditQuery(target_resource_id=PATIENT)) == 0
        assert db.count(AuditQuery()) == 3


def test_bad_run_config_fails_the_run_naming_the_field(fresh_database: str) -> None:
    with dg.DagsterInstance.ephemeral() as instance:
        result = _run(fresh_database, instance, kind="erase", value=PATIENT, subject_id="not-a-uuid")
        assert not result.success
        (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
        message = failure.step_failure_data.user_failure_data.description
        assert "value" in message and "subject_id" in message
        assert PATIENT not in _logged(instance, result)


def test_an_export_from_run_config_stays_inside_the_export_root(fresh_database: str, tmp_path: Path) -> None:
    _seed(fresh_database)
    root = tmp_path / "reports"
    outside = tmp_path / "elsewhere.json"
    with dg.DagsterInstance.ephemeral() as instance:
        for output in (str(outside), "../elsewhere.json", "subject-exports/../../elsewhere.json", "."):
            refused = _run(fresh_database, instance, kind="export", value=PATIENT, output=output)
            assert not refused.success
            logged = _logged(instance, refused)
            assert "must be a file inside the export root AUDIT_REPORTS__DIRECTORY" in logged
            assert PATIENT not in logged
        assert not outside.exists()
        # A relative path inside the root is fine.
        inside = _run(fresh_database, instance, kind="export", value=PATIENT, output="dpo/case-7.json")
        assert inside.success and Path(_metadata(inside)["path"]) == root / "dpo" / "case-7.json"
        assert (root / "dpo" / "case-7.json").exists()
