"""Fault tests: real servers of their own, stopped and started while clients read and write.

- a replica stops during a read loop → no read fails, reads move to the primary, the replica rejoins on restart;
- Redis stops during a query loop → no error, the hit ratio falls, and recovers when Redis returns;
- the primary stops during a write loop → its breaker opens, writes fail fast with a clear error, every write
  acknowledged before the stop is there after the restart, the breaker closes after recovery.

Times are compared with the configured bounds (pool timeout, breaker reset), never with fixed figures.
"""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
import statistics
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

pytest.importorskip("psutil", reason="the local servers need the 'local' extra")

from audit_db_core import AuditDatabase, AuditEvent, AuditQuery, AuditSettings, AuditError, health, telemetry
from audit_db_core.breakers import BreakerState
from audit_db_core.errors import CircuitOpenError
from audit_local.servers import LocalEndpoints, LocalServers
from audit_db_core.migrate import migrate
from tests.telemetry import Collected, all_attribute_values, otel, value  # noqa: F401 - otel is a fixture

pytestmark = [pytest.mark.slow, pytest.mark.local_servers]

UTC = dt.UTC
PAST = dt.datetime(2026, 10, 5, tzinfo=UTC)


@contextmanager
def migrated_servers(prefix: str, *, redis: bool = True) -> Iterator[tuple[LocalServers, LocalEndpoints]]:
    """Local servers of their own, migrated; stopped and removed at the end, even on failure."""
    directory = Path(tempfile.mkdtemp(prefix=prefix))
    servers = LocalServers(directory / "servers", redis=redis)
    try:
        endpoints = servers.up()
        migrate(endpoints.database_url)
        yield servers, endpoints
    finally:
        servers.down(remove=True)
        shutil.rmtree(directory, ignore_errors=True)


@contextmanager
def running(threads: list[threading.Thread], stop: threading.Event) -> Iterator[None]:
    """Start ``threads``; at the end set ``stop`` and join them all, even when the block fails."""
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join()


@pytest.fixture(scope="module")
def own_servers() -> Iterator[tuple[LocalServers, LocalEndpoints]]:
    with migrated_servers("audit-fault-servers-") as pair:
        yield pair


def fault_settings(ep: LocalEndpoints, **overrides: object) -> AuditSettings:
    base: dict[str, object] = {
        "database_url": ep.database_url,
        "replica_urls": list(ep.replica_urls),
        "redis_url": ep.redis_url,
        "replicas": {"monitor_interval_seconds": 0.2},
        "breakers": {"primary": {"reset_timeout_seconds": 2}, "replica": {"reset_timeout_seconds": 1},
                     "redis": {"reset_timeout_seconds": 1}},
        "pool": {"timeout_seconds": 10, "connect_timeout_seconds": 2, "reconnect_timeout_seconds": 3},
    }
    base.update(overrides)
    return AuditSettings(**base)  # type: ignore[arg-type]


def wait_for(predicate, timeout: float = 30.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_replica_stops_during_a_read_loop(own_servers: tuple[LocalServers, LocalEndpoints]) -> None:
    servers, ep = own_servers
    with AuditDatabase(fault_settings(ep, cache={"enabled": False})) as db:
        db.insert(AuditEvent(action="patient.record.read", status="success", principal_id="loop"))
        assert wait_for(lambda: db.query(AuditQuery(principal_id="loop"), consistency="eventual").extra["source"]
                        == "replica-0")
        reads: list[tuple[float, str, int, float]] = []  # (finished, source, rows, started)
        errors: list[BaseException] = []
        stop = threading.Event()

        def loop() -> None:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    page = db.query(AuditQuery(principal_id="loop"), consistency="eventual")
                    reads.append((time.monotonic(), page.extra["source"], len(page), started))
                except BaseException as exc:  # noqa: BLE001 - every failure is the test's finding
                    errors.append(exc)

        threads = [threading.Thread(target=loop) for _ in range(4)]
        for t in threads:
            t.start()
        try:
            time.sleep(0.5)
            stopped_at = time.monotonic()
            servers.stop("replica")
            assert wait_for(lambda: any(t > stopped_at and s == "primary" for t, s, _, _ in reads[-50:]))
            first_primary = min(t for t, s, _, _ in reads if t > stopped_at and s == "primary")
            time.sleep(1.0)
            # Out of rotation: every read begun after the first one the primary answered went to the primary (one
            # already running on the replica when it stopped may still finish there).
            after_stop = [(t, s) for t, s, _, begun in reads if begun > first_primary]
            assert after_stop and all(s == "primary" for _, s in after_stop)
            servers.start("replica")
            restarted_at = time.monotonic()
            assert wait_for(lambda: any(t > restarted_at and s == "replica-0" for t, s, _, _ in reads[-50:]))
        finally:
            stop.set()
            for t in threads:
                t.join()
            servers.start("replica")  # running for the module's next tests, also when this one failed
        assert errors == []  # not one read failed
        assert all(n == 1 for _, _, n, _ in reads)  # and every read saw the event
        failover = first_primary - stopped_at
        # well within the 10 s, and below the configured pool timeout the reads never had to wait out
        assert failover < min(10.0, db.settings.pool.timeout_seconds)
        assert db.router.snapshot()["reads"]["failovers"] >= 1


def test_redis_stops_during_a_query_loop(own_servers: tuple[LocalServers, LocalEndpoints]) -> None:
    servers, ep = own_servers
    # short L1 life while the invalidation channel is down, so the loss of L2 shows in the hit ratio
    settings = fault_settings(ep, cache={"ttl_seconds": 0.3, "closed_window_ttl_seconds": 3600,
                                         "redis_timeout_seconds": 0.2})
    marker = uuid.uuid4().hex[:8]
    with AuditDatabase(settings) as db:
        assert db.cache.wait_synced()
        db.insert_many(AuditEvent(action="patient.record.read", status="success", principal_id=f"{marker}-{i % 20}",
                                  event_time=PAST + dt.timedelta(hours=i)) for i in range(200))
        queries = [AuditQuery(principal_id=f"{marker}-{i}", since=PAST, until=PAST + dt.timedelta(days=10))
                   for i in range(20)]
        errors: list[BaseException] = []

        def phase(seconds: float) -> float:
            db.cache.reset_stats()
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                for query in queries:
                    try:
                        assert len(db.query(query, consistency="eventual")) == 10
                    except BaseException as exc:  # noqa: BLE001
                        errors.append(exc)
                time.sleep(0.02)
            return db.cache.stats()["hit_ratio"]

        phase(0.5)  # warm
        before = phase(2.0)
        servers.stop("redis")
        during = phase(3.0)
        stats_during = db.cache.stats()
        servers.start("redis")
        assert db.cache.wait_synced(timeout=15)
        phase(0.5)
        after = phase(2.0)
    assert errors == []
    assert before > 0.9 and after > 0.9
    assert during < before  # fewer hits without L2 …
    assert stats_during["bypassed"] > 0 and stats_during["l2_hits"] == 0  # … and Redis was bypassed, not waited on


def test_primary_stops_during_a_write_loop(own_servers: tuple[LocalServers, LocalEndpoints]) -> None:
    servers, ep = own_servers
    marker = uuid.uuid4().hex[:8]
    acknowledged: list[uuid.UUID] = []
    failures: list[tuple[float, float, BaseException]] = []
    with AuditDatabase(fault_settings(ep, replica_urls=[], cache={"enabled": False})) as db:
        breaker = db.breakers.get("primary")
        stop = threading.Event()

        def writer() -> None:
            while not stop.is_set():
                ev = AuditEvent(action="patient.record.update", status="success", principal_id=marker)
                started = time.monotonic()
                try:
                    db.insert(ev)
                    acknowledged.append(ev.event_id)
                except AuditError as exc:
                    failures.append((started, time.monotonic() - started, exc))
                    time.sleep(0.01)

        thread = threading.Thread(target=writer)
        thread.start()
        try:
            assert wait_for(lambda: len(acknowledged) >= 20)
            servers.stop("primary")
            stopped_acks = len(acknowledged)
            assert wait_for(lambda: breaker.state is BreakerState.OPEN, timeout=60)
            assert wait_for(lambda: sum(isinstance(f[2], CircuitOpenError) for f in failures) >= 10)
            servers.start("primary")
            assert wait_for(lambda: breaker.state is BreakerState.CLOSED and len(acknowledged) > stopped_acks + 20,
                            timeout=60)
        finally:
            stop.set()
            thread.join()
    fast = [d for _, d, e in failures if isinstance(e, CircuitOpenError)]
    # Refused at once, no wait on the pool (the median: one refusal of a thread the scheduler left waiting on a
    # loaded machine says nothing about the breaker).
    assert fast and statistics.median(fast) < db.settings.pool.timeout_seconds / 10
    assert "circuit breaker is open" in str(next(e for _, _, e in failures if isinstance(e, CircuitOpenError)))
    slow = [d for _, d, e in failures if not isinstance(e, CircuitOpenError)]
    assert max(slow) < db.settings.pool.timeout_seconds  # even before the breaker opened, no full pool wait
    stats = breaker.stats()
    assert stats["transitions"].get("closed->open", 0) >= 1 and stats["transitions"].get("half_open->closed", 0) >= 1
    with psycopg.connect(ep.database_url) as conn:
        stored = {r[0] for r in conn.execute("SELECT event_id FROM audit_log WHERE principal_id = %s", (marker,))}
        total = conn.execute("SELECT count(*) FROM audit_log WHERE principal_id = %s", (marker,)).fetchone()
    assert set(acknowledged) <= stored  # every acknowledged write survived the stop
    assert total == (len(stored),)  # and none is there twice


# -- what an operator sees meanwhile: OpenTelemetry figures and the health report's actions ---------------------------


def test_redis_outage_shows_in_the_metrics_and_the_health_actions(
    own_servers: tuple[LocalServers, LocalEndpoints], otel: Collected
) -> None:
    servers, ep = own_servers
    settings = fault_settings(ep, replica_urls=[], cache={"redis_timeout_seconds": 0.2})
    asked = iter(range(10**6))

    def miss_l1() -> None:  # a query L1 has not seen: L2 is asked (or bypassed)
        query = AuditQuery(principal_id=f"otel-redis-{next(asked)}", since=PAST, until=PAST + dt.timedelta(days=1))
        db.query(query, consistency="eventual")

    with AuditDatabase(settings) as db:
        assert db.cache.wait_synced()
        dep = {"audit.deployment": str(db.deployment_id)}
        servers.stop("redis")
        try:
            assert wait_for(lambda: miss_l1() is None and db.breakers.get("redis").state is BreakerState.OPEN)
            miss_l1()  # bypasses L2 while its breaker is open
            telemetry.refresh(db)
            got = otel.metrics()
            redis_open = value(got["audit.breaker.state"], **dep, **{"audit.component": "redis",
                                                                     "audit.breaker.state": "open"})
            health_of_redis = value(got["audit.health.component"], **dep, **{"audit.component": "redis"})
            report = db.health()
        finally:
            servers.start("redis")
        assert redis_open == 1 and health_of_redis == 0
        assert value(got["audit.cache.bypasses"], **dep, **{"audit.cache.tier": "l2"}) >= 1
        assert value(got["audit.breaker.transitions"], **dep, **{"audit.component": "redis",
                                                                 "audit.breaker.to": "open"}) >= 1
        assert report.components["redis"].action == health.REDIS_DOWN
        assert health.REDIS_DOWN in (report.components["breakers"].action or "")
    # every query of the outage was answered by the primary (no replica here), timed as such, and none failed
    asked_during = next(asked)
    queries = value(got["audit.query.duration"], **{"audit.query.source": "primary", "audit.consistency": "eventual",
                                                    "audit.query.kind": "page"})
    assert queries.count == asked_during
    assert not [a for a, _ in got["db.client.operation.duration"] if "error.type" in a]
    spans = [s for s in otel.spans() if s.name == "query audit_log"]
    assert len(spans) == asked_during and {s.attributes["audit.query.source"] for s in spans} == {"primary"}
    assert not any("otel-redis-" in text for text in all_attribute_values(otel))  # no principal of the queries


def test_replica_outage_shows_in_the_metrics_and_the_health_actions(
    own_servers: tuple[LocalServers, LocalEndpoints], otel: Collected
) -> None:
    servers, ep = own_servers
    with AuditDatabase(fault_settings(ep, cache={"enabled": False})) as db:
        dep = {"audit.deployment": str(db.deployment_id)}
        assert wait_for(lambda: db.router.in_rotation() == ["replica-0"])
        assert db.query(AuditQuery(), consistency="eventual").extra["source"] == "replica-0"
        before = otel.metrics()
        servers.stop("replica")
        try:
            assert wait_for(lambda: db.router.in_rotation() == [])
            assert db.query(AuditQuery(), consistency="eventual").extra["source"] == "primary"
            telemetry.refresh(db)
            during = otel.metrics()
            report = db.health()
        finally:
            servers.start("replica")
        assert wait_for(lambda: db.router.in_rotation() == ["replica-0"])
        after = otel.metrics()
    rotation = {"audit.replica": "replica-0", **dep}
    assert value(before["audit.replica.in_rotation"], **rotation) == 1
    assert value(before["audit.replica.lag.wal"], **rotation) >= 0
    assert value(during["audit.replica.in_rotation"], **rotation) == 0
    assert value(during["audit.health.component"], **dep, **{"audit.component": "replica-0"}) == 0
    assert value(during["audit.health.status"], **dep, **{"audit.health.status": "degraded"}) == 1
    assert value(after["audit.replica.in_rotation"], **rotation) == 1
    assert report.components["replica-0"].action == health.REPLICA_DOWN
    # the eventual read went to the replica before the stop, to the primary during it: each timed by its source
    eventual = {"audit.consistency": "eventual", "audit.query.kind": "page"}
    assert value(before["audit.query.duration"], **eventual, **{"audit.query.source": "replica"}).count == 1
    assert value(during["audit.query.duration"], **eventual, **{"audit.query.source": "replica"}).count == 1
    assert value(during["audit.query.duration"], **eventual, **{"audit.query.source": "primary"}).count == 1
    sources = [s.attributes["audit.query.source"] for s in otel.spans() if s.name == "query audit_log"]
    assert sources == ["replica", "primary"]
    assert value(during["db.client.connection.wait_time"],
                 **{"db.client.connection.pool.name": "replica-0"}).count >= 1


# -- the primary lost: reads go on from the replica; a promoted replica takes the writes -----------------------------


def test_reads_survive_a_primary_outage(own_servers: tuple[LocalServers, LocalEndpoints]) -> None:
    """Kill the primary under uncached readers: eventual reads never fail (the replica serves them on its own),
    bounded reads are served while the replica's staleness is within the bound and refused after it, strong reads
    and writes fail fast; health names the replica serving reads and its staleness."""
    servers, ep = own_servers
    bound = 3.0
    settings = fault_settings(ep, cache={"enabled": False},
                              replicas={"monitor_interval_seconds": 0.2, "bounded_lag_seconds": bound})
    marker = uuid.uuid4().hex[:8]
    reads: list[tuple[float, str, str | None, int | None]] = []  # (time, consistency, source or None, rows)
    errors: list[tuple[float, str, BaseException]] = []
    with AuditDatabase(settings) as db:
        db.insert_many(AuditEvent(action="patient.record.read", status="success", principal_id=marker)
                       for _ in range(5))
        mine = AuditQuery(principal_id=marker)
        assert wait_for(lambda: (lambda p: p.extra["source"] == "replica-0" and len(p) == 5)(
            db.query(mine, consistency="bounded")))
        stop = threading.Event()

        def reader(consistency: str) -> None:
            while not stop.is_set():
                try:
                    page = db.query(mine, consistency=consistency)  # type: ignore[arg-type]
                    reads.append((time.monotonic(), consistency, page.extra["source"], len(page)))
                except BaseException as exc:  # noqa: BLE001 - every failure is the test's finding
                    errors.append((time.monotonic(), consistency, exc))
                    time.sleep(0.02)

        def writer() -> None:  # keeps the replica's last replayed commit fresh until the kill, then meets the breaker
            while not stop.is_set():
                try:
                    db.insert(AuditEvent(action="patient.record.update", status="success", principal_id="w-" + marker))
                except AuditError:
                    time.sleep(0.02)

        threads = [threading.Thread(target=reader, args=(c,)) for c in ("eventual",) * 4 + ("bounded",) * 2]
        threads.append(threading.Thread(target=writer))
        try:
            with running(threads, stop):
                time.sleep(0.5)
                killed_at = time.monotonic()
                servers.kill("primary")
                assert wait_for(lambda: db.breakers.get("primary").state is BreakerState.OPEN, timeout=60)
                assert wait_for(lambda: db.router.snapshot()["primary_reachable"] is False)
                with pytest.raises(AuditError):
                    db.query(mine, consistency="strong")
                report = db.health()
                # past the bound: bounded reads must have left the replica by now
                assert wait_for(lambda: time.monotonic() > killed_at + bound + 1.5, timeout=bound + 10)
                snapshot = db.router.snapshot()["replicas"]["replica-0"]
        finally:
            servers.start("primary")
    eventual = [r for r in reads if r[1] == "eventual" and r[0] > killed_at]
    assert [e for e in errors if e[1] == "eventual"] == []  # not one eventual read failed
    assert eventual and all(source == "replica-0" and n == 5 for _, _, source, n in eventual)
    bounded = [r for r in reads if r[1] == "bounded" and r[0] > killed_at]
    within = [r for r in bounded if r[0] < killed_at + bound - 1.0]  # staleness surely below the bound
    assert within and all(source == "replica-0" and n == 5 for _, _, source, n in within)
    assert not [e for e in errors if e[1] == "bounded" and e[0] < killed_at + bound - 1.0]
    late = [r for r in bounded if r[0] > killed_at + bound + 1.0]  # staleness surely past it: not from the replica
    assert all(source != "replica-0" for _, _, source, _ in late)
    assert [e for e in errors if e[1] == "bounded" and e[0] > killed_at + bound + 1.0]  # they went to the primary
    assert snapshot["in_rotation"] and snapshot["lag_seconds"] is not None and snapshot["lag_seconds"] > bound
    primary = report.components["primary"]
    assert not primary.healthy and "reads are served by replica-0 with staleness" in (primary.error or "")
    assert "replica-0" in primary.details["reads_served_by"] and report.components["replica-0"].healthy


@pytest.fixture
def promotable_servers() -> Iterator[tuple[LocalServers, LocalEndpoints]]:
    """A primary and a replica of this test's own: the test promotes the replica, which leaves no usable pair."""
    with migrated_servers("audit-promotion-servers-", redis=False) as pair:
        yield pair


def both_hosts(primary_url: str, replica_url: str) -> str:
    """``postgresql://u@h1:p1,h2:p2/db?target_session_attrs=read-write`` from two single-host local URLs."""
    from urllib.parse import urlsplit

    p, r = urlsplit(primary_url), urlsplit(replica_url)
    hosts = f"{p.hostname}:{p.port},{r.hostname}:{r.port}"
    return f"postgresql://{p.username}@{hosts}{p.path}?target_session_attrs=read-write"


def test_writes_follow_a_promoted_replica(promotable_servers: tuple[LocalServers, LocalEndpoints]) -> None:
    """Synchronous replication, writers through a URL naming both hosts; kill the primary, promote the replica:
    writes resume through the same AuditDatabase, no acknowledged write is lost or doubled, no eventual read fails,
    and the promoted server leaves the read rotation once the primary's URL reaches it (the old primary's URL, listed
    as a candidate replica, never joins it while down)."""
    servers, ep = promotable_servers
    servers.synchronous()
    url = both_hosts(ep.database_url, ep.replica_urls[0])
    settings = fault_settings(ep, database_url=url, replica_urls=[ep.replica_urls[0], ep.database_url], redis_url=None,
                              cache={"enabled": False}, ingest={"synchronous_commit": "remote_apply"})
    marker = uuid.uuid4().hex[:8]
    acknowledged: list[tuple[float, uuid.UUID]] = []
    reads: list[tuple[float, str]] = []
    read_errors: list[BaseException] = []
    with AuditDatabase(settings) as db:
        assert wait_for(lambda: db.router.in_rotation() == ["replica-0"])
        assert db.router.snapshot()["replicas"]["replica-1"]["role"] == "primary"  # the primary's own URL
        deployment = db.deployment_id
        stop = threading.Event()

        def writer() -> None:
            while not stop.is_set():
                ev = AuditEvent(action="patient.record.update", status="success", principal_id=marker)
                try:
                    db.insert(ev)
                    acknowledged.append((time.monotonic(), ev.event_id))
                except AuditError:
                    time.sleep(0.01)

        def reader() -> None:
            while not stop.is_set():
                try:
                    page = db.query(AuditQuery(limit=1), consistency="eventual")
                    reads.append((time.monotonic(), page.extra["source"]))
                except AuditError as exc:
                    read_errors.append(exc)
                    time.sleep(0.02)

        threads = [threading.Thread(target=writer) for _ in range(4)] + [threading.Thread(target=reader)]
        with running(threads, stop):
            assert wait_for(lambda: len(acknowledged) >= 40)
            servers.kill("primary")
            assert wait_for(lambda: db.breakers.get("primary").state is BreakerState.OPEN, timeout=60)
            with psycopg.connect(ep.replica_urls[0], autocommit=True) as conn:
                conn.execute("SELECT pg_promote(wait => true)")
            promoted_at = time.monotonic()
            assert wait_for(lambda: any(t > promoted_at for t, _ in acknowledged), timeout=60)
            first_write = min(t for t, _ in acknowledged if t > promoted_at) - promoted_at
            assert wait_for(lambda: db.router.snapshot()["replicas"]["replica-0"]["role"] == "primary")
            left_at = time.monotonic()
            assert wait_for(lambda: sum(t > promoted_at for t, _ in acknowledged) >= 40)
            time.sleep(0.5)
            breaker = db.breakers.stats()["primary"]
        print(f"\npromotion → first acknowledged write through the same AuditDatabase: {first_write:.3f} s")
        # reads went on throughout: the replica, the promoted node, then the new primary
        assert read_errors == [], [str(e) for e in read_errors[:3]]
        assert db.router.in_rotation() == []  # the promoted server is no replica; the old primary is down
        after = [source for t, source in reads if t > left_at + 0.5]
        assert after and set(after) == {"primary"}  # no read sent to it as a replica any more
        assert breaker["probes_answered"] >= 1 and breaker["state"] == "closed"
    with psycopg.connect(ep.replica_urls[0]) as conn:  # the new primary
        stored = conn.execute("SELECT event_id, count(*) FROM audit_log WHERE principal_id = %s GROUP BY event_id",
                              (marker,)).fetchall()
        assert conn.execute("SELECT NOT pg_is_in_recovery()").fetchone() == (True,)
        identity = conn.execute("SELECT deployment_id FROM audit_deployment").fetchone()
    counts = dict(stored)
    assert {e for _, e in acknowledged} <= set(counts)  # every acknowledged write is on the new primary …
    assert set(counts.values()) == {1}  # … exactly once
    assert identity == (deployment,)  # the same deployment, on its new primary


@pytest.fixture
def synchronous_servers() -> Iterator[tuple[LocalServers, LocalEndpoints]]:
    """A primary whose replica is its synchronous standby; the test stops and starts that replica."""
    with migrated_servers("audit-sync-servers-", redis=False) as pair:
        pair[0].synchronous()
        yield pair


def _cancel_the_standby_wait(primary_url: str, calls: list[threading.Thread]) -> None:
    """What an operator's ``pg_cancel_backend`` does to commits stuck waiting for a synchronous standby: wait until
    a backend waits on ``SyncRep``, then cancel every such wait (the calls in ``calls`` then return or raise)."""
    with psycopg.connect(primary_url, autocommit=True) as admin:
        assert wait_for(lambda: admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'").fetchone()[0] > 0, 30)
        admin.execute("SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE wait_event = 'SyncRep'")
    for call in calls:
        call.join(30)
        assert not call.is_alive(), "a write still waits for the standby after its wait was cancelled"


def test_a_commit_no_standby_confirmed_is_not_acknowledged(
        synchronous_servers: tuple[LocalServers, LocalEndpoints]) -> None:
    """synchronous_commit 'on' with the standby down: a write waits; when that wait is cancelled PostgreSQL commits
    locally and answers with only a warning. The library must not report that write as acknowledged: insert and
    insert_many raise UnconfirmedCommitError (committed, not retryable), the rows are stored exactly once, and once
    the standby is back the next write through the same connections is acknowledged as usual."""
    from audit_db_core import UnconfirmedCommitError

    servers, ep = synchronous_servers
    settings = fault_settings(ep, replica_urls=[], redis_url=None, cache={"enabled": False},
                              pool={"min_size": 1, "max_size": 1}, ingest={"synchronous_commit": "on", "batch_size": 2})
    marker = uuid.uuid4().hex[:8]
    outcomes: dict[str, object] = {}

    def call(name: str, fn) -> threading.Thread:  # type: ignore[no-untyped-def]
        def run() -> None:
            try:
                outcomes[name] = fn()
            except BaseException as exc:  # noqa: BLE001 - the outcome is what the test checks
                outcomes[name] = exc
        return threading.Thread(target=run)

    with AuditDatabase(settings) as db:
        assert db.insert(AuditEvent(action="user.login", status="success", principal_id=marker))  # standby up
        servers.stop("replica")
        one = AuditEvent(action="patient.record.read", status="success", principal_id=marker)
        thread = call("insert", lambda: db.insert(one))
        thread.start()
        _cancel_the_standby_wait(ep.database_url, [thread])
        error = outcomes["insert"]
        assert isinstance(error, UnconfirmedCommitError), error
        assert error.committed and not error.retryable and error.operation == "insert"
        assert "no synchronous standby confirmed it" in str(error)

        batch = [{"action": "patient.record.update", "status": "success", "principal_id": marker,
                  "event_id": str(uuid.uuid4()), "event_time": dt.datetime.now(dt.timezone.utc)}
                 for _ in range(3)]  # batches of 2: the first one waits
        thread = call("insert_many", lambda: db.insert_many(batch))
        thread.start()
        _cancel_the_standby_wait(ep.database_url, [thread])
        error = outcomes["insert_many"]
        assert isinstance(error, UnconfirmedCommitError), error
        assert error.context["events_before_batch"] == 0 and error.context["written"] == 2
        assert "this batch of 2 events is stored on the primary" in str(error)

        servers.start("replica")
        servers.synchronous()
        assert db.insert_many(batch) == 1  # the third event; the first two are stored, not doubled
        assert db.insert(AuditEvent(action="user.logout", status="success", principal_id=marker))
    with psycopg.connect(ep.database_url) as conn:
        rows = conn.execute("SELECT action, count(*) FROM audit_log WHERE principal_id = %s GROUP BY action",
                            (marker,)).fetchall()
    assert dict(rows) == {"user.login": 1, "patient.record.read": 1, "patient.record.update": 3, "user.logout": 1}
    # Everything reached the standby once it was back (the last acknowledged write waited for it).
    with psycopg.connect(ep.replica_urls[0]) as conn:
        assert conn.execute("SELECT count(*) FROM audit_log WHERE principal_id = %s", (marker,)).fetchone() == (6,)
