"""A quiet, honest console: a healthy start prints no WARNING; a replica that joins the rotation is routine (INFO),
one that is out of it is a warning; `audit-platform dev` keeps Dagster's step events and known notices off the
console unless asked, and binds the UI to loopback.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from audit_db_core import AuditDatabase, AuditSettings
from tests.conftest import TEST_CACHE_KEY
from tests.conftest import TestServers as Servers
from tests.conftest import with_dbname
from tests.core.test_platform_support import replica_urls_for

CLI = [sys.executable, "-m", "audit_db_core.cli"]


def run(*args: str, env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AUDIT_", "DAGSTER_"))}
    return subprocess.run([*CLI, *args], env={**base, **env}, capture_output=True, text=True, timeout=timeout)


def healthy_env(servers: Servers, database_url: str) -> dict[str, str]:
    # once the replica has replayed the database's creation: a replica without it is rightly out of rotation
    replicas = replica_urls_for(database_url, servers.replica_urls)
    env = {"AUDIT_DATABASE_URL": database_url, "AUDIT_REPLICA_URLS": ",".join(replicas)}
    if servers.redis_url:  # a healthy deployment with Redis has a cache key (without one L2 is off, and says so)
        env.update(AUDIT_REDIS_URL=servers.redis_url, AUDIT_CACHE__KEY=TEST_CACHE_KEY)
    return env


def assert_no_warning(out: subprocess.CompletedProcess[str]) -> None:
    assert out.returncode == 0, out.stdout + out.stderr
    noisy = [line for line in (out.stdout + out.stderr).splitlines() if "WARNING" in line or "Warning" in line]
    assert noisy == [], "\n".join(noisy)


def test_healthy_migrate_and_health_print_no_warning(servers: Servers, empty_database: str) -> None:
    env = healthy_env(servers, empty_database)
    for command in (["migrate"], ["migrate"], ["health"], ["health", "--json"]):
        out = run(*command, env=env)
        assert_no_warning(out)
    assert '"status": "healthy"' in out.stdout, out.stdout


def test_dev_exit_after_setup_prints_no_warning(servers: Servers, fresh_database: str, tmp_path: Path) -> None:
    pytest.importorskip("dagster", reason="dev needs the 'platform' extra")
    env = healthy_env(servers, fresh_database)
    # Dagster's storage is only named (dev with --exit-after-setup never starts Dagster): nothing made on the server.
    env["DAGSTER_PG_URL"] = "postgresql+psycopg2://unused@127.0.0.1:1/dagster"
    out = run("dev", "--dir", str(tmp_path / "dev"), "--demo-events", "50", "--exit-after-setup", env=env)
    assert_no_warning(out)
    assert "50 demo events written" in out.stdout
    # Runs print step events (DEBUG) only with --verbose; the UI keeps every event either way.
    assert "python_log_level: INFO" in (tmp_path / "dev" / "dagster_home" / "dagster.yaml").read_text()
    verbose = run("dev", "--dir", str(tmp_path / "dev"), "--demo-events", "0", "--exit-after-setup", "--verbose",
                  env=env)
    assert verbose.returncode == 0, verbose.stderr
    assert "python_log_level: DEBUG" in (tmp_path / "dev" / "dagster_home" / "dagster.yaml").read_text()


def test_dev_binds_the_ui_to_loopback_unless_told() -> None:
    pytest.importorskip("dagster", reason="dev needs the 'platform' extra")
    from audit_db_core.cli import build_parser

    assert build_parser().parse_args(["dev"]).host == "127.0.0.1"
    assert build_parser().parse_args(["dev", "--host", "0.0.0.0"]).host == "0.0.0.0"
    # -v before the sub-command and --verbose after it both turn debug output on; neither: off
    assert build_parser().parse_args(["-v", "dev"]).verbose is True
    assert build_parser().parse_args(["dev", "--verbose"]).verbose is True
    assert build_parser().parse_args(["dev"]).verbose is False


def test_the_code_location_loads_without_dagsters_beta_notice() -> None:
    pytest.importorskip("dagster", reason="the code location needs the 'platform' extra")
    # -W default shows every warning once: only the one notice the definitions module filters is silent, and
    # another beta warning still shows.
    script = ("import warnings, dagster as dg\n"
              "import audit_platform.definitions\n"
              "warnings.warn('Parameter `other` of function `x` is currently in beta', dg.BetaWarning)\n")
    out = subprocess.run([sys.executable, "-W", "default", "-c", script], capture_output=True, text=True,
                         timeout=120, env={k: v for k, v in os.environ.items() if not k.startswith("AUDIT_")})
    assert out.returncode == 0, out.stderr
    assert "backfill_policy" not in out.stderr, out.stderr
    assert [line for line in out.stderr.splitlines() if "Warning" in line] == [
        line for line in out.stderr.splitlines() if "BetaWarning: Parameter `other` of function `x`" in line], out.stderr
    assert "Parameter `other`" in out.stderr


def test_a_replica_joining_is_info_and_one_out_of_rotation_a_warning(
        servers: Servers, caplog: pytest.LogCaptureFixture) -> None:
    if not servers.replica_urls:
        pytest.skip("no replica in this suite's servers")
    caplog.set_level(logging.DEBUG, logger="audit_db_core.routing")
    db = AuditDatabase(AuditSettings(database_url=servers.database_url, replica_urls=servers.replica_urls[:1]))
    db.router.measure()
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [("INFO", "replica-0 in rotation")]

    caplog.clear()
    db.router.mark_failed(0, psycopg.OperationalError("server closed the connection unexpectedly"))
    db.router.measure()  # measured healthy after the failure: back
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "replica-0 out of rotation after a failed read: server closed the connection unexpectedly"),
        ("INFO", "replica-0 back in rotation"),
    ]

    caplog.clear()
    db.router.measure()  # nothing changed: nothing said
    assert caplog.records == []

    caplog.clear()
    dead = with_dbname(servers.replica_urls[0], "no_such_database_here")
    AuditDatabase(AuditSettings(database_url=servers.database_url, replica_urls=[dead])).router.measure()
    [record] = caplog.records
    assert record.levelname == "WARNING"
    assert record.getMessage().startswith("replica-0 not in rotation: unreachable: ")
    assert 'database "no_such_database_here" does not exist' in record.getMessage()
