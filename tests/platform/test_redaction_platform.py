"""A database error inside a Dagster run: the row values in its DETAIL / CONTEXT lines reach neither the run's
events (stored by Dagster) nor the run-failure alert. Real run, real PostgreSQL (``settings`` from conftest)."""

import json
import logging
import uuid

import dagster as dg
import pytest
from psycopg import sql

from audit_db_core import AuditDatabase, AuditEvent, AuditSettings
from audit_platform.alerts import AlertResource
from audit_platform.sensors import build_run_failure_alert, run_failure_alert_sensor


@dg.op(config_schema={"database_url": str, "principal": str})
def write_refused_event(context: dg.OpExecutionContext) -> None:
    settings = AuditSettings(database_url=context.op_config["database_url"])
    with AuditDatabase(settings) as db:
        db.insert(AuditEvent(action="patient.record.read", status="success",
                             principal_id=context.op_config["principal"]))


@dg.job
def refused_write_job() -> None:
    write_refused_event()


def test_a_failed_run_stores_and_alerts_no_row_values(settings: AuditSettings, caplog: pytest.LogCaptureFixture) -> None:
    url = settings.database_url.get_secret_value()
    principal = f"Patient{uuid.uuid4().hex[:10]}"
    with AuditDatabase(settings) as db, db.connections.connection() as conn:
        # DDL takes no parameters: the value goes in as a quoted literal.
        conn.execute(sql.SQL("ALTER TABLE audit_log ADD CONSTRAINT red_no_principal CHECK (principal_id <> {})")
                     .format(sql.Literal(principal)))
    # The op receives the value as config, which Dagster stores: search the events for what the *server* adds.
    marker = principal[len("Patient"):]
    caplog.set_level(logging.DEBUG)
    with dg.DagsterInstance.ephemeral() as instance:
        result = refused_write_job.execute_in_process(
            instance=instance, raise_on_error=False,
            run_config={"ops": {"write_refused_event": {"config": {"database_url": url, "principal": principal}}}},
        )
        assert not result.success
        failures = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
        assert failures and "violates check constraint" in json.dumps(dg.serialize_value(failures[0]))
        stored = [dg.serialize_value(entry) for entry in instance.all_logs(result.run_id)]
        failing_row = [s for s in stored if "Failing row" in s or ("COPY audit_log" in s)]
        assert not failing_row
        step_errors = [s for s in stored if "STEP_FAILURE" in s]
        assert step_errors and not any(marker in s for s in step_errors)

        alerts = AlertResource(webhook_url=None)
        context = dg.build_run_status_sensor_context(
            sensor_name=run_failure_alert_sensor.name, dagster_instance=instance,
            dagster_run=result.dagster_run, dagster_event=result.get_run_failure_event(),
            resources={"alerts": alerts},
        ).for_run_failure()
        alert = build_run_failure_alert(context, alerts)
        payload = json.dumps(alert.payload())
        assert "violates check constraint" in payload and marker not in payload
        run_failure_alert_sensor(context)
    assert marker not in caplog.text
