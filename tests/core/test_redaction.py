"""What is never printed: URL passwords (even in URLs that do not parse) and the row values a database server
quotes in an error's DETAIL / CONTEXT lines.

URL checks run the real ``audit-platform`` command (a subprocess). Server errors are provoked for real on a database
of the test's own — a unique violation, a CHECK violation on ``audit_log`` (through ``insert`` and through COPY in
``insert_many``), a PL/pgSQL trigger raising with DETAIL — and every place the error travels to is searched for the
value: ``str``, ``repr``, ``to_dict()``, the cause chain, log records (pytest's formatter and the JSON one) and an
alert payload. Each secret is made at run time, so no traceback's source line can carry it.
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from audit_db_core import AuditDatabase, AuditEvent, AuditSettings
from audit_db_core.errors import AuditError, ConfigurationError, classify, redact, server_message
from audit_db_core.logs import JsonFormatter, TextFormatter, format_exception
try:
    from audit_platform.alerts import Alert, AlertResource
except ImportError:  # the core alone, without the 'platform' extra (CI's core lane); the full suite checks alerts
    Alert = AlertResource = None  # type: ignore[assignment,misc]

CLI = Path(sys.executable).with_name("audit-platform")


def secret(label: str) -> str:
    return f"{label}{uuid.uuid4().hex[:10]}"


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("AUDIT_")}
    return subprocess.run([str(CLI), *args], env={**base, **env}, capture_output=True, text=True, timeout=120)


# -- URLs that do not parse --------------------------------------------------------------------------------------


def _bad_urls(pw: str) -> list[tuple[str, str, str]]:
    """(variable, value, what is wrong) — each value carries the password ``pw``."""
    ok = "postgresql://app@db.invalid/audit"
    return [
        ("AUDIT_DATABASE_URL", f"postgresql://app:x%zz{pw}@db.invalid/audit", "%25"),
        ("AUDIT_DATABASE_URL", f"postgresql://app:{pw}@[::1/audit", "IPv6"),
        ("AUDIT_DATABASE_URL", f"postgresql://app:{pw}@/audit", "no host"),
        ("AUDIT_DATABASE_URL", f"postgresql://app:pw@{pw}@db.invalid/audit", "'@'"),
        ("AUDIT_DATABASE_URL", f"postgresql://app:{pw}@db.invalid:99999/audit", "port"),
        ("AUDIT_DATABASE_URL", f"postgresql://app:{pw}@db.invalid/audit?nosuchoption={pw}", "query parameter"),
        ("AUDIT_DATABASE_URL", f"postgresql://app:a {pw}@db.invalid/audit", "space"),
        ("AUDIT_REPLICA_URLS", f"{ok},postgresql://ro:{pw}%@[::1/audit", "URL 2 of 2"),
        ("AUDIT_REDIS_URL", f"redis://:{pw}%q@cache.invalid:6379/0", "%25"),
        ("AUDIT_REDIS_URL", f"redis://:{pw}@[::1:6379/0", "does not parse"),
        ("AUDIT_REDIS_URL", f"redis://:{pw}@/0", "no host"),
        ("AUDIT_REDIS_URL", f"redis://:a/{pw}@cache.invalid/0", "does not parse"),
    ]


@pytest.mark.parametrize("index", range(len(_bad_urls("x"))))
def test_a_bad_url_is_refused_by_the_settings_naming_the_variable_never_the_url(index: int) -> None:
    pw = secret("UrlPw")
    variable, value, why = _bad_urls(pw)[index]
    values = {"database_url": "postgresql://app@db.invalid/audit"}
    values[variable.removeprefix("AUDIT_").lower()] = value
    with pytest.raises(ConfigurationError) as info:
        AuditSettings(**values)
    err = info.value
    assert err.fields == [variable]
    assert why in str(err)
    shown = " ".join([str(err), repr(err), json.dumps(err.to_dict()), repr(err.problems)])
    assert pw not in shown and value not in shown
    assert err.__cause__ is None and err.__suppress_context__  # no chained parser message quoting the URL


@pytest.mark.parametrize(
    ("command", "variable", "template"),
    [
        ("migrate", "AUDIT_DATABASE_URL", "postgresql://app:p%zz{pw}@db.invalid/audit"),
        ("health", "AUDIT_DATABASE_URL", "postgresql://app:{pw}@[::1/audit"),
        ("migrate", "AUDIT_DATABASE_URL", "postgresql://app:{pw}@/audit"),
        ("health", "AUDIT_REPLICA_URLS", "postgresql://ro:{pw}%zz@replica.invalid/audit"),
        ("health", "AUDIT_REDIS_URL", "redis://:{pw}@[::1/0"),
    ],
)
def test_the_cli_exits_2_with_one_line_naming_the_setting(command: str, variable: str, template: str) -> None:
    pw = secret("CliPw")
    value = template.format(pw=pw)
    env = {"AUDIT_DATABASE_URL": "postgresql://app@db.invalid/audit", variable: value}
    out = run_cli(command, env=env)
    printed = out.stdout + out.stderr
    assert out.returncode == 2, printed
    lines = [line for line in printed.splitlines() if line.strip()]
    assert len(lines) == 1, printed
    assert variable in lines[0]
    assert pw not in printed and value not in printed


def test_a_url_without_a_host_is_refused_and_a_socket_directory_is_not() -> None:
    with pytest.raises(ConfigurationError) as info:
        AuditSettings(database_url="postgresql://app@/audit")
    assert info.value.fields == ["AUDIT_DATABASE_URL"] and "no host" in str(info.value)
    with pytest.raises(ConfigurationError):
        AuditSettings(database_url="postgresql://app@db.invalid/audit", replica_urls="postgresql:///audit")
    for url in ("postgresql://app@%2Fvar%2Frun%2Fpostgresql/audit", "postgresql:///audit?host=/var/run/postgresql",
                "postgresql://app:pw@h1:5432,h2:5433/audit", "postgresql://app@[::1]:5432/audit"):
        assert AuditSettings(database_url=url).database_url.get_secret_value() == url


def test_an_archive_root_that_does_not_parse_is_refused_without_its_credentials() -> None:
    key = secret("ArchiveKey")
    with pytest.raises(ConfigurationError) as info:
        AuditSettings(database_url="postgresql://app@db.invalid/audit",
                      archive={"root_uri": f"s3://AKIA:{key}/x@[bucket/prefix"})
    assert info.value.fields == ["AUDIT_ARCHIVE__ROOT_URI"] and key not in str(info.value)


def test_redact_masks_the_whole_password_and_credential_pairs() -> None:
    pw = secret("Pw")
    assert redact(f"postgresql://app:a@{pw}@db/audit") == "postgresql://app:***@db/audit"
    assert redact(f"postgresql://app:a/{pw}@db/audit") == "postgresql://app:***@db/audit"
    assert redact(f'invalid percent-encoded token: "x%zz{pw}"') == 'invalid percent-encoded token: "***"'
    assert pw not in redact(f"s3://bucket/p?access_key=AK&secret_key={pw}&region=eu")
    two = "postgresql://a:***@h1/db,postgresql://b:***@h2/db"
    assert redact(two) == two  # hosts of a list of masked URLs stay visible


# -- DETAIL / CONTEXT lines ----------------------------------------------------------------------------------------


@contextmanager
def captured(caplog: pytest.LogCaptureFixture) -> Iterator[list[io.StringIO]]:
    """Everything logged meanwhile, through pytest's handler and the library's JSON and text formatters."""
    streams = [io.StringIO(), io.StringIO()]
    handlers = [logging.StreamHandler(streams[0]), logging.StreamHandler(streams[1])]
    handlers[0].setFormatter(JsonFormatter())
    handlers[1].setFormatter(TextFormatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for h in handlers:
        root.addHandler(h)
    caplog.set_level(logging.DEBUG)
    try:
        yield streams
    finally:
        for h in handlers:
            root.removeHandler(h)


def assert_nowhere(value: str, err: AuditError, caplog: pytest.LogCaptureFixture, streams: list[io.StringIO]) -> None:
    if Alert is not None:
        alert = Alert(title="job failed", severity="error", job_name="j", run_id="r", error=str(err),
                      details={"audit": err.to_dict(), "cause": str(err.__cause__)})
        AlertResource(webhook_url=None).send(alert)  # logs the alert too
    logging.getLogger("audit_db_core.tests").error("operation failed", exc_info=err)
    places = {
        "str": str(err), "repr": repr(err), "to_dict": json.dumps(err.to_dict()), "message": err.message,
        "cause": str(err.__cause__), "cause repr": repr(err.__cause__),
        "alert": json.dumps(alert.payload()) if Alert is not None else "",
        "caplog": caplog.text, "json log": streams[0].getvalue(), "text log": streams[1].getvalue(),
        "record args": repr([(r.msg, r.args, getattr(r, "audit", None)) for r in caplog.records]),
    }
    leaked = [name for name, text in places.items() if value in text]
    assert not leaked, f"{value} leaked into {leaked}"
    assert "Traceback" in caplog.text and "Traceback" in streams[0].getvalue()  # the chain was rendered


def test_unique_violation_detail_is_never_shown(db: AuditDatabase, caplog: pytest.LogCaptureFixture) -> None:
    key = secret("DupKey")
    with db.connections.connection() as conn:
        conn.execute("CREATE TABLE red_kv (k text PRIMARY KEY)")
        conn.execute("INSERT INTO red_kv VALUES (%s)", (key,))
    with captured(caplog) as streams:
        with pytest.raises(AuditError) as info:
            with db.connections.connection(operation="store_key") as conn:
                conn.execute("INSERT INTO red_kv VALUES (%s)", (key,))
        err = info.value
        assert "duplicate key value violates unique constraint" in err.message
        assert err.context["sqlstate"] == "23505"
        assert key in (err.__cause__.diag.message_detail or "")  # code that needs the detail still has it
        assert_nowhere(key, err, caplog, streams)


def test_check_violation_through_insert_and_copy_never_shows_the_row(
    db: AuditDatabase, caplog: pytest.LogCaptureFixture
) -> None:
    principal = secret("Patient")
    with db.connections.connection() as conn:
        # DDL takes no parameters: the value goes in as a quoted literal.
        conn.execute(sql.SQL("ALTER TABLE audit_log ADD CONSTRAINT red_no_principal CHECK (principal_id <> {})")
                     .format(sql.Literal(principal)))
    event = AuditEvent(action="patient.record.read", status="success", principal_id=principal)
    with captured(caplog) as streams:
        with pytest.raises(AuditError) as info:
            db.insert(event)
        assert "violates check constraint" in info.value.message
        assert "Failing row" in (info.value.__cause__.diag.message_detail or "")
        assert_nowhere(principal, info.value, caplog, streams)
        with pytest.raises(AuditError) as info:  # COPY: CONTEXT quotes the COPY line, DETAIL the failing row
            db.insert_many([AuditEvent(action="a", status="success", principal_id=principal)])
        assert "COPY" in (info.value.__cause__.diag.context or "")
        assert_nowhere(principal, info.value, caplog, streams)
    assert any(r.name == "audit_db_core.database" and r.levelno == logging.WARNING for r in caplog.records)


def test_plpgsql_raise_with_detail_inside_a_transaction(db: AuditDatabase, caplog: pytest.LogCaptureFixture) -> None:
    principal = secret("Subject")
    with db.connections.connection() as conn:
        conn.execute(
            "CREATE FUNCTION red_refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
            " RAISE EXCEPTION 'refused by policy' USING DETAIL = 'principal ' || NEW.principal_id,"
            " HINT = 'ask the privacy officer'; END $$"
        )
        conn.execute("CREATE TRIGGER red_refuse BEFORE INSERT ON audit_log FOR EACH ROW EXECUTE FUNCTION red_refuse()")
    with captured(caplog) as streams:
        with pytest.raises(AuditError) as info:
            with db.transaction() as tx:
                tx.insert(AuditEvent(action="a", status="success", principal_id=principal))
        err = info.value
        assert err.message == "refused by policy (hint: ask the privacy officer)"
        assert "PL/pgSQL" in (err.__cause__.diag.context or "")
        assert_nowhere(principal, err, caplog, streams)


def test_data_error_primary_message_hides_the_refused_value(settings: AuditSettings) -> None:
    value = secret("NotAUuid")
    with psycopg.connect(settings.database_url.get_secret_value()) as conn:
        with pytest.raises(psycopg.Error) as info:
            conn.execute("SELECT %s::text::uuid", (value,))
    raw = info.value
    assert value in str(raw)  # the driver's own text quotes it …
    assert value not in server_message(raw)  # … what the library shows does not
    err = classify(raw, operation="lookup")
    assert value not in str(err) and value not in str(raw) and "invalid input syntax for type uuid" in str(err)


def test_json_formatter_scrubs_a_raw_driver_error_nobody_classified(settings: AuditSettings) -> None:
    """A driver error logged as it is (never through ``classify``) still loses its DETAIL in the JSON log."""
    key = secret("RawKey")
    with psycopg.connect(settings.database_url.get_secret_value(), autocommit=True) as conn:
        conn.execute("CREATE TABLE red_raw (k text PRIMARY KEY)")
        conn.execute("INSERT INTO red_raw VALUES (%s)", (key,))
        try:
            try:
                conn.execute("INSERT INTO red_raw VALUES (%s)", (key,))
            except psycopg.Error as exc:
                raise RuntimeError("storing failed") from exc
        except RuntimeError as outer:
            assert key in str(outer.__cause__)  # untouched: nobody classified it
            record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), (RuntimeError, outer, None))
            rendered = JsonFormatter().format(record)
            text = format_exception(outer)
            payload = Alert(title="t", severity="error", job_name=None, run_id=None,
                            error=f"{type(outer.__cause__).__name__}: {outer.__cause__}",
                            details={"e": str(outer.__cause__)}).payload() if Alert is not None else None
    assert key not in rendered and key not in text
    if payload is not None:
        assert key not in json.dumps(payload) and "duplicate key value" in payload["text"]
    exception = json.loads(rendered)["exception"]
    assert "psycopg.errors.UniqueViolation: duplicate key value" in exception
    assert "direct cause" in exception and "RuntimeError: storing failed" in exception
