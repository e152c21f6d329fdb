"""audit_local: real PostgreSQL primary + streaming replica + Redis processes, started and stopped here.

Every test owns a ``tmp_path`` directory and the ``servers`` fixture stops everything in its finalizer, even when
the test fails.
"""

from __future__ import annotations

import ctypes
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import psycopg
import psycopg.errors
import pytest
import redis

psutil = pytest.importorskip("psutil", reason="the local servers need the 'local' extra")

from audit_local.servers import LocalEndpoints, LocalServerError, LocalServers

pytestmark = pytest.mark.local_servers

T = TypeVar("T")

_PR_SET_CHILD_SUBREAPER = 36
_PR_GET_CHILD_SUBREAPER = 37


@pytest.fixture(scope="module", autouse=True)
def _collect_our_daemons() -> Iterator[None]:
    """Make this process the sub-reaper of the daemons it starts, so stopped ones vanish at once.

    The servers daemonise (their parent exits), so they are re-parented to init; some init processes (this
    sandbox's) reap only every few seconds, and until then a stopped server stays a zombie whose pid still
    "exists". As sub-reaper, this process inherits them and LocalServers collects them when it stops them.
    """
    if not sys.platform.startswith("linux"):
        yield
        return
    libc = ctypes.CDLL(None, use_errno=True)
    previous = ctypes.c_int(0)
    libc.prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(previous), 0, 0, 0)
    libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    try:
        yield
    finally:
        libc.prctl(_PR_SET_CHILD_SUBREAPER, previous.value, 0, 0, 0)


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[LocalServers]:
    local = LocalServers(tmp_path / "servers")
    try:
        yield local
    finally:
        local.down()


def _poll(check: Callable[[], T | None], timeout: float = 10.0, what: str = "condition") -> T:
    """Call ``check`` until it returns something other than None/False; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result is not None and result is not False:
                return result
        except (psycopg.OperationalError, redis.ConnectionError) as exc:
            last_error = exc
        time.sleep(0.1)
    pytest.fail(f"{what} not reached within {timeout}s (last error: {last_error})")


def _count(url: str, table: str = "events") -> int:
    with psycopg.connect(url, connect_timeout=2, autocommit=True) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    assert row is not None
    return int(row[0])


def _replica_has(url: str, expected: int) -> bool:
    try:
        return _count(url) == expected
    except psycopg.errors.UndefinedTable:  # the CREATE TABLE has not been replayed yet
        return False


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/", 1)[0])


def _refuses(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True


def _pids_gone(pids: list[int], timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    alive = [pid for pid in pids if psutil.pid_exists(pid)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [pid for pid in alive if psutil.pid_exists(pid)]
    return alive


def _postmasters(data_dir: Path) -> list[int]:
    """Pids of the postgres processes running in ``data_dir`` whose parent is not one of them: the postmasters."""
    procs = {
        proc.pid: proc
        for proc in psutil.process_iter(["name", "cwd", "ppid"])
        if proc.info["name"] == "postgres" and proc.info["cwd"] == str(data_dir)
    }
    return [pid for pid, proc in procs.items() if proc.info["ppid"] not in procs]


def test_up_gives_working_primary_replica_and_redis(servers: LocalServers) -> None:
    endpoints = servers.up()
    assert endpoints.database_url.startswith("postgresql://postgres@127.0.0.1:")
    assert len(endpoints.replica_urls) == 1
    assert endpoints.redis_url.startswith("redis://127.0.0.1:")
    assert (servers.directory / "state.json").is_file()
    for component in ("primary", "replica", "redis"):
        assert (servers.directory / component).is_dir()

    with psycopg.connect(endpoints.database_url, connect_timeout=2) as conn:
        conn.execute("CREATE TABLE events (id int PRIMARY KEY, body text NOT NULL)")
        conn.execute("INSERT INTO events VALUES (1, 'written on the primary')")
        conn.commit()
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)

    replica_url = endpoints.replica_urls[0]
    _poll(lambda: _replica_has(replica_url, 1), what="row replicated to the replica")
    with psycopg.connect(replica_url, connect_timeout=2) as conn:
        assert conn.execute("SELECT body FROM events WHERE id = 1").fetchone() == ("written on the primary",)
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("INSERT INTO events VALUES (2, 'written on the replica')")

    client = redis.Redis.from_url(endpoints.redis_url)
    try:
        assert client.set("audit:key", "value") is True
        assert client.get("audit:key") == b"value"
    finally:
        client.close()


def test_second_up_from_a_new_instance_reuses_running_servers(servers: LocalServers) -> None:
    first = servers.up()
    before = servers.status()

    again = LocalServers(servers.directory).up()
    after = LocalServers(servers.directory).status()

    assert again == first
    for component in ("primary", "replica", "redis"):
        assert after[component]["running"] is True
        assert after[component]["port"] == before[component]["port"]
        assert after[component]["pid"] == before[component]["pid"]  # the same postmaster / redis-server
    assert servers.endpoints() == first


def test_stop_then_start_keeps_urls_and_replica_catches_up(servers: LocalServers) -> None:
    endpoints = servers.up()
    replica_url = endpoints.replica_urls[0]
    with psycopg.connect(endpoints.database_url, connect_timeout=2, autocommit=True) as conn:
        conn.execute("CREATE TABLE events (id int PRIMARY KEY)")
        conn.execute("INSERT INTO events SELECT generate_series(1, 10)")
    _poll(lambda: _replica_has(replica_url, 10), what="initial rows on the replica")

    servers.stop("replica")
    assert servers.status()["replica"]["running"] is False
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(replica_url, connect_timeout=2)
    with psycopg.connect(endpoints.database_url, connect_timeout=2, autocommit=True) as conn:
        conn.execute("INSERT INTO events SELECT generate_series(11, 500)")  # written while the replica is down

    servers.start("replica")
    assert servers.status()["replica"]["port"] == _port(replica_url)
    _poll(lambda: _replica_has(replica_url, 500), what="replica catching up after restart")

    servers.stop("redis")
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(endpoints.redis_url, socket_connect_timeout=1).ping()
    servers.start("redis")
    client = redis.Redis.from_url(endpoints.redis_url)
    try:
        assert client.set("after-restart", "1") is True
        assert client.get("after-restart") == b"1"
    finally:
        client.close()
    assert servers.endpoints() == endpoints


def test_killed_primary_restarts_with_its_committed_rows(servers: LocalServers) -> None:
    endpoints = servers.up()
    with psycopg.connect(endpoints.database_url, connect_timeout=2, autocommit=True) as conn:
        conn.execute("CREATE TABLE events (id int PRIMARY KEY)")
        conn.execute("INSERT INTO events VALUES (1), (2), (3)")
    pid = servers.status()["primary"]["pid"]

    servers.kill("primary")
    assert servers.status()["primary"]["running"] is False
    assert _pids_gone([pid]) == []
    with pytest.raises(LocalServerError):
        servers.kill("primary")  # nothing left to kill

    servers.start("primary")
    assert _count(endpoints.database_url) == 3  # acknowledged commits survive a killed server (crash recovery)
    _poll(lambda: _replica_has(endpoints.replica_urls[0], 3), what="replica after primary crash")


def test_down_leaves_no_process_and_is_idempotent(tmp_path: Path) -> None:
    local = LocalServers(tmp_path / "servers")
    try:
        endpoints = local.up()
        status = local.status()
        pids = [int(info["pid"]) for info in status.values()]
        for info in status.values():  # the postmasters' children too (checkpointer, walsender, ...)
            pids += [child.pid for child in psutil.Process(info["pid"]).children(recursive=True)]
        ports = [_port(endpoints.database_url), _port(endpoints.replica_urls[0]), _port(endpoints.redis_url)]
    finally:
        local.down()

    assert _pids_gone(pids) == []
    assert all(_refuses(port) for port in ports)
    assert all(not info["running"] for info in local.status().values())
    local.down()  # again: nothing to do, no error
    LocalServers(tmp_path / "servers").down()  # from another instance as well
    assert (tmp_path / "servers" / "primary" / "PG_VERSION").exists()  # data kept

    local.down(remove=True)
    assert not (tmp_path / "servers").exists()
    local.down()
    with pytest.raises(LocalServerError):
        local.endpoints()


def test_concurrent_up_from_two_processes_starts_one_set_of_servers(servers: LocalServers) -> None:
    code = (
        "import sys; from audit_local.servers import LocalServers; "
        "print(LocalServers(sys.argv[1]).up().env_lines(), end='')"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(servers.directory)], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [proc.communicate(timeout=120)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0]
    assert outputs[0] == outputs[1] == servers.endpoints().env_lines()
    status = servers.status()
    for component in ("primary", "replica"):
        assert _postmasters(servers.directory / component) == [status[component]["pid"]]


def test_failed_up_stops_what_it_started(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import audit_local.servers as local_module

    monkeypatch.setattr(local_module, "redis_server_bin", lambda: Path("/bin/false"))  # Redis cannot start
    local = LocalServers(tmp_path / "servers")
    try:
        with pytest.raises(LocalServerError, match="redis"):
            local.up(timeout=30)
        status = local.status()
        assert status["primary"]["running"] is False
        assert status["replica"]["running"] is False
        assert _refuses(status["primary"]["port"])
    finally:
        local.down()


def test_env_lines_round_trip_through_bash_eval(servers: LocalServers, tmp_path: Path) -> None:
    endpoints = servers.up()
    env_file = tmp_path / "local.env"
    env_file.write_text(endpoints.env_lines())
    script = 'eval "$(cat "$1")"; echo "$AUDIT_DATABASE_URL"; echo "$AUDIT_REPLICA_URLS"; echo "$AUDIT_REDIS_URL"'
    out = subprocess.run(
        ["bash", "-c", script, "bash", str(env_file)], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out == [endpoints.database_url, ",".join(endpoints.replica_urls), endpoints.redis_url]
    with psycopg.connect(out[0], connect_timeout=2) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)

    # Values that need quoting survive too; absent components leave their variable unset.
    tricky = LocalEndpoints("postgresql://u@h:1/db?options=-c%20x='y' $HOME", ["a;b", "c d"], "")
    env_file.write_text(tricky.env_lines())
    script = (
        'eval "$(cat "$1")"; echo "$AUDIT_DATABASE_URL"; echo "$AUDIT_REPLICA_URLS"; echo "${AUDIT_REDIS_URL-unset}"'
    )
    out = subprocess.run(
        ["bash", "-c", script, "bash", str(env_file)], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out == [tricky.database_url, "a;b,c d", "unset"]
