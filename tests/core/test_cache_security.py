"""The L2 cache against a Redis that others can write to, on the real Redis and PostgreSQL of the suite.

Whatever a neighbour writes into Redis — a value sealed with another key, garbage, a genuine value moved to another
key, a compression bomb, a genuine value written back after its TTL, a forged generation counter or message, forged
breaker states — is a miss: counted, logged without the value, never raised and never returned. Two servers whose databases
have the same name, sharing one Redis, never see each other's rows. Without a key, L2 stays off.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import secrets
import time
import uuid
from collections.abc import Iterator

import psycopg
import pyarrow
import pytest
import redis
from psycopg import sql

from audit_db_core import AuditDatabase, AuditEvent, AuditQuery, AuditSettings, ConfigurationError
from audit_db_core.cache import CacheSeal, QueryCache
from audit_db_core.cache_codec import encode_value
from audit_db_core.errors import MigrationError
from audit_db_core.migrate import SCHEMA_VERSION, migrate
from tests.conftest import TEST_CACHE_KEY, dbname_of, with_dbname
from tests.conftest import TestServers as Servers

UTC = dt.UTC
DAY = dt.datetime(2026, 11, 10, tzinfo=UTC)
OTHER_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"


@pytest.fixture
def redis_url(servers: Servers) -> str:
    if not servers.redis_url:
        pytest.skip("no Redis given for this server (AUDIT_TEST_REDIS_URL)")
    return servers.redis_url


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    """The neighbour: a plain client of the same Redis, without the cache key."""
    r = redis.Redis.from_url(redis_url)
    try:
        yield r
    finally:
        r.close()


def make_settings(database_url: str, redis_url: str, **cache: object) -> AuditSettings:
    return AuditSettings(database_url=database_url, redis_url=redis_url, cache={"key": TEST_CACHE_KEY, **cache})


def event(when: dt.datetime, principal: str = "dr.grey", **kw: object) -> AuditEvent:
    return AuditEvent(action="patient.record.read", status="success", principal_id=principal, event_time=when, **kw)


def q(principal: str = "dr.grey", days: int = 1) -> AuditQuery:
    return AuditQuery(principal_id=principal, since=DAY, until=DAY + dt.timedelta(days=days))


def page_key(db: AuditDatabase, query: AuditQuery) -> str:
    key = db.cache.redis_key(db.cache.key("page", query.filters(), {"limit": 100, "cursor": None}))
    assert key is not None, "the deployment identity is known once L2 was used"
    return key


def base(db: AuditDatabase) -> str:
    """Where this deployment's cache lives in Redis: ``{prefix}:{deployment_id}:{database}:{schema_version}``."""
    database = dbname_of(db.settings.database_url.get_secret_value())
    return f"{db.settings.cache.key_prefix}:{db.deployment_id}:{database}:{SCHEMA_VERSION}"


def injected_page(genuine: AuditDatabase, query: AuditQuery) -> bytes:
    """The plaintext of a page holding one made-up event, in the cache's own format (what a forger wants served)."""
    from audit_db_core.database import _page_to_json

    page = genuine.query(query, consistency="strong")
    fake = page.events[0].model_copy(update={"event_id": uuid.uuid4(), "principal_id": "dr.evil"})
    page.events[:] = [fake]
    return encode_value(["d2026-11-10"], [2**62], _page_to_json.document(page))[0]


def cold_read(settings: AuditSettings, query: AuditQuery) -> tuple[list[str], str, dict]:
    """A fresh process's view: principals of the rows served, where from, and its cache stats."""
    with AuditDatabase(settings) as db:
        page = db.query(query, consistency="eventual")
        return [e.principal_id for e in page.events], page.extra["source"], db.cache.stats()


@pytest.fixture
def cached(fresh_database: str, redis_url: str) -> Iterator[AuditDatabase]:
    with AuditDatabase(make_settings(fresh_database, redis_url)) as db:
        assert db.cache.wait_synced()
        db.insert(event(DAY + dt.timedelta(hours=1)))
        assert db.query(q(), consistency="eventual").extra["source"] == "primary"  # now in L1 and L2
        yield db


def refusals(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "audit_db_core.cache" and "refused" in r.getMessage()]


# -- forged, garbage, moved, bomb, replay: each a counted miss --------------------------------------------------------


def test_a_value_sealed_with_another_key_is_refused(cached: AuditDatabase, client: redis.Redis,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    key = page_key(cached, q())
    forged = CacheSeal(secrets.token_bytes(32)).seal(key, injected_page(cached, q()),
                                                     created_ms=int(time.time() * 1000), ttl_ms=60_000)
    client.set(key, forged, px=60_000)
    with caplog.at_level(logging.WARNING, logger="audit_db_core.cache"):
        principals, source, stats = cold_read(cached.settings, q())
    assert principals == ["dr.grey"] and source == "primary"
    assert stats["l2_rejected"] == 1 and stats["l2_hits"] == 0
    (record,) = refusals(caplog)
    assert "failed authentication" in record.getMessage()
    text = record.getMessage()
    assert TEST_CACHE_KEY not in text and key not in text and "dr.evil" not in text


@pytest.mark.parametrize("garbage", [b"garbage", b"\x02" + bytes(60), secrets.token_bytes(4096)],
                         ids=["short", "zero-header", "random"])
def test_garbage_is_refused(cached: AuditDatabase, client: redis.Redis, garbage: bytes) -> None:
    client.set(page_key(cached, q()), garbage, px=60_000)
    principals, source, stats = cold_read(cached.settings, q())
    assert principals == ["dr.grey"] and source == "primary"
    assert stats["l2_rejected"] == 1


def test_a_genuine_value_moved_to_another_key_is_refused(cached: AuditDatabase, client: redis.Redis) -> None:
    other = q(principal="dr.house")  # nothing of dr.house is stored
    assert cached.query(other, consistency="eventual").events == []
    genuine = client.get(page_key(cached, q()))
    assert genuine is not None
    client.set(page_key(cached, other), genuine, px=60_000)  # dr.grey's page where dr.house's is looked up
    principals, source, stats = cold_read(cached.settings, other)
    assert principals == [] and source == "primary"
    assert stats["l2_rejected"] == 1


def test_a_compression_bomb_is_refused_without_decompressing_it(fresh_database: str, redis_url: str,
                                                                client: redis.Redis,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """Sealed with the right key (a holder of the key gone rogue, or a bug): the decompression limit still holds."""
    settings = make_settings(fresh_database, redis_url, max_value_bytes=64 * 1024)
    with AuditDatabase(settings) as db:
        db.insert(event(DAY + dt.timedelta(hours=1)))
        db.query(q(), consistency="eventual")
        key = page_key(db, q())
        size = 64 * 1024 * 1024  # 64 MiB of MessagePack (one long string) in ~260 KB of LZ4
        body = b"\xdb" + (size - 5).to_bytes(4, "big") + b" " * (size - 5)
        bomb = b"\x01" + size.to_bytes(4, "big") + pyarrow.compress(body, codec="lz4_raw", asbytes=True)
        del body
        assert len(bomb) < 400_000
        sealed = CacheSeal(settings.cache.key_bytes).seal(  # type: ignore[arg-type]
            key, bomb, created_ms=int(time.time() * 1000), ttl_ms=60_000)
        client.set(key, sealed, px=60_000)
    with caplog.at_level(logging.WARNING, logger="audit_db_core.cache"):
        principals, source, stats = cold_read(settings, q())
    assert principals == ["dr.grey"] and source == "primary" and stats["l2_rejected"] == 1
    assert "AUDIT_CACHE__MAX_VALUE_BYTES" in refusals(caplog)[0].getMessage()


def test_a_genuine_value_written_back_after_its_ttl_is_refused(fresh_database: str, redis_url: str,
                                                               client: redis.Redis) -> None:
    ttl = 2.0
    settings = make_settings(fresh_database, redis_url, ttl_seconds=ttl, closed_window_ttl_seconds=ttl)
    with AuditDatabase(settings) as db:
        db.insert(event(DAY + dt.timedelta(hours=1)))
        assert db.cache.wait_synced()
        written = time.time()
        db.query(q(), consistency="eventual")
        key = page_key(db, q())
        genuine = client.get(key)
        assert genuine is not None
        db.insert(event(DAY + dt.timedelta(hours=2)))  # the value is now stale
    time.sleep(max(written + ttl + 1.3 - time.time(), 0))  # its TTL and the clock tolerance (1 s) have passed
    assert client.get(key) is None  # Redis dropped it
    client.delete(f"{base(db)}:gen")  # the neighbour also removes the counters (see the residual risk)
    client.set(key, genuine)  # and writes the old value back, without expiry
    principals, source, stats = cold_read(settings, q())
    assert principals == ["dr.grey", "dr.grey"] and source == "primary"
    assert stats["l2_rejected"] == 1


def test_refusals_are_logged_once_then_rate_limited(cached: AuditDatabase, client: redis.Redis,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    with AuditDatabase(cached.settings) as reader, caplog.at_level(logging.WARNING, logger="audit_db_core.cache"):
        for days in range(1, 6):
            client.set(page_key(reader, q(days=days)), b"garbage", px=60_000)
            assert reader.query(q(days=days), consistency="eventual").extra["source"] == "primary"
        assert reader.cache.stats()["l2_rejected"] == 5
    assert len(refusals(caplog)) == 1


# -- generation counters, messages and breaker states ---------------------------------------------------------------


def test_a_forged_generation_counter_cannot_produce_a_stale_hit(cached: AuditDatabase, client: redis.Redis) -> None:
    """Forged high: unauthenticated, it would be taken as every process's ``seen`` and cached results would claim
    to reflect writes that come later. Forged low: it would hide a genuine write. Both fail the read closed."""
    settings = cached.settings
    gen_key = f"{base(cached)}:gen"
    client.hset(gen_key, "d2026-11-10", f"{2**60}:{'0' * 32}")
    principals, source, stats = cold_read(settings, q())  # a reader caches a result after seeing the forgery
    assert principals == ["dr.grey"] and source == "primary" and stats["l2_rejected"] >= 1
    key = page_key(cached, q())
    stale = client.get(key)  # what that reader cached: true now, stale after the next write
    assert stale is not None
    with AuditDatabase(settings) as writer:
        writer.insert(event(DAY + dt.timedelta(hours=2)))  # a genuine write: repairs the forged counter
    genuine = client.hget(gen_key, "d2026-11-10")
    assert genuine is not None and int(genuine.split(b":")[0]) < 2**60
    principals, source, _ = cold_read(settings, q())
    assert principals == ["dr.grey", "dr.grey"], source  # not a stale hit
    # The stale page written back (within its TTL) and its counter forged low, so that the page would pass for
    # fresh: the counter fails its tag, the read fails closed.
    client.set(key, stale, px=60_000)
    client.hset(gen_key, "d2026-11-10", "1:" + "f" * 32)
    principals, source, stats = cold_read(settings, q())
    assert principals == ["dr.grey", "dr.grey"] and source == "primary"
    assert stats["l2_hits"] == 0 and stats["l2_rejected"] >= 1


def test_a_forged_invalidation_message_is_dropped(cached: AuditDatabase, client: redis.Redis) -> None:
    channel = f"{base(cached)}:invalidate"
    before = cached.cache.generations(("d2026-11-10", "*"))
    messages = cached.cache.stats()["messages"]  # its own invalidations come back to it too
    for forged in (json.dumps({"d2026-11-10": 2**60, "*": 2**60}), "0" * 32 + "." + json.dumps({"*": 2**60})):
        client.publish(channel, forged)
    deadline = time.monotonic() + 5
    while cached.cache.stats()["l2_rejected"] < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cached.cache.stats()["l2_rejected"] == 2 and cached.cache.stats()["messages"] == messages
    assert cached.cache.generations(("d2026-11-10", "*")) == before
    cached.insert(event(DAY + dt.timedelta(hours=2)))
    assert len(cached.query(q(), consistency="eventual")) == 2


def test_forged_breaker_states_are_left_out(cached: AuditDatabase, client: redis.Redis) -> None:
    forged_key = f"audit-db:{cached.deployment_id}:breaker:evil:1:0"
    states = {"primary": {"breaker": "primary", "state": "open", "host": "evil", "pid": 1, "since": time.time()}}
    client.set(forged_key, json.dumps(states), ex=60)
    client.set(forged_key + "1", "0" * 32 + "." + json.dumps({"at": time.time(), "states": states}), ex=60)
    assert cached.cache.fleet_breakers() == []
    assert cached.cache.stats()["l2_rejected"] == 2


# -- one Redis, two servers, same database name --------------------------------------------------------------------


def _system_id(url: str) -> int:
    with psycopg.connect(url, autocommit=True, connect_timeout=3) as conn:
        row = conn.execute("SELECT system_identifier FROM pg_control_system()").fetchone()
    assert row is not None
    return int(row[0])


@pytest.fixture
def twin_databases(servers: Servers) -> Iterator[tuple[str, str]]:
    """A database of the same name on the suite's server and on the machine's PostgreSQL (127.0.0.1:5432)."""
    try:
        other_id = _system_id(OTHER_SERVER)
    except psycopg.Error as exc:
        pytest.skip(f"no second PostgreSQL answers on 127.0.0.1:5432 ({type(exc).__name__}): the test needs two "
                    "servers")
    if other_id == _system_id(servers.database_url):
        pytest.skip("the suite's server is the one on 127.0.0.1:5432: the test needs two servers")
    name = f"audit_twin_{uuid.uuid4().hex[:10]}"
    urls = [with_dbname(servers.database_url, name), with_dbname(OTHER_SERVER, name)]
    created: list[str] = []
    try:
        for server in (servers.database_url, OTHER_SERVER):
            with psycopg.connect(server, autocommit=True, connect_timeout=10) as conn:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            created.append(server)
        for url in urls:
            migrate(url)
        yield urls[0], urls[1]
    finally:
        for server in created:
            with psycopg.connect(server, autocommit=True, connect_timeout=10) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def test_two_servers_with_the_same_database_name_never_share_rows(twin_databases: tuple[str, str],
                                                                  redis_url: str) -> None:
    url_a, url_b = twin_databases
    sa, sb = make_settings(url_a, redis_url), make_settings(url_b, redis_url)
    with AuditDatabase(sa) as a, AuditDatabase(sb) as b:
        a.insert(event(DAY + dt.timedelta(hours=1), details={"server": "a"}))
        b.insert(event(DAY + dt.timedelta(hours=2), details={"server": "b"}))
        b.insert(event(DAY + dt.timedelta(hours=3), details={"server": "b"}))
        assert a.deployment_id != b.deployment_id
        first_a = a.query(q(), consistency="eventual")
        assert first_a.extra["source"] == "primary"  # and into L2, under a's identity
        first_b = b.query(q(), consistency="eventual")
        assert first_b.extra["source"] == "primary"  # not a's page: the same database name, another identity
        assert [e.details["server"] for e in first_b.events] == ["b", "b"]
        assert page_key(a, q()) != page_key(b, q())
    for settings, server, n in ((sa, "a", 1), (sb, "b", 2)):
        with AuditDatabase(settings) as cold:
            page = cold.query(q(), consistency="eventual")
            assert page.extra["source"] == "cache-l2"  # each one's own entry
            assert [e.details["server"] for e in page.events] == [server] * n
            assert cold.cache.stats()["l2_rejected"] == 0


# -- no key, no identity yet ------------------------------------------------------------------------------------------


def test_without_a_key_l2_is_off_and_says_so_once(fresh_database: str, redis_url: str, client: redis.Redis,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    prefix = f"nokey-{uuid.uuid4().hex[:8]}"
    settings = AuditSettings(database_url=fresh_database, redis_url=redis_url, cache={"key": "", "key_prefix": prefix})
    assert settings.cache.key is None
    with caplog.at_level(logging.INFO, logger="audit_db_core"):
        with AuditDatabase(settings) as db:
            db.insert(event(DAY + dt.timedelta(hours=1)))
            assert [db.query(q(), consistency="eventual").extra["source"] for _ in range(2)] == ["primary", "cache-l1"]
            stats = db.cache.stats()
    lines = [r for r in caplog.records if "L2 cache off" in r.getMessage()]
    assert len(lines) == 1 and "AUDIT_CACHE__KEY is not set" in lines[0].getMessage()
    assert lines[0].levelno == logging.WARNING
    assert stats["l2_configured"] is False and stats["invalidation_channel"] == "not configured"
    assert stats["l2_sets"] == 0 and list(client.scan_iter(match=f"{prefix}:*")) == []


def test_l2_is_bypassed_until_the_identity_is_known(fresh_database: str, redis_url: str, client: redis.Redis) -> None:
    prefix = f"ident-{uuid.uuid4().hex[:8]}"
    settings = make_settings(fresh_database, redis_url, key_prefix=prefix)
    answers: list[object] = [MigrationError("not migrated yet"), uuid.uuid4()]

    def identity() -> uuid.UUID:
        answer = answers[0] if len(answers) == 1 else answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer  # type: ignore[return-value]

    cache = QueryCache(settings, identity=identity).open()
    try:
        key, scope = cache.key("count", {"x": 1}, {}), ("*",)
        cache.set(key, 7, scope=scope, limits=(0,), closed=True)  # identity unknown: L1 only, no error
        assert cache.deployment_id is None and cache.stats()["l2_sets"] == 0
        assert list(client.scan_iter(match=f"{prefix}:*")) == []
        time.sleep(1.1)  # a failed read of the identity is retried after a second
        cache.set(key, 7, scope=scope, limits=(0,), closed=True)
        assert cache.deployment_id == answers[0] and cache.stats()["l2_sets"] == 1
        redis_key = cache.redis_key(key)
        assert redis_key is not None and redis_key in [k.decode() for k in client.scan_iter(match=f"{prefix}:*")]
        head, digest = redis_key.rsplit(":", 1)
        assert head == f"{prefix}:{answers[0]}:{dbname_of(fresh_database)}:0:count" and len(digest) == 64
        assert digest not in key  # keyed: not the plain SHA-256 digests of the query
    finally:
        cache.close()


# -- the key setting ------------------------------------------------------------------------------------------------


def test_the_key_setting_takes_32_bytes_as_hex_or_base64(fresh_database: str) -> None:
    import base64

    raw = secrets.token_bytes(32)
    for given in (raw.hex(), base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode().rstrip("=")):
        assert AuditSettings(database_url=fresh_database, cache={"key": given}).cache.key_bytes == raw
    for bad, reason in (("0f" * 16, "32 bytes"), ("not a key at all!", "32 bytes"), ("zz" * 32, "32 bytes")):
        with pytest.raises(ConfigurationError) as err:
            AuditSettings(database_url=fresh_database, cache={"key": bad})
        assert "AUDIT_CACHE__KEY" in str(err.value) and reason in str(err.value) and bad not in str(err.value)
    shown = AuditSettings(database_url=fresh_database, cache={"key": raw.hex()})
    assert raw.hex() not in repr(shown) and raw.hex() not in str(shown.model_dump())
