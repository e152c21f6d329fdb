"""``audit-platform dev`` end to end, the way the README starts it: a subprocess in a session of its own.

It must start its own local servers, Dagster's storage and ``dagster dev``; the UI's GraphQL API shows the code
location's jobs, assets, schedules and sensors, and every partition of the registry as materialized with no run
(``partition_registry_sensor``); a job run and a three-month backfill launched through that API
succeed and create the partitions in PostgreSQL; SIGTERM stops every process the command started.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest

from audit_local.servers import LocalServers

pytestmark = [pytest.mark.slow, pytest.mark.local_servers]

REPO = Path(__file__).resolve().parents[2]

JOBS = {"partition_maintenance_job", "archive_job", "retention_purge_job", "index_maintenance_job", "health_check_job"}
ASSETS = {"audit_log_partition", "audit_log_archive"}
SCHEDULES = {
    "partition_maintenance_schedule",
    "archive_schedule",
    "retention_purge_schedule",
    "index_maintenance_schedule",
    "health_check_schedule",
}
SENSORS = {"run_failure_alert_sensor", "default_partition_sensor", "partition_registry_sensor"}
BACKFILL_MONTHS = ["2024-01-01", "2024-02-01", "2024-03-01"]

REPOSITORIES = """
query Repositories {
  repositoriesOrError {
    __typename
    ... on RepositoryConnection {
      nodes {
        name
        location { name }
        jobs { name }
        assetNodes { assetKey { path } partitionKeys }
        schedules { name cronSchedule }
        sensors { name }
      }
    }
    ... on PythonError { message stack }
  }
}
"""

LOCATIONS = """
query Locations {
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries {
        name
        loadStatus
        locationOrLoadError { __typename ... on PythonError { message stack } }
      }
    }
    ... on PythonError { message }
  }
}
"""

LAUNCH_RUN = """
mutation LaunchRun($executionParams: ExecutionParams!) {
  launchRun(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId status } }
    ... on PythonError { message stack }
    ... on Error { message }
  }
}
"""

RUN = """
query Run($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run { runId status }
    ... on PythonError { message }
  }
}
"""

LAUNCH_BACKFILL = """
mutation LaunchBackfill($backfillParams: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $backfillParams) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message stack }
    ... on Error { message }
  }
}
"""

BACKFILL = """
query Backfill($backfillId: String!) {
  partitionBackfillOrError(backfillId: $backfillId) {
    __typename
    ... on PartitionBackfill { id status numPartitions runs(limit: 20) { runId status } }
    ... on PythonError { message }
  }
}
"""

MATERIALIZATIONS = """
query Materializations($assetKey: AssetKeyInput!) {
  assetOrError(assetKey: $assetKey) {
    __typename
    ... on Asset { assetMaterializations(limit: 500) { partition runId } }
  }
}
"""

RUN_DONE = {"SUCCESS", "FAILURE", "CANCELED"}
BACKFILL_DONE = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def graphql(port: int, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql", data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        payload: dict[str, Any] = json.loads(response.read())
    assert not payload.get("errors"), payload["errors"]
    return payload["data"]


@dataclass
class DevProcess:
    process: subprocess.Popen[bytes]
    log: Path
    data_dir: Path
    port: int
    metrics_port: int = 0  # --metrics-port: the library's /metrics beside the UI

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def dagster_pgid(self) -> int | None:
        match = re.search(r"process group (\d+)", self.output())
        return int(match.group(1)) if match else None


def ours(proc: psutil.Process, markers: list[str]) -> bool:
    """True if a process belongs to this test's dev command: its command line or environment names our dir/port."""
    try:
        text = " ".join(proc.cmdline())
        if any(m in text for m in markers):
            return True
        return any(m in value for value in proc.environ().values() for m in markers)
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.AccessDenied:
        return False


def leftovers(dev: DevProcess) -> list[str]:
    markers = [str(dev.data_dir), f"-p {dev.port}", f"--port {dev.port}"]
    found = []
    for proc in psutil.process_iter():
        if proc.pid == os.getpid():
            continue
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
        except psutil.Error:
            continue
        if ours(proc, markers):
            with contextlib.suppress(psutil.Error):
                found.append(f"{proc.pid} {' '.join(proc.cmdline())[:160]}")
    # dagster dev's own process group, and the dev command's (the servers it starts leave it: they call setsid).
    groups = {g for g in (dev.dagster_pgid(), dev.process.pid) if g is not None}
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            pgid = os.getpgid(proc.pid)
            if pgid in groups and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(f"{proc.pid} (process group {pgid}) {' '.join(proc.cmdline())[:160]}")
    return found


def wait_for(what: str, check: Any, timeout: float, dev: DevProcess, interval: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        if dev.process.poll() is not None:
            pytest.fail(f"audit-platform dev exited ({dev.process.returncode}) while waiting for {what}:\n"
                        + dev.output()[-6000:])
        last = check()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})\n" + dev.output()[-6000:])


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[DevProcess]:
    data_dir = tmp_path / "dev"
    port = free_port()
    log = tmp_path / "dev.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AUDIT_", "DAGSTER_"))}
    metrics_port = free_port()
    command = [sys.executable, "-m", "audit_db_core.cli", "dev", "--port", str(port), "--dir", str(data_dir),
               "--demo-events", "50", "--metrics-port", str(metrics_port)]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    handle = DevProcess(process, log, data_dir, port, metrics_port)
    try:
        yield handle
    finally:
        if process.poll() is None:  # the test failed before its own SIGTERM: stop it the same way
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        pgid = handle.dagster_pgid()
        if pgid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        LocalServers(data_dir).down()


@pytest.mark.timeout(600)  # the waits below add up to more than the suite's default 300 s in the worst case
def test_dev_serves_the_code_location_runs_jobs_and_backfills_and_stops_cleanly(dev: DevProcess) -> None:
    timings: dict[str, float] = {}
    t0 = time.monotonic()

    def server_info() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{dev.port}/server_info", timeout=5) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    wait_for("/server_info", server_info, 90, dev)
    timings["ui up"] = time.monotonic() - t0
    out = dev.output()
    assert "50 demo events written" in out
    assert f"http://127.0.0.1:{dev.port}" in out
    assert "AUDIT_INTEGRITY__SIGNING_KEY=(a development key" in out  # made for the run, and its value not shown
    # --metrics-port: the library's figures for Prometheus, health and the local replica's lag included
    assert f"metrics: http://127.0.0.1:{dev.metrics_port}/metrics" in out
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{dev.metrics_port}/metrics", timeout=10).read().decode()
    assert "audit_health_status{" in metrics and 'audit_replica_lag_wal_bytes{' in metrics

    # -- what the UI shows ------------------------------------------------------------------------------------
    def repository() -> dict[str, Any] | None:
        workspace = graphql(dev.port, LOCATIONS)["workspaceOrError"]
        assert workspace["__typename"] == "Workspace", workspace
        for entry in workspace["locationEntries"]:
            error = entry["locationOrLoadError"] or {}
            if error.get("__typename") == "PythonError":  # fail now, with the reason, instead of timing out
                pytest.fail(f"code location {entry['name']} does not load:\n{error['message']}"
                            + "".join(error.get("stack") or [])[-4000:])
        result = graphql(dev.port, REPOSITORIES)["repositoriesOrError"]
        assert result["__typename"] == "RepositoryConnection", result
        return result["nodes"][0] if result["nodes"] else None

    repo = wait_for("the code location to load", repository, 60, dev)
    assert JOBS <= {j["name"] for j in repo["jobs"]}
    assets = {"/".join(a["assetKey"]["path"]): a for a in repo["assetNodes"]}
    assert ASSETS <= set(assets)
    assert set(BACKFILL_MONTHS) <= set(assets["audit_log_partition"]["partitionKeys"])
    assert SCHEDULES <= {s["name"] for s in repo["schedules"]}
    assert SENSORS <= {s["name"] for s in repo["sensors"]}
    location, repo_name = repo["location"]["name"], repo["name"]

    # -- the database as it is: every registered partition shows materialized, before any run ------------------
    database_url = LocalServers(dev.data_dir).endpoints().database_url
    with psycopg.connect(database_url, connect_timeout=10) as conn:
        registered = {f"{start:%Y-%m-%d}" for (start,) in conn.execute(
            "SELECT range_start AT TIME ZONE 'UTC' FROM audit_partitions")}
    registered &= set(assets["audit_log_partition"]["partitionKeys"])
    assert len(registered) >= 4  # the current period and the premade ones, at least

    def registry_reported() -> set[str] | None:
        asset = graphql(dev.port, MATERIALIZATIONS, {"assetKey": {"path": ["audit_log_partition"]}})["assetOrError"]
        assert asset["__typename"] == "Asset", asset
        runless = {m["partition"] for m in asset["assetMaterializations"] if not m["runId"]}
        return runless if registered <= runless else None

    # partition_registry_sensor ticks every 30 s, the first time right after the code location loads.
    wait_for("the registered partitions to show materialized without a run", registry_reported, 75, dev,
             interval=3.0)
    timings["registry reported"] = time.monotonic() - t0

    # -- a job run through the queue (the daemon dequeues it) ------------------------------------------------------
    launched = graphql(dev.port, LAUNCH_RUN, {"executionParams": {
        "selector": {"repositoryLocationName": location, "repositoryName": repo_name,
                     "jobName": "partition_maintenance_job"},
        "runConfigData": {},
    }})["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]

    def run_finished() -> str | None:
        run = graphql(dev.port, RUN, {"runId": run_id})["runOrError"]
        return run["status"] if run.get("status") in RUN_DONE else None

    assert wait_for(f"run {run_id}", run_finished, 120, dev) == "SUCCESS", dev.output()[-6000:]
    timings["job run"] = time.monotonic() - t0

    # -- a three-month backfill of the partition asset ---------------------------------------------------------
    backfill = graphql(dev.port, LAUNCH_BACKFILL, {"backfillParams": {
        "assetSelection": [{"path": ["audit_log_partition"]}],
        "partitionNames": BACKFILL_MONTHS,
        "fromFailure": False,
        "title": "e2e: three old months",
    }})["launchPartitionBackfill"]
    assert backfill["__typename"] == "LaunchBackfillSuccess", backfill
    backfill_id = backfill["backfillId"]

    def backfill_finished() -> dict[str, Any] | None:
        state = graphql(dev.port, BACKFILL, {"backfillId": backfill_id})["partitionBackfillOrError"]
        return state if state.get("status") in BACKFILL_DONE else None

    # The backfill daemon wakes every 30 s: one pass requests the runs, a later one sees them finished.
    state = wait_for(f"backfill {backfill_id}", backfill_finished, 180, dev, interval=2.0)
    assert state["status"] in {"COMPLETED", "COMPLETED_SUCCESS"}, json.dumps(state)

    # The backfill counts as done once every partition is materialized, which can be a moment before its run
    # finishes reporting: wait for the runs to end, then every one must have succeeded.
    def backfill_runs_finished() -> list[dict[str, Any]] | None:
        runs = graphql(dev.port, BACKFILL, {"backfillId": backfill_id})["partitionBackfillOrError"]["runs"]
        return runs if runs and all(r["status"] in RUN_DONE for r in runs) else None

    runs = wait_for(f"the runs of backfill {backfill_id}", backfill_runs_finished, 60, dev)
    assert all(r["status"] == "SUCCESS" for r in runs), json.dumps(runs)
    timings["backfill"] = time.monotonic() - t0

    # -- the partitions are in PostgreSQL ------------------------------------------------------------------------
    database_url = LocalServers(dev.data_dir).endpoints().database_url
    with psycopg.connect(database_url, connect_timeout=10) as conn:
        tables = {row[0] for row in conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'audit_log'::regclass"
        )}
        dagster_db = conn.execute("SELECT 1 FROM pg_database WHERE datname = 'dagster'").fetchone()
        default_rows = conn.execute("SELECT count(*) FROM audit_log_default").fetchone()
        sealed = conn.execute("SELECT count(*), coalesce(sum(event_count), 0) FROM audit_digests").fetchone()
    assert {"audit_log_p2024_01", "audit_log_p2024_02", "audit_log_p2024_03"} <= tables, sorted(tables)
    assert dagster_db is not None  # Dagster's storage lives on the primary, not in files
    assert default_rows == (0,)  # the demo's earlier days got their partitions
    assert sealed is not None and sealed[0] > 0 and sealed[1] > 0  # and their signed digests

    # -- SIGTERM stops everything the command started ---------------------------------------------------------
    pgid = dev.dagster_pgid()
    assert pgid is not None, dev.output()
    t_stop = time.monotonic()
    os.killpg(dev.process.pid, signal.SIGTERM)
    try:
        dev.process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("audit-platform dev did not exit within 60 s of SIGTERM:\n" + dev.output()[-6000:])
    timings["stop"] = time.monotonic() - t_stop
    assert dev.process.returncode == 0, dev.output()[-6000:]
    assert not any(c["running"] for c in LocalServers(dev.data_dir).status().values())
    assert leftovers(dev) == []
    assert "local servers stopped" in dev.output()
    # A healthy start and healthy runs keep the console quiet: no warning, no step events at DEBUG, no beta or
    # supersession notices of Dagster's (`--verbose` shows those).
    noisy = [line for line in dev.output().splitlines()
             if "WARNING" in line or "Warning" in line or " - DEBUG - " in line]
    assert noisy == [], "\n".join(noisy[:20])
    print("timings (s since start): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
