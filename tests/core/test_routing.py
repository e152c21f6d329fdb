"""Read routing against the real streaming replica: consistency levels, measured lag, read-your-writes by LSN,
failover to the primary, the analytics replica."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator

import pytest

from audit_db_core import AuditDatabase, AuditEvent, AuditQuery, AuditSettings, AuditValidationError
from tests.conftest import TestServers as Servers
from tests.conftest import dbname_of, with_dbname
from tests.replication import replay_paused

UTC = dt.UTC


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.05) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


@pytest.fixture
def replica_url(servers: Servers, fresh_database: str) -> str:
    if not servers.replica_urls:
        pytest.skip("no replica given for this server (AUDIT_TEST_REPLICA_URLS)")
    return with_dbname(servers.replica_urls[0], dbname_of(fresh_database))


def routed_settings(fresh_database: str, replica_url: str, **overrides: object) -> AuditSettings:
    replicas = {"monitor_interval_seconds": 0.1, **overrides.pop("replicas", {})}  # type: ignore[dict-item]
    return AuditSettings(database_url=fresh_database, replica_urls=[replica_url], replicas=replicas,
                         cache={"enabled": False}, **overrides)


@pytest.fixture
def rdb(fresh_database: str, replica_url: str) -> Iterator[AuditDatabase]:
    with AuditDatabase(routed_settings(fresh_database, replica_url)) as db:
        assert wait_for(lambda: db.router.in_rotation() == ["replica-0"]), db.router.snapshot()
        yield db


def event(principal: str = "dr.who") -> AuditEvent:
    return AuditEvent(action="patient.record.read", status="success", principal_id=principal)


def test_levels_route_strong_to_primary_and_eventual_to_the_replica(rdb: AuditDatabase) -> None:
    rdb.insert(event())
    assert rdb.query(AuditQuery(), consistency="strong").extra["source"] == "primary"
    assert wait_for(lambda: len(rdb.query(AuditQuery(), consistency="eventual")) == 1)
    page = rdb.query(AuditQuery(), consistency="eventual")
    assert page.extra["source"] == "replica-0"
    assert rdb.query(AuditQuery(), consistency="bounded").extra["source"] == "replica-0"
    reads = rdb.router.snapshot()["reads"]
    assert reads["replica-0"] >= 2 and reads["primary"] >= 1


def test_read_your_writes_waits_for_the_replica_to_replay_the_commit(rdb: AuditDatabase, replica_url: str) -> None:
    """Would fail without the LSN check: with replay paused, the replica does not have the event yet."""
    with replay_paused(replica_url):
        rdb.insert(event("dr.ryw"))
        mine = AuditQuery(principal_id="dr.ryw")
        stale = rdb.query(mine, consistency="eventual")
        assert stale.extra["source"] == "replica-0" and len(stale) == 0  # what a plain replica read gives
        fresh = rdb.query(mine, consistency="eventual", read_your_writes=True)
        assert fresh.extra["source"] == "primary" and len(fresh) == 1
        token = rdb.last_write_lsn
        assert token is not None and "/" in token
        assert rdb.count(mine, consistency="eventual", after_lsn=token) == 1
    # once replayed, read-your-writes is served by the replica
    assert wait_for(lambda: rdb.query(mine, consistency="eventual", read_your_writes=True).extra["source"]
                    == "replica-0")
    assert len(rdb.query(mine, consistency="eventual", read_your_writes=True)) == 1
    assert rdb.router.snapshot()["reads"]["ryw_fallbacks"] >= 2


def test_bounded_reads_leave_a_lagging_replica_eventual_reads_keep_it(fresh_database: str, replica_url: str) -> None:
    settings = routed_settings(fresh_database, replica_url, replicas={"bounded_lag_seconds": 0.5})
    with AuditDatabase(settings) as db:
        assert wait_for(lambda: db.router.in_rotation() == ["replica-0"])
        with replay_paused(replica_url):
            db.insert(event())
            # lag in seconds is measured as now() - last replayed commit while WAL waits: it grows past 0.5 s
            assert wait_for(lambda: (db.router.snapshot()["replicas"]["replica-0"]["lag_seconds"] or 0) > 0.5)
            assert db.query(AuditQuery(), consistency="bounded").extra["source"] == "primary"
            assert db.query(AuditQuery(), consistency="eventual").extra["source"] == "replica-0"
        assert wait_for(lambda: db.query(AuditQuery(), consistency="bounded").extra["source"] == "replica-0")


def test_a_replica_beyond_the_lag_bound_leaves_the_rotation(fresh_database: str, replica_url: str) -> None:
    settings = routed_settings(fresh_database, replica_url, replicas={"max_lag_seconds": 0.5})
    with AuditDatabase(settings) as db:
        assert wait_for(lambda: db.router.in_rotation() == ["replica-0"])
        with replay_paused(replica_url):
            db.insert(event())
            assert wait_for(lambda: db.router.in_rotation() == [])
            page = db.query(AuditQuery(), consistency="eventual")
            assert page.extra["source"] == "primary" and len(page) == 1
        assert wait_for(lambda: db.router.in_rotation() == ["replica-0"])


def test_unreachable_replica_fails_over_to_the_primary_without_an_error(fresh_database: str) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = AuditSettings(database_url=fresh_database, replica_urls=[f"postgresql://u:Secret9@127.0.0.1:{port}/x"],
                             replicas={"monitor_interval_seconds": 0.1}, cache={"enabled": False})
    with AuditDatabase(settings) as db:
        db.insert(event())
        assert db.router.wait_measured()
        page = db.query(AuditQuery(), consistency="eventual")
        assert page.extra["source"] == "primary" and len(page) == 1
        snap = db.router.snapshot()["replicas"]["replica-0"]
        assert not snap["in_rotation"] and "unreachable" in snap["problem"] and "Secret9" not in snap["problem"]
        health = db.health()
        assert health.status == "degraded" and not health.components["replica-0"].healthy


def test_analytics_replica_is_kept_out_of_the_normal_rotation(fresh_database: str, replica_url: str) -> None:
    settings = routed_settings(fresh_database, replica_url, replicas={"analytics_replica": 0})
    with AuditDatabase(settings) as db:
        db.insert(event())
        assert db.router.wait_measured()
        assert wait_for(lambda: db.query(AuditQuery(), consistency="eventual", analytics=True).extra["source"]
                        == "replica-0")
        assert db.query(AuditQuery(), consistency="eventual").extra["source"] == "primary"


def test_bad_read_options_name_the_field(rdb: AuditDatabase) -> None:
    with pytest.raises(AuditValidationError, match="after_lsn"):
        rdb.query(AuditQuery(), consistency="eventual", after_lsn="yesterday")
    with pytest.raises(AuditValidationError, match="consistency"):
        rdb.query(AuditQuery(), consistency="whenever")  # type: ignore[arg-type]


def test_reports_run_on_the_analytics_replica(fresh_database: str, replica_url: str) -> None:
    import datetime as dt

    settings = routed_settings(fresh_database, replica_url, replicas={"analytics_replica": 0})
    with AuditDatabase(settings) as db:
        db.insert(AuditEvent(action="patient.record.read", status="success", principal_id="dr.report",
                             organization_id="org-1", target_resource_type="Patient", target_resource_id="p-1"))
        assert wait_for(lambda: db.router.in_rotation() == ["replica-0"])
        since = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
        until = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
        before = db.router.snapshot()["reads"]["replica-0"]
        assert wait_for(lambda: len(db.reports.activity_report("org-1", "dr.report", since, until).frame) == 1)
        assert db.router.snapshot()["reads"]["replica-0"] > before
