"""Alerts and sensors against real things: a real failed Dagster run, a real HTTP webhook server started here,
and a real PostgreSQL database (``fresh_database`` from ``tests/conftest.py``). No mocks."""

from __future__ import annotations

import datetime as dt
import http.server
import json
import logging
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
import pytest

from audit_db_core import AuditDatabase, AuditEvent, AuditSettings
from audit_db_core.partitions import bounds_for
from audit_platform.alerts import Alert, AlertResource, mask_url
from audit_platform.sensors import (
    SENSORS,
    DefaultPartitionCheckError,
    default_partition_sensor,
    partition_registry_sensor,
    run_failure_alert_sensor,
)

UTC = dt.UTC
SECRET_PATH = "/T000/B000/SECRETTOKEN"


# -- a real webhook server ------------------------------------------------------------------------------------------


@dataclass
class Webhook:
    """A local HTTP server: answers POSTs with the queued statuses (then 200) and records the bodies."""

    statuses: list[int] = field(default_factory=list)
    bodies: list[dict[str, Any]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    url: str = ""

    @property
    def payloads(self) -> list[dict[str, Any]]:
        return list(self.bodies)


@pytest.fixture(autouse=True)
def _no_proxy_for_localhost(monkeypatch: pytest.MonkeyPatch) -> None:
    """urllib honours *_proxy variables; the webhook servers here are local."""
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def webhook_factory() -> Iterator[Any]:
    servers: list[tuple[http.server.HTTPServer, threading.Thread]] = []

    def start(statuses: list[int] | None = None) -> Webhook:
        hook = Webhook(statuses=list(statuses or []))
        lock = threading.Lock()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                with lock:
                    hook.bodies.append(json.loads(raw.decode("utf-8")))
                    hook.paths.append(self.path)
                    status = hook.statuses.pop(0) if hook.statuses else 200
                self.send_response(status)
                if status == 429:
                    self.send_header("Retry-After", "0")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence stderr
                return None

        server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        servers.append((server, thread))
        hook.url = f"http://127.0.0.1:{server.server_address[1]}{SECRET_PATH}"
        return hook

    try:
        yield start
    finally:
        for server, thread in servers:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
            assert not thread.is_alive()


@pytest.fixture
def webhook(webhook_factory: Any) -> Webhook:
    return webhook_factory()


@pytest.fixture
def dead_url() -> str:
    """A URL on a port nothing listens on (connection refused), with a secret token in its path."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}{SECRET_PATH}"


# -- a real failed run ----------------------------------------------------------------------------------------------


@dg.op
def explode() -> None:
    raise ValueError("disk on fire (dsn postgresql://app:hunter2@db.internal/audit)")


@dg.job
def doomed_job() -> None:
    explode()


@dataclass(frozen=True)
class FailedRun:
    instance: dg.DagsterInstance
    result: dg.ExecuteInProcessResult

    @property
    def run_id(self) -> str:
        return self.result.run_id

    def sensor_context(self, alerts: AlertResource) -> dg.RunStatusSensorContext:
        return dg.build_run_status_sensor_context(
            sensor_name=run_failure_alert_sensor.name,
            dagster_instance=self.instance,
            dagster_run=self.result.dagster_run,
            dagster_event=self.result.get_run_failure_event(),
            resources={"alerts": alerts},
        )


@pytest.fixture(scope="module")
def failed_run() -> Iterator[FailedRun]:
    with dg.DagsterInstance.ephemeral() as instance:
        result = doomed_job.execute_in_process(instance=instance, raise_on_error=False)
        assert not result.success
        yield FailedRun(instance, result)


def test_failure_sensor_posts_one_alert_for_a_real_failed_run(failed_run: FailedRun, webhook: Webhook) -> None:
    alerts = AlertResource(webhook_url=webhook.url, ui_base_url="http://ui.example/")
    assert run_failure_alert_sensor(failed_run.sensor_context(alerts)) is None

    assert len(webhook.bodies) == 1
    assert webhook.paths == [SECRET_PATH]
    body = webhook.bodies[0]
    assert body["severity"] == "error"
    assert body["job_name"] == "doomed_job"
    assert body["run_id"] == failed_run.run_id
    assert body["step"] == "explode"
    assert "disk on fire" in body["error"]
    assert body["error"].startswith("ValueError: disk on fire")  # the user's error, not Dagster's wrapper
    assert body["run_url"] == f"http://ui.example/runs/{failed_run.run_id}"
    assert body["text"].startswith("❌ job doomed_job failed in step explode: ValueError: disk on fire")
    assert body["text"].endswith(f" — http://ui.example/runs/{failed_run.run_id}")
    assert "\n" not in body["text"]
    assert body["details"]["failed_steps"] == ["explode"]
    assert body["details"]["failure_reason"] == "STEP_FAILURE"
    assert "hunter2" not in json.dumps(body)  # DSN password redacted
    assert "postgresql://app:***@db.internal/audit" in body["error"]


def test_failure_sensor_without_webhook_or_ui_still_logs(failed_run: FailedRun, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="audit_platform")
    alerts = AlertResource(webhook_url="")  # what an empty AUDIT_ALERT_WEBHOOK_URL gives: unset
    assert run_failure_alert_sensor(failed_run.sensor_context(alerts)) is None
    records = [r for r in caplog.records if r.name == "audit_platform.alerts" and r.levelno == logging.ERROR]
    assert len(records) == 1
    logged = records[0].audit["alert"]  # type: ignore[attr-defined]
    assert logged["run_id"] == failed_run.run_id and logged["step"] == "explode" and logged["run_url"] is None
    assert "hunter2" not in records[0].getMessage()


def test_failure_sensor_with_a_dead_webhook_does_not_raise_nor_leak_the_url(
    failed_run: FailedRun, dead_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    alerts = AlertResource(webhook_url=dead_url, max_attempts=2, backoff_seconds=0.01, timeout_seconds=2)
    assert run_failure_alert_sensor(failed_run.sensor_context(alerts)) is None

    report = alerts.send(Alert(title="t", severity="warning", job_name=None, run_id=None, error="boom"))
    assert report.delivered is False
    assert report.attempts == 2
    assert report.webhook_configured is True
    assert report.target == mask_url(dead_url) == f"http://127.0.0.1:{dead_url.split(':')[2].split('/')[0]}/…"
    assert report.error and "connection failed" in report.error
    assert "SECRETTOKEN" not in repr(report) and "SECRETTOKEN" not in json.dumps(report.to_dict())
    assert caplog.records, "the failure was logged"
    for record in caplog.records:
        assert "SECRETTOKEN" not in record.getMessage()
        assert "SECRETTOKEN" not in repr(vars(record))
    assert "SECRETTOKEN" not in caplog.text
    assert any("NOT delivered" in r.getMessage() for r in caplog.records)


# -- delivery: retries ------------------------------------------------------------------------------------------------


def _alert() -> Alert:
    return Alert(title="job j failed", severity="error", job_name="j", run_id="r1", step="s", error="x\ny")


def test_send_retries_5xx_then_delivers(webhook_factory: Any) -> None:
    hook = webhook_factory([500, 500, 200])
    report = AlertResource(webhook_url=hook.url, backoff_seconds=0.01).send(_alert())
    assert report.delivered is True
    assert report.attempts == 3
    assert report.status == 200 and report.error is None
    assert len(hook.bodies) == 3 and hook.bodies[0] == hook.bodies[2]
    assert hook.bodies[0]["text"] == "❌ job j failed: x"  # one line: the error's headline


def test_send_retries_429_but_not_4xx(webhook_factory: Any) -> None:
    hook = webhook_factory([429, 200])
    report = AlertResource(webhook_url=hook.url, backoff_seconds=0.01).send(_alert())
    assert (report.delivered, report.attempts) == (True, 2)

    hook = webhook_factory([400, 200])
    report = AlertResource(webhook_url=hook.url, backoff_seconds=0.01).send(_alert())
    assert (report.delivered, report.attempts, report.status) == (False, 1, 400)
    assert len(hook.bodies) == 1


def test_send_gives_up_after_max_attempts(webhook_factory: Any) -> None:
    hook = webhook_factory([503, 503, 503, 503])
    report = AlertResource(webhook_url=hook.url, max_attempts=3, backoff_seconds=0.01).send(_alert())
    assert (report.delivered, report.attempts, report.status) == (False, 3, 503)
    assert report.error is not None and "503" in report.error and "SECRETTOKEN" not in report.error
    assert len(hook.bodies) == 3


def test_send_refuses_a_non_http_url_without_echoing_it() -> None:
    report = AlertResource(webhook_url="ftp://hooks.example.com/SECRETTOKEN").send(_alert())
    assert (report.delivered, report.attempts) == (False, 0)
    assert "SECRETTOKEN" not in repr(report)


def test_alert_truncates_and_redacts_errors() -> None:
    alert = Alert(title="t", severity="error", job_name="j", run_id="r", error="password=hunter2 " + "x" * 5000,
                  details={"dsn": "postgresql://u:hunter2@h/d"})
    assert len(alert.error) <= 2000
    assert "hunter2" not in json.dumps(alert.payload())
    with pytest.raises(ValueError):
        Alert(title="t", severity="fatal", job_name=None, run_id=None)  # type: ignore[arg-type]


# -- the DEFAULT partition sensor, against a real database ---------------------------------------------------------


class _LocalAuditDatabase:
    """Stand-in for ``audit_platform.resources.AuditDatabaseResource`` while it does not exist: the same
    ``open()`` contract, opening a real :class:`AuditDatabase`."""

    def __init__(self, database_url: str, **pool: Any) -> None:
        self.settings = AuditSettings(database_url=database_url, **({"pool": pool} if pool else {}))

    @contextmanager
    def open(self) -> Iterator[AuditDatabase]:
        with AuditDatabase(self.settings) as db:
            yield db


def _audit_db_resource(database_url: str) -> Any:
    try:
        from audit_platform.resources import AuditDatabaseResource  # the code location's own, when present
    except ImportError:
        return _LocalAuditDatabase(database_url)
    return AuditDatabaseResource(database_url=database_url)


def _evaluate(sensor: dg.SensorDefinition, cursor: str | None, resources: dict[str, Any]) -> dg.SensorResult:
    with dg.build_sensor_context(cursor=cursor, resources=resources) as context:
        result = sensor(context)
    assert isinstance(result, dg.SensorResult)
    assert not result.run_requests
    return result


def _event(ts: dt.datetime, who: str = "archivist") -> AuditEvent:
    return AuditEvent(action="patient.record.read", status="success", principal_id=who, event_time=ts)


def test_default_partition_sensor_alerts_once_per_change(fresh_database: str, webhook: Webhook) -> None:
    resources = {"audit_db": _audit_db_resource(fresh_database), "alerts": AlertResource(webhook_url=webhook.url)}
    old = [dt.datetime(2001, 9, 9, 1, 46, 40, tzinfo=UTC), dt.datetime(2001, 9, 20, tzinfo=UTC),
           dt.datetime(1999, 1, 2, tzinfo=UTC)]

    # Empty DEFAULT: nothing to say.
    result = _evaluate(default_partition_sensor, None, resources)
    assert webhook.bodies == []
    assert json.loads(result.cursor or "") == {"default_rows": 0}

    with AuditDatabase(AuditSettings(database_url=fresh_database)) as db:
        assert db.insert_many([_event(t) for t in old]) == 3
        interval = db.partitions.interval
    expected = sorted({bounds_for(t, interval).name for t in old})

    result = _evaluate(default_partition_sensor, result.cursor, resources)
    assert len(webhook.bodies) == 1
    body = webhook.bodies[0]
    assert body["severity"] == "warning"
    assert body["job_name"] is None and body["run_id"] is None and body["run_url"] is None
    assert body["details"]["default_rows"] == 3
    assert sorted(p["partition"] for p in body["details"]["periods"]) == expected
    assert {p["partition"]: p["rows"] for p in body["details"]["periods"]} == {
        bounds_for(old[0], interval).name: 2, bounds_for(old[2], interval).name: 1}
    assert body["text"].startswith("⚠️ 3 rows in the DEFAULT partition")
    for name in expected:
        assert name in body["text"]
    assert json.loads(result.cursor or "") == {"default_rows": 3}

    # Same count, cursor carried over: silent.
    again = _evaluate(default_partition_sensor, result.cursor, resources)
    assert len(webhook.bodies) == 1
    assert again.cursor == result.cursor
    assert again.skip_reason is not None and "already alerted" in again.skip_reason.skip_message

    # The count changes: one more alert.
    with AuditDatabase(AuditSettings(database_url=fresh_database)) as db:
        db.insert(_event(dt.datetime(2001, 9, 21, tzinfo=UTC)))
    changed = _evaluate(default_partition_sensor, again.cursor, resources)
    assert len(webhook.bodies) == 2 and webhook.bodies[1]["details"]["default_rows"] == 4
    assert json.loads(changed.cursor or "") == {"default_rows": 4}

    # Rescued: DEFAULT empty, nothing sent, cursor reset.
    with AuditDatabase(AuditSettings(database_url=fresh_database)) as db:
        rescued = db.partitions.rescue_default()
        assert sum(r.rescued_rows for r in rescued) == 4
    reset = _evaluate(default_partition_sensor, changed.cursor, resources)
    assert len(webhook.bodies) == 2
    assert json.loads(reset.cursor or "") == {"default_rows": 0}


def test_default_partition_sensor_retries_an_undelivered_alert(fresh_database: str, dead_url: str) -> None:
    with AuditDatabase(AuditSettings(database_url=fresh_database)) as db:
        db.insert(_event(dt.datetime(2001, 9, 9, tzinfo=UTC)))
    alerts = AlertResource(webhook_url=dead_url, max_attempts=1)
    result = _evaluate(default_partition_sensor, None, {"audit_db": _audit_db_resource(fresh_database),
                                                        "alerts": alerts})
    assert result.cursor is None  # not advanced: the next tick tries again
    assert result.skip_reason is not None and "SECRETTOKEN" not in result.skip_reason.skip_message


def test_default_partition_sensor_fails_the_tick_redacted_when_the_database_is_down(dead_url: str) -> None:
    port = dead_url.split(":")[2].split("/")[0]
    audit_db = _LocalAuditDatabase(f"postgresql://app:hunter2@127.0.0.1:{port}/audit", timeout_seconds=1)
    with pytest.raises(DefaultPartitionCheckError) as info:
        _evaluate(default_partition_sensor, None, {"audit_db": audit_db, "alerts": AlertResource()})
    assert "hunter2" not in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


# -- wiring ---------------------------------------------------------------------------------------------------------


def test_sensors_declare_their_resources_and_load_in_definitions() -> None:
    assert [s.name for s in SENSORS] == ["run_failure_alert_sensor", "default_partition_sensor",
                                         "partition_registry_sensor"]
    assert run_failure_alert_sensor.required_resource_keys == {"alerts"}
    assert default_partition_sensor.required_resource_keys == {"alerts", "audit_db"}
    assert partition_registry_sensor.required_resource_keys == {"audit_db"}
    assert all(s.default_status == dg.DefaultSensorStatus.RUNNING for s in SENSORS)
    assert default_partition_sensor.minimum_interval_seconds == 300
    assert partition_registry_sensor.minimum_interval_seconds == 30  # evaluated within a minute of loading
    defs = dg.Definitions(
        jobs=[doomed_job],
        sensors=SENSORS,
        resources={"alerts": AlertResource(ui_base_url="http://127.0.0.1:3000"),
                   "audit_db": _LocalAuditDatabase("postgresql://app@127.0.0.1:1/audit")},
    )
    defs.get_repository_def()
