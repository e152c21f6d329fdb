"""Dagster for ``audit-platform dev``: its home directory, its storage database and the ``dagster dev`` process.

This module writes files and starts processes; it never imports Dagster itself (``dagster dev`` runs in a process
of its own). What ``audit-platform dev`` lays out::

    <dir>/dagster_home/dagster.yaml   Postgres storage (URL from $DAGSTER_PG_URL, never written to the file),
                                      QueuedRunCoordinator, telemetry off; rewritten on every start
    <dir>/dagster_home/storage/       compute logs and local artifacts (Dagster's defaults under DAGSTER_HOME)
    <dir>/archive/                    default AUDIT_ARCHIVE__ROOT_URI (file://<dir>/archive)
    database "dagster" on the primary runs, event logs, schedules and sensor state (created if missing)

``dagster dev`` runs in a session (and so a process group) of its own, with the default dispositions of SIGINT and
SIGTERM: it and everything it spawns (webserver, daemon, code server, run workers) are stopped together by
signalling the group.

Example::

    home = write_dagster_home(Path(".audit-platform/dagster_home"))
    env = {**os.environ, "DAGSTER_HOME": str(home), STORAGE_URL_ENV: storage_url(database_url)}
    dev = DagsterDev.start(workspace_file(), host="127.0.0.1", port=3000, env=env)
    try:
        dev.process.wait()
    finally:
        dev.stop()
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit, urlunsplit

import psutil
from audit_db_core.errors import AuditError, ErrorCategory, Severity

logger = logging.getLogger("audit_platform.dagster_home")

#: Database on the primary that holds Dagster's own storage (runs, event logs, schedules).
DAGSTER_DATABASE: Final = "dagster"
#: Environment variable the generated dagster.yaml reads the storage URL from (the file never holds a password).
STORAGE_URL_ENV: Final = "DAGSTER_PG_URL"
#: SQLAlchemy 2.1 maps ``postgresql://`` to psycopg 3, which breaks dagster-postgres; name psycopg2 explicitly.
STORAGE_SCHEME: Final = "postgresql+psycopg2"
#: Runs the dev instance executes at once (each run worker is a Python process of ~200 MB).
DEV_MAX_CONCURRENT_RUNS: Final = 4
#: The code location ``workspace.yaml`` at the repository root loads.
CODE_LOCATION_MODULE: Final = "audit_platform.definitions"


class DagsterDevError(AuditError, RuntimeError):
    """``dagster dev`` could not be prepared, started or stopped."""

    category = ErrorCategory.LOCAL_SERVER
    severity = Severity.HIGH


def storage_url(database_url: str, dbname: str = DAGSTER_DATABASE) -> str:
    """The URL of Dagster's storage: same server and credentials as ``database_url``, database ``dbname``.

    Example::

        >>> storage_url("postgresql://postgres@127.0.0.1:5433/postgres")
        'postgresql+psycopg2://postgres@127.0.0.1:5433/dagster'
    """
    parts = urlsplit(database_url)
    return urlunsplit(parts._replace(scheme=STORAGE_SCHEME, path="/" + dbname))


def ensure_database(database_url: str, dbname: str = DAGSTER_DATABASE) -> bool:
    """Create database ``dbname`` on the server of ``database_url`` unless it exists; True if it was created.

    Example::

        ensure_database("postgresql://postgres@127.0.0.1:5433/postgres")   # the "dagster" database
    """
    from audit_db_core.migrate import create_database

    libpq_url = urlunsplit(urlsplit(database_url)._replace(scheme="postgresql"))  # psycopg wants postgresql://
    try:
        return create_database(libpq_url, dbname)
    except AuditError as exc:
        raise DagsterDevError(f"could not create the {dbname!r} database for Dagster's storage: {exc.message}") from None


def dagster_yaml(
    *, url_env: str = STORAGE_URL_ENV, max_concurrent_runs: int = DEV_MAX_CONCURRENT_RUNS, python_log_level: str = "INFO"
) -> str:
    """The development instance's ``dagster.yaml`` (storage URL read from ``$url_env`` when Dagster starts).

    ``python_log_level``: the least level a run prints to the console (Dagster's default, DEBUG, prints every step
    event); the UI's event log keeps every event whatever the level."""
    return f"""\
# Written by `audit-platform dev` on every start; edits are overwritten.
# Dagster's storage is the "{DAGSTER_DATABASE}" database on the audit primary. The URL (scheme {STORAGE_SCHEME},
# so SQLAlchemy never picks psycopg 3 for dagster-postgres) comes from ${url_env}: no password in this file.
storage:
  postgres:
    postgres_url:
      env: {url_env}

# Launched runs wait in a queue the daemon (started by `dagster dev`) drains.
run_coordinator:
  module: dagster.core.run_coordinator
  class: QueuedRunCoordinator
  config:
    max_concurrent_runs: {max_concurrent_runs}
    dequeue_interval_seconds: 2

python_logs:
  python_log_level: {python_log_level}

telemetry:
  enabled: false
"""


def write_dagster_home(
    home: Path, *, url_env: str = STORAGE_URL_ENV, max_concurrent_runs: int = DEV_MAX_CONCURRENT_RUNS,
    python_log_level: str = "INFO",
) -> Path:
    """Create ``home`` and (re)write its ``dagster.yaml``; return ``home`` resolved.

    Example::

        home = write_dagster_home(Path(".audit-platform/dagster_home"))
        os.environ["DAGSTER_HOME"] = str(home)
    """
    home = home.expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    target = home / "dagster.yaml"
    tmp = target.with_name(f".dagster.yaml.{os.getpid()}.tmp")
    tmp.write_text(dagster_yaml(url_env=url_env, max_concurrent_runs=max_concurrent_runs,
                                python_log_level=python_log_level))
    os.replace(tmp, target)
    return home


def repository_root() -> Path:
    """The checkout this package runs from (``pip install -e``): the directory holding ``workspace.yaml``."""
    return Path(__file__).resolve().parent.parent


def workspace_file(home: Path | None = None) -> Path:
    """The repository's ``workspace.yaml``; without one (a non-editable install), one written into ``home``."""
    repo_workspace = repository_root() / "workspace.yaml"
    if repo_workspace.is_file():
        return repo_workspace
    if home is None:
        raise DagsterDevError(f"no workspace.yaml at {repo_workspace}")
    generated = home / "workspace.yaml"
    generated.write_text(f"load_from:\n  - python_module: {CODE_LOCATION_MODULE}\n")
    return generated


def _default_signals() -> None:
    # Runs in the child between fork and exec: a parent started in the background (SIG_IGN for SIGINT, which
    # dagster copies to SIGTERM) must not hand down a `dagster dev` that cannot be stopped.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})  # the parent blocks them meanwhile


def _group_members(pgid: int) -> list[psutil.Process]:
    """Live (non-zombie) processes of process group ``pgid``."""
    members = []
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(proc)
        except (ProcessLookupError, psutil.Error):
            continue
    return members


@dataclass
class DagsterDev:
    """A running ``dagster dev``, leader of its own session and process group (``pgid == process.pid``)."""

    process: subprocess.Popen[bytes]

    @property
    def pgid(self) -> int:
        return self.process.pid

    @classmethod
    def start(
        cls,
        workspace: Path,
        *,
        host: str,
        port: int,
        env: Mapping[str, str],
        cwd: Path | None = None,
    ) -> DagsterDev:
        """Start ``dagster dev -w workspace -h host -p port`` in a new session; output goes to this terminal."""
        command = [sys.executable, "-m", "dagster", "dev", "-w", str(workspace), "-h", host, "-p", str(port)]
        logger.info("starting %s", " ".join(command))
        try:
            process = subprocess.Popen(
                command,
                env=dict(env),
                cwd=str(cwd or workspace.parent),
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_default_signals,  # only signal calls between fork and exec
            )
        except OSError as exc:
            raise DagsterDevError(f"could not start dagster dev: {exc}") from None
        return cls(process)

    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 20.0) -> list[int]:
        """SIGTERM the whole group, wait up to ``timeout`` s, then SIGKILL what is left; return the pids killed."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pgid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while True:
            self.process.poll()  # reap the leader so it does not count as alive
            members = _group_members(self.pgid)
            if not members:
                return []
            if time.monotonic() >= deadline:
                break
            time.sleep(0.2)
        killed = [m.pid for m in members]
        logger.warning("dagster dev: %d process(es) still running after %.0f s, SIGKILL: %s", len(killed), timeout,
                       killed)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pgid, signal.SIGKILL)
        deadline = time.monotonic() + 10.0
        while _group_members(self.pgid) and time.monotonic() < deadline:
            self.process.poll()
            time.sleep(0.1)
        self.process.poll()
        left = _group_members(self.pgid)
        if left:
            raise DagsterDevError(f"dagster dev: processes {[p.pid for p in left]} survived SIGKILL")
        return killed
