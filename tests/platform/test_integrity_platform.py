"""The integrity job (seal, then verify) and the ``integrity_verified`` asset check, run through Dagster against
real PostgreSQL: honest data passes, a forged row fails the run / the check and is named in the metadata."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import dagster as dg
import psycopg
import pytest

from audit_db_core import AuditDatabase, AuditEvent, AuditSettings
from audit_db_core.integrity import generate_key_pair
from audit_db_core.ledger import entries
from audit_platform.assets import audit_log_partition
from audit_platform.checks import CHECKS, integrity_verified
from audit_platform.jobs import integrity_job
from audit_platform.resources import AuditDatabaseResource

UTC = dt.UTC
TODAY = dt.datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
WARN, ERROR = dg.AssetCheckSeverity.WARN, dg.AssetCheckSeverity.ERROR


@pytest.fixture(autouse=True)
def _integrity_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AUDIT_REPLICA_URLS", "AUDIT_REDIS_URL", "AUDIT_ARCHIVE__ROOT_URI", "AUDIT_INTEGRITY__SIGNING_KEY",
                 "AUDIT_INTEGRITY__PUBLIC_KEYS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AUDIT_INTEGRITY__CUTOFF_GRACE_SECONDS", "0.05")
    monkeypatch.setenv("AUDIT_INTEGRITY__SEAL_DELAY_SECONDS", "0")


@pytest.fixture
def signing_key(monkeypatch: pytest.MonkeyPatch) -> str:
    private, _public = generate_key_pair()
    monkeypatch.setenv("AUDIT_INTEGRITY__SIGNING_KEY", private)
    return private


@pytest.fixture
def events(fresh_database: str) -> list[AuditEvent]:
    written = [AuditEvent(action="patient.record.read", status="success", principal_id=f"dr.{i}",
                          event_time=TODAY - dt.timedelta(days=1 + i % 2, hours=-i)) for i in range(4)]
    with AuditDatabase(AuditSettings(database_url=fresh_database)) as db:
        db.insert_many(written)
    time.sleep(0.2)  # past the cutoff's grace margin
    return written


def resources(url: str) -> dict[str, Any]:
    return {"audit_db": AuditDatabaseResource(database_url=url)}


def step_metadata(result: dg.ExecuteInProcessResult, step: str) -> dict[str, Any]:
    (event,) = [e for e in result.all_node_events if e.step_key == step and e.event_type_value == "STEP_OUTPUT"]
    return {k: v.value for k, v in event.step_output_data.metadata.items()}


def run_check(url: str) -> dg.AssetCheckEvaluation:
    result = dg.materialize([audit_log_partition, *CHECKS], selection=dg.AssetSelection.checks(integrity_verified),
                            resources=resources(url), instance=dg.DagsterInstance.ephemeral())
    (evaluation,) = result.get_asset_check_evaluations()
    return evaluation


def delete_row(url: str, event: AuditEvent) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")  # the superuser, triggers off
        conn.execute("DELETE FROM audit_log WHERE event_id = %s", (event.event_id,))


def test_integrity_job_seals_then_verifies_and_ledgers_both(
    fresh_database: str, signing_key: str, events: list[AuditEvent]
) -> None:
    result = integrity_job.execute_in_process(resources=resources(fresh_database),
                                              instance=dg.DagsterInstance.ephemeral())
    assert result.success
    sealed = step_metadata(result, "seal_digests")
    assert sealed["status"] == "sealed" and sealed["digests"] == 2 and sealed["events"] == 4
    assert len(sealed["head_digest_hash"]) == 64
    verified = step_metadata(result, "verify_integrity")
    assert verified["status"] == "verified" and verified["events_checked"] == 4 and verified["problems"] == 0
    assert verified["head_digest_hash"] == sealed["head_digest_hash"]
    assert sealed["duration_ms"] > 0 and verified["duration_ms"] > 0  # plotted run after run
    with psycopg.connect(fresh_database) as conn:
        (seal,) = entries(conn, operation="seal")
        (check,) = entries(conn, operation="integrity_verify")
    assert seal.run_id == check.run_id == result.run_id and check.outcome == "ok"
    # Run again: nothing new to seal, still verified.
    again = integrity_job.execute_in_process(resources=resources(fresh_database),
                                             instance=dg.DagsterInstance.ephemeral())
    assert again.success and step_metadata(again, "seal_digests")["status"] == "nothing_to_seal"


def test_integrity_job_fails_on_a_forged_row_naming_it(
    fresh_database: str, signing_key: str, events: list[AuditEvent]
) -> None:
    assert integrity_job.execute_in_process(resources=resources(fresh_database),
                                            instance=dg.DagsterInstance.ephemeral()).success
    delete_row(fresh_database, events[2])
    result = integrity_job.execute_in_process(resources=resources(fresh_database), raise_on_error=False,
                                              instance=dg.DagsterInstance.ephemeral())
    assert not result.success
    (failure,) = [e for e in result.all_node_events if e.event_type_value == "STEP_FAILURE"]
    assert failure.step_key == "verify_integrity"
    info = failure.step_failure_data.user_failure_data
    assert "integrity verification failed" in info.description
    assert str(events[2].event_id) in info.metadata["problem_list"].value
    assert "deleted_row" in info.metadata["problem_list"].value
    with psycopg.connect(fresh_database) as conn:
        assert entries(conn, operation="integrity_verify")[-1].outcome == "failed"


def test_integrity_job_without_a_signing_key_fails_and_says_which_setting(
    fresh_database: str, events: list[AuditEvent]
) -> None:
    result = integrity_job.execute_in_process(resources=resources(fresh_database), raise_on_error=False,
                                              instance=dg.DagsterInstance.ephemeral())
    assert not result.success
    (failure,) = [e for e in result.all_node_events if e.event_type_value == "STEP_FAILURE"]
    assert failure.step_key == "seal_digests"
    assert "AUDIT_INTEGRITY__SIGNING_KEY" in failure.step_failure_data.user_failure_data.description


def test_integrity_check_passes_then_fails_with_error_on_tampering(
    fresh_database: str, signing_key: str, events: list[AuditEvent]
) -> None:
    with AuditDatabase(AuditSettings(database_url=fresh_database)) as db:
        assert db.integrity.seal().status == "sealed"
    honest = run_check(fresh_database)
    assert honest.passed, honest.description
    assert honest.metadata["status"].value == "verified" and honest.metadata["events_checked"].value == 4
    delete_row(fresh_database, events[0])
    tampered = run_check(fresh_database)
    assert not tampered.passed and tampered.severity == ERROR
    assert "deleted_row" in tampered.metadata["problem_list"].value
    assert str(events[0].event_id) in tampered.metadata["problem_list"].value
    assert signing_key not in str({k: v.value for k, v in tampered.metadata.items()})


def test_integrity_check_warns_when_not_configured_or_nothing_is_sealed(
    fresh_database: str, events: list[AuditEvent], monkeypatch: pytest.MonkeyPatch
) -> None:
    unconfigured = run_check(fresh_database)
    assert not unconfigured.passed and unconfigured.severity == WARN
    assert "AUDIT_INTEGRITY__PUBLIC_KEYS" in (unconfigured.description or "")
    monkeypatch.setenv("AUDIT_INTEGRITY__PUBLIC_KEYS", generate_key_pair()[1])
    unsealed = run_check(fresh_database)
    assert not unsealed.passed and unsealed.severity == WARN
    assert "nothing has been sealed yet" in (unsealed.description or "")
