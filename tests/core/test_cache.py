"""The two-tier query cache against the real Redis and PostgreSQL: hits per tier, invalidation by writes (in this
process, through L2, and in another process), Redis unreachable → bypass, JSON (never pickle) in Redis."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import textwrap
import time
import zlib
from collections.abc import Iterator

import msgspec
import pyarrow
import pytest
import redis

from audit_db_core import AuditDatabase, AuditEvent, AuditQuery, AuditSettings
from audit_db_core.cache import ALL, CacheSeal, LRUCache, read_scope, write_scopes
from audit_db_core.cache_codec import VERSION as VALUE_FORMAT
from tests.conftest import TestServers as Servers

UTC = dt.UTC
DAY = dt.datetime(2026, 11, 10, tzinfo=UTC)


def closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def cached_settings(fresh_database: str, servers: Servers) -> AuditSettings:
    if not servers.redis_url:
        pytest.skip("no Redis given for this server (AUDIT_TEST_REDIS_URL)")
    return AuditSettings(database_url=fresh_database, redis_url=servers.redis_url)


@pytest.fixture
def cdb(cached_settings: AuditSettings) -> Iterator[AuditDatabase]:
    with AuditDatabase(cached_settings) as db:
        assert db.cache.wait_synced()
        yield db


def event(when: dt.datetime, principal: str = "dr.grey", **kw: object) -> AuditEvent:
    return AuditEvent(action="patient.record.read", status="success", principal_id=principal, event_time=when, **kw)


def q(principal: str = "dr.grey", days: int = 1) -> AuditQuery:
    return AuditQuery(principal_id=principal, since=DAY, until=DAY + dt.timedelta(days=days))


# -- L1 ----------------------------------------------------------------------------------------------------------------


def test_lru_evicts_least_recently_used_by_entries_and_bytes() -> None:
    lru = LRUCache(max_entries=3, max_bytes=1000)
    for k in "abc":
        lru.put(k, k.upper(), size=100, ttl=60)
    assert lru.get("a") == "A"  # a is now the most recent
    lru.put("d", "D", size=100, ttl=60)
    assert lru.get("b") is None and lru.get("a") == "A" and lru.get("d") == "D"
    lru.put("big", "X", size=900, ttl=60)  # bytes bound: evicts from the least recent end until it fits
    assert lru.bytes <= 1000 and lru.get("big") == "X"
    assert lru.evictions >= 3
    lru.put("huge", "Y", size=1001, ttl=60)  # larger than the whole cache: not stored, nothing evicted
    assert lru.get("huge") is None and lru.get("big") == "X"


def test_lru_expires_entries() -> None:
    now = [0.0]
    lru = LRUCache(max_entries=10, max_bytes=10_000, clock=lambda: now[0])
    lru.put("k", 1, size=1, ttl=5)
    now[0] = 4.9
    assert lru.get("k") == 1
    now[0] = 5.0
    assert lru.get("k") is None and lru.expirations == 1 and lru.bytes == 0


def test_scopes_cover_days_months_and_everything() -> None:
    assert read_scope(DAY, DAY + dt.timedelta(days=2)) == ("d2026-11-10", "d2026-11-11")
    assert read_scope(DAY, DAY + dt.timedelta(hours=1)) == ("d2026-11-10",)
    assert read_scope(DAY, None) == (ALL,) and read_scope(None, DAY) == (ALL,)
    assert read_scope(dt.datetime(2026, 1, 15, tzinfo=UTC), dt.datetime(2026, 6, 1, tzinfo=UTC)) == (
        "m2026-01", "m2026-02", "m2026-03", "m2026-04", "m2026-05", "m2026-06")
    assert read_scope(dt.datetime(1990, 1, 1, tzinfo=UTC), dt.datetime(2026, 1, 1, tzinfo=UTC)) == (ALL,)
    assert write_scopes([DAY, DAY + dt.timedelta(hours=3)]) == {ALL, "d2026-11-10", "m2026-11"}


# -- through AuditDatabase -----------------------------------------------------------------------------------------------


def test_repeated_query_is_an_l1_hit_and_strong_reads_skip_the_cache(cdb: AuditDatabase) -> None:
    cdb.insert(event(DAY + dt.timedelta(hours=1)))
    first = cdb.query(q(), consistency="eventual")
    second = cdb.query(q(), consistency="eventual")
    assert first.extra["source"] == "primary" and second.extra["source"] == "cache-l1"
    assert [e.event_id for e in first] == [e.event_id for e in second]
    assert cdb.query(q(), consistency="strong").extra["source"] == "primary"
    assert cdb.count(q(), consistency="eventual") == 1 and cdb.count(q(), consistency="eventual") == 1
    stats = cdb.cache.stats()
    assert stats["l1_hits"] == 2 and stats["hit_ratio"] == 0.5


def test_a_write_into_the_window_invalidates_at_once_others_stay_cached(cdb: AuditDatabase) -> None:
    cdb.insert(event(DAY + dt.timedelta(hours=1)))
    other = AuditQuery(principal_id="dr.grey", since=DAY + dt.timedelta(days=5), until=DAY + dt.timedelta(days=6))
    assert len(cdb.query(q(), consistency="eventual")) == 1
    assert len(cdb.query(other, consistency="eventual")) == 0
    cdb.insert(event(DAY + dt.timedelta(hours=2)))  # same day as q(), not as other
    after = cdb.query(q(), consistency="eventual")
    assert after.extra["source"] == "primary" and len(after) == 2
    assert cdb.query(other, consistency="eventual").extra["source"] == "cache-l1"
    # a late event for the cached window, written in a transaction and as a batch, invalidates too
    with cdb.transaction() as tx:
        tx.insert(event(DAY + dt.timedelta(hours=3)))
    assert len(cdb.query(q(), consistency="eventual")) == 3
    cdb.insert_many([event(DAY + dt.timedelta(hours=4)), event(DAY + dt.timedelta(hours=5))])
    assert cdb.count(q(), consistency="eventual") == 5


def test_l2_is_shared_by_another_client_and_holds_sealed_messagepack(cdb: AuditDatabase,
                                                                         cached_settings: AuditSettings) -> None:
    cdb.insert(event(DAY + dt.timedelta(hours=1), details={"ward": "icu"}))
    page = cdb.query(q(), consistency="eventual")
    with AuditDatabase(cached_settings) as other:
        got = other.query(q(), consistency="eventual")
        assert got.extra["source"] == "cache-l2"
        assert got.events[0].model_dump() == page.events[0].model_dump()
        assert got.events[0].hash_matches
        assert other.query(q(), consistency="eventual").extra["source"] == "cache-l1"  # promoted
    key = cdb.cache.redis_key(cdb.cache.key("page", q().filters(), {"limit": 100, "cursor": None}))
    assert key is not None
    dbname = cached_settings.database_url.get_secret_value().rsplit("/", 1)[1]
    assert key.startswith(f"audit-db:{cdb.deployment_id}:{dbname}:")  # the deployment first, then the database
    raw = redis.Redis.from_url(cached_settings.redis_url.get_secret_value()).get(key)
    assert raw is not None
    # Sealed: nothing of the rows can be read from Redis, not even after decompression.
    assert b"icu" not in raw and b"dr.grey" not in raw and b"patient" not in raw
    with pytest.raises(zlib.error):
        zlib.decompress(raw)
    # Inside, with the key: a marker byte, then MessagePack (no pickle), LZ4-compressed (marker 1) after its size
    # when that is smaller: [format, scopes, limits, page].
    plaintext, _, _ = CacheSeal(cached_settings.cache.key_bytes).unseal(key, raw)  # type: ignore[arg-type]
    body = plaintext[1:]
    if plaintext[0] == 1:
        body = pyarrow.decompress(body[4:], decompressed_size=int.from_bytes(body[:4], "big"), codec="lz4_raw",
                                  asbytes=True)
    else:
        assert plaintext[0] == 0
    doc = msgspec.msgpack.decode(body)
    assert doc[0] == VALUE_FORMAT and doc[3]["rows"][0]["details"] == {"ward": "icu"}


def test_l2_entry_is_refused_after_a_write_from_another_client(cdb: AuditDatabase,
                                                               cached_settings: AuditSettings) -> None:
    cdb.insert(event(DAY + dt.timedelta(hours=1)))
    assert len(cdb.query(q(), consistency="eventual")) == 1  # now in L1 and L2
    with AuditDatabase(cached_settings) as writer:
        writer.insert(event(DAY + dt.timedelta(hours=2)))
    with AuditDatabase(cached_settings) as reader:  # cold L1: must not take the stale L2 entry
        page = reader.query(q(), consistency="eventual")
        assert page.extra["source"] == "primary" and len(page) == 2


def test_another_process_sees_a_write_through_its_warm_l1(cdb: AuditDatabase, cached_settings: AuditSettings) -> None:
    """Process B caches a result in its L1; this process writes into that window; B's next reads must show the
    new event (the invalidation travels over Redis pub/sub), without B ever being told directly."""
    cdb.insert(event(DAY + dt.timedelta(hours=1)))
    script = textwrap.dedent(f"""
        import datetime as dt, json, sys, time
        from audit_db_core import AuditDatabase, AuditQuery, AuditSettings
        DAY = dt.datetime(2026, 11, 10, tzinfo=dt.UTC)
        q = AuditQuery(principal_id="dr.grey", since=DAY, until=DAY + dt.timedelta(days=1))
        with AuditDatabase(AuditSettings(database_url={cached_settings.database_url.get_secret_value()!r},
                                         redis_url={cached_settings.redis_url.get_secret_value()!r})) as db:
            assert db.cache.wait_synced()
            db.cache.l1.clear()
            first = db.query(q, consistency="eventual")
            warm = db.query(q, consistency="eventual")
            print(json.dumps({{"ready": [len(first), warm.extra["source"]]}}), flush=True)
            sys.stdin.readline()  # the other process has written
            seen = []
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                page = db.query(q, consistency="eventual")
                seen.append([len(page), page.extra["source"]])
                if len(page) == 2:
                    break
                time.sleep(0.01)
            print(json.dumps({{"after": seen}}), flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        ready = json.loads(proc.stdout.readline())["ready"]
        assert ready == [1, "cache-l1"]  # B holds the result in L1
        cdb.insert(event(DAY + dt.timedelta(hours=2)))
        proc.stdin.write("go\n")
        proc.stdin.flush()
        after = json.loads(proc.stdout.readline())["after"]
        assert after[-1][0] == 2, after  # B saw the new event
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_unreachable_redis_is_bypassed_without_errors(fresh_database: str) -> None:
    settings = AuditSettings(database_url=fresh_database, redis_url=f"redis://127.0.0.1:{closed_port()}/0",
                             cache={"redis_timeout_seconds": 0.2})
    with AuditDatabase(settings) as db:
        db.insert(event(DAY + dt.timedelta(hours=1)))
        for days in range(1, 16):  # 15 different queries: each misses L1 and would ask Redis
            assert len(db.query(q(days=days), consistency="eventual")) == 1
            assert len(db.query(q(days=days), consistency="eventual")) == 1
        stats = db.cache.stats()
        assert stats["bypassed"] > 0 and stats["l2_hits"] == 0
        assert stats["l1_hits"] == 15  # L1 keeps serving (entries younger than ttl_seconds)
        assert db.breakers.get("redis").stats()["opened"] >= 1
        report = db.health()
        assert report.status == "degraded" and not report.components["redis"].healthy


def test_clear_removes_l2_entries_with_scan(cdb: AuditDatabase, cached_settings: AuditSettings) -> None:
    cdb.insert(event(DAY + dt.timedelta(hours=1)))
    for days in (1, 2, 3):
        cdb.query(q(days=days), consistency="eventual")
    assert cdb.cache.clear() == 3
    with AuditDatabase(cached_settings) as other:
        assert other.query(q(), consistency="eventual").extra["source"] == "primary"


def test_disabled_cache_always_reads_the_database(fresh_database: str) -> None:
    with AuditDatabase(AuditSettings(database_url=fresh_database, cache={"enabled": False})) as db:
        db.insert(event(DAY))
        assert {db.query(q(), consistency="eventual").extra["source"] for _ in range(3)} == {"primary"}


def test_breaker_states_are_published_for_other_processes(cdb: AuditDatabase, cached_settings: AuditSettings) -> None:
    b = cdb.breakers.get("partitions")
    for _ in range(b.settings.failure_threshold):
        b.record_failure(ConnectionError("refused"))
    with AuditDatabase(cached_settings) as monitor:
        deadline = time.monotonic() + 10
        fleet: list = []
        while time.monotonic() < deadline:
            fleet = [x for x in monitor.cache.fleet_breakers() or [] if x["breaker"] == "partitions"]
            if fleet:
                break
            time.sleep(0.1)
        assert fleet and fleet[0]["state"] == "open"
        b.reset()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(
                x["breaker"] == "partitions" for x in monitor.cache.fleet_breakers() or []):
            time.sleep(0.1)
        assert not any(x["breaker"] == "partitions" for x in monitor.cache.fleet_breakers() or [])


def test_the_fleet_hit_ratio_sums_every_process_sharing_the_redis(
        cdb: AuditDatabase, cached_settings: AuditSettings) -> None:
    """A monitor (the Dagster health job) sees the applications' hit ratio, not its own fresh cache's."""
    cdb.insert(event(DAY))
    for _ in range(4):
        cdb.query(q(), consistency="eventual")  # 1 miss, then 3 L1 hits
    with AuditDatabase(cached_settings) as monitor:
        assert monitor.cache.stats()["lookups"] == 0
        cdb.cache._publish_stats(force=True)  # the invalidation thread does this every 30 s
        deadline = time.monotonic() + 10
        fleet = monitor.cache.fleet_stats()
        while (fleet is None or fleet["lookups"] < 4) and time.monotonic() < deadline:
            time.sleep(0.1)
            fleet = monitor.cache.fleet_stats()
        assert fleet is not None and fleet["lookups"] >= 4 and fleet["hits"] >= 3
        assert fleet["hit_ratio"] == round(fleet["hits"] / fleet["lookups"], 4) > 0.5
        assert monitor.health().cache["fleet"]["lookups"] >= 4
        # Statistics written by someone without the key are refused, never summed.
        redis_client = monitor.cache._redis
        ns = monitor.cache._namespace()
        redis_client.set(f"{ns.stats}forged", b'{"at": 9e99, "lookups": 1000000, "hits": 1000000}', ex=60)
        assert monitor.cache.fleet_stats()["lookups"] < 1000000


def test_after_lsn_refuses_a_cached_result_older_than_the_write(fresh_database: str) -> None:
    """Without Redis, nothing tells process B's L1 about A's write; a reader holding A's commit position must still
    get it (and an ordinary eventual read may, by design, still see B's cached result until its TTL)."""
    settings = AuditSettings(database_url=fresh_database)  # L1 only: no invalidation channel between them
    with AuditDatabase(settings) as a, AuditDatabase(settings) as b:
        a.insert(event(DAY + dt.timedelta(hours=1)))
        assert len(b.query(q(), consistency="eventual")) == 1
        a.insert(event(DAY + dt.timedelta(hours=2)))
        token = a.last_write_lsn
        assert token is not None
        stale = b.query(q(), consistency="eventual")
        assert stale.extra["source"] == "cache-l1" and len(stale) == 1
        fresh = b.query(q(), consistency="eventual", after_lsn=token)
        assert fresh.extra["source"] == "primary" and len(fresh) == 2
        assert b.count(q(), consistency="eventual", after_lsn=token) == 2
