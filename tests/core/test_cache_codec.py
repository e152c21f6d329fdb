"""What the cache keeps in Redis, decoded: pages come back from L2 equal to the database's (types, times, hashes,
details, cursor), values of another format or that do not decode are misses, and the L1 LRU keeps its bounds
under threads."""

from __future__ import annotations

import datetime as dt
import json
import random
import threading
import time
import uuid
import zlib
from collections.abc import Iterator

import msgspec
import pyarrow
import pytest
import redis

from audit_db_core import AuditDatabase, AuditEvent, AuditQuery, AuditSettings
from audit_db_core.cache import CacheSeal, LRUCache
from audit_db_core.cache_codec import VERSION, decode_value, encode_value, page_from_json, page_to_json
from audit_db_core.cache_seal import Refused
from audit_db_core.events import DataClassification, EventStatus, StoredAuditEvent
from audit_db_core.query import QueryPage
from tests.conftest import TEST_CACHE_KEY
from tests.conftest import TestServers as Servers

UTC = dt.UTC
DAY = dt.datetime(2026, 11, 10, tzinfo=UTC)
DETAILS = [
    {"ward": "icu", "fields": ["allergies", "medication"]},
    {"dose_mg": 2.5, "ratio": 0.1, "tiny": 5e-324, "big": 10**30, "negative": -17, "nested": {"a": [1, None, True]}},
    {"note": "é ü 漢字 \u2028 \"quoted\" \\ back", "empty": {}, "list": []},
    {},
]


@pytest.fixture
def settings(fresh_database: str, servers: Servers) -> AuditSettings:
    if not servers.redis_url:
        pytest.skip("no Redis given for this server (AUDIT_TEST_REDIS_URL)")
    return AuditSettings(database_url=fresh_database, redis_url=servers.redis_url, cache={"key": TEST_CACHE_KEY})


@pytest.fixture
def client(settings: AuditSettings) -> Iterator[redis.Redis]:
    assert settings.redis_url is not None
    r = redis.Redis.from_url(settings.redis_url.get_secret_value())
    try:
        yield r
    finally:
        r.close()


def q(limit: int = 100, cursor: str | None = None) -> AuditQuery:
    return AuditQuery(principal_id="dr.grey", since=DAY, until=DAY + dt.timedelta(days=2), limit=limit, cursor=cursor)


def events(n: int, details: list[dict] = DETAILS) -> list[AuditEvent]:
    return [AuditEvent(action="patient.record.read", status=("success", "failure", "attempt")[i % 3],
                       principal_id="dr.grey", event_time=DAY + dt.timedelta(minutes=7 * i, microseconds=i),
                       data_classification=("PHI", "INTERNAL", "PUBLIC", "CONFIDENTIAL")[i % 4],
                       organization_id="org-1" if i % 2 else None, target_resource_type="Patient",
                       target_resource_id=f"p-{i}", outcome_description=None if i % 3 else "ok",
                       correlation_id=f"c-{i}", session_id="s-1", source="ehr", processing_latency_ms=i or None,
                       details=details[i % len(details)]) for i in range(n)]


def redis_key(db: AuditDatabase, query: AuditQuery) -> str:
    key = db.cache.redis_key(db.cache.key("page", query.filters(), {"limit": query.limit, "cursor": query.cursor}))
    assert key is not None
    return key


def assert_same_page(got: QueryPage, want: QueryPage) -> None:
    assert got.next_cursor == want.next_cursor and got.limit == want.limit
    assert [e.model_dump() for e in got.events] == [e.model_dump() for e in want.events]
    for mine, theirs in zip(got.events, want.events, strict=True):
        assert type(mine) is StoredAuditEvent
        assert mine.hash_matches and mine.content_hash == theirs.content_hash
        assert mine.stored_content_hash == theirs.stored_content_hash and isinstance(mine.stored_content_hash, bytes)
        assert mine.event_time.tzinfo is UTC and mine.event_time == theirs.event_time
        assert mine.ingested_at is not None and mine.ingested_at.utcoffset() is not None
        assert mine.ingested_at == theirs.ingested_at
        assert type(mine.status) is EventStatus and type(mine.data_classification) is DataClassification
        assert type(mine.event_id) is uuid.UUID and mine.details == theirs.details
        assert mine.canonical_bytes() == theirs.canonical_bytes()


def plaintext_of(settings: AuditSettings, client: redis.Redis, key: str) -> bytes:
    blob = client.get(key)
    assert blob is not None
    return CacheSeal(settings.cache.key_bytes).unseal(key, blob)[0]  # type: ignore[arg-type]


def envelope_of(plaintext: bytes) -> list:
    """The envelope ``[version, scopes, limits, payload]`` of a plaintext, read as the format describes it (marker
    byte: bit 0 LZ4 after a 4-byte big-endian size, bit 1 JSON instead of MessagePack), not through cache_codec."""
    marker, body = plaintext[0], plaintext[1:]
    if marker & 1:
        size = int.from_bytes(body[:4], "big")
        body = pyarrow.decompress(body[4:], decompressed_size=size, codec="lz4_raw", asbytes=True)
    return json.loads(body) if marker & 2 else msgspec.msgpack.decode(body)


# Details with an integer beyond 64 bits (DETAILS[1]) make a page JSON: MessagePack cannot hold that integer.
@pytest.mark.parametrize("details, marker", [(DETAILS[:1] + DETAILS[2:], 1), (DETAILS, 3)],
                         ids=["messagepack", "json-for-a-huge-integer"])
def test_an_l2_page_is_the_database_page(settings: AuditSettings, client: redis.Redis, details: list[dict],
                                         marker: int) -> None:
    with AuditDatabase(settings) as db:
        db.insert_many(events(120, details))
        first = db.query(q(), consistency="eventual")
        assert first.extra["source"] == "primary" and len(first) == 100 and first.next_cursor is not None
        second = db.query(q(cursor=first.next_cursor), consistency="eventual")
        truth = [db.query(q(), consistency="strong"), db.query(q(cursor=first.next_cursor), consistency="strong")]
    with AuditDatabase(settings) as other:  # a cold L1: both pages come from Redis
        pages = [other.query(q(), consistency="eventual"), other.query(q(cursor=first.next_cursor),
                                                                       consistency="eventual")]
        assert [p.extra["source"] for p in pages] == ["cache-l2", "cache-l2"]
        plaintext = plaintext_of(settings, client, redis_key(other, q()))
        assert plaintext[0] == marker  # compressed (LZ4), in the encoding expected
        envelope = envelope_of(plaintext)
        assert envelope[0] == VERSION and len(envelope[3]["rows"]) == 100
        for got, want in zip(pages, truth, strict=True):
            assert_same_page(got, want)
        assert len(second) == 20 and pages[1].next_cursor is None
        # The cursor of a page from L2 leads on as the database's does.
        after = other.query(q(cursor=pages[0].next_cursor), consistency="strong")
        assert [e.model_dump() for e in after.events] == [e.model_dump() for e in truth[1].events]
        assert other.cache.stats()["l2_rejected"] == 0


def test_the_page_codec_round_trips_as_bytes_and_as_builtins(settings: AuditSettings) -> None:
    with AuditDatabase(settings) as db:
        db.insert_many(events(8))
        page = db.query(q(), consistency="strong")
    page.extra["note"] = "kept"
    scope = ("d2026-11-10", "d2026-11-11")
    plaintext, _ = encode_value(scope, [1, 2], page_to_json.document(page))
    limits, doc = decode_value(plaintext, 1 << 20, scope, page_from_json.payload_type)
    assert limits == (1, 2)
    from_bytes = page_from_json.from_typed(doc)
    from_builtins = page_from_json(json.loads(json.dumps(page_to_json(page))))  # any ResultCache's JSON
    for got in (from_bytes, from_builtins):
        assert_same_page(got, page)
        assert got.extra == {"source": "primary", "note": "kept"}
    # Decoded events share what they can; changing a copy of one changes nothing in the others.
    first, second = from_bytes.events[:2]
    changed = first.model_copy(update={"action": "patient.record.update"})
    assert changed.action == "patient.record.update" and changed.hash_matches is False
    assert first.action == second.action == "patient.record.read" and first.hash_matches and second.hash_matches
    everything = set(StoredAuditEvent.model_fields)
    assert first.model_fields_set == second.model_fields_set == everything
    assert first.model_dump(exclude_unset=True) == first.model_dump()


def test_counts_and_small_values_are_stored_uncompressed_and_read_back(settings: AuditSettings,
                                                                       client: redis.Redis) -> None:
    with AuditDatabase(settings) as db:
        db.insert_many(events(3))
        assert db.count(q(), consistency="eventual") == 3
        key = db.cache.redis_key(db.cache.key("count", q().filters(), {}))
        assert key is not None
    plaintext = plaintext_of(settings, client, key)
    assert plaintext[0] == 0  # small: plain MessagePack, not worth compressing
    assert envelope_of(plaintext) == [VERSION, ["d2026-11-10", "d2026-11-11"], envelope_of(plaintext)[2], 3]
    with AuditDatabase(settings) as other:
        assert other.count(q(), consistency="eventual") == 3
        assert other.cache.stats()["l2_hits"] == 1


def seal_at(settings: AuditSettings, key: str, plaintext: bytes) -> bytes:
    return CacheSeal(settings.cache.key_bytes).seal(  # type: ignore[arg-type]
        key, plaintext, created_ms=int(time.time() * 1000), ttl_ms=60_000)


def cold_read(settings: AuditSettings) -> tuple[str, dict]:
    with AuditDatabase(settings) as db:
        page = db.query(q(), consistency="eventual")
        assert len(page) == 2
        return page.extra["source"], db.cache.stats()


def test_values_of_earlier_formats_are_plain_misses(settings: AuditSettings, client: redis.Redis) -> None:
    """Formats 2 (stdlib JSON, hex hashes, no version) and 3 (msgspec JSON in zlib), sealed with the right key and
    put where this format is looked up: not used, not an error, and not taken for an attack."""
    with AuditDatabase(settings) as db:
        db.insert_many(events(2, DETAILS[:1]))
        page = db.query(q(), consistency="eventual")
        key = redis_key(db, q())
        scope = ["d2026-11-10", "d2026-11-11"]
    rows = [{**e.canonical_dict(), "content_hash": e.content_hash.hex(), "ingested_at": None} for e in page.events]
    format_2 = zlib.compress(json.dumps({"s": scope, "l": [2**62, 2**62], "p": {"rows": rows, "next": None,
                                                                                 "limit": 100}}).encode())
    format_3 = msgspec.json.encode({"v": 3, "s": scope, "l": [2**62, 2**62], "p": page_to_json(page)})
    # Another version's value, with the marker and envelope of this one: a plain miss too.
    other_version = b"\x00" + msgspec.msgpack.encode([VERSION + 1, scope, [2**62, 2**62], page_to_json(page)])
    for old in (format_2, format_3, zlib.compress(format_3, 1), other_version):
        client.set(key, seal_at(settings, key, old), px=60_000)
        source, stats = cold_read(settings)
        assert source == "primary" and stats["l2_hits"] == 0 and stats["l2_rejected"] == 0, old[:12]


@pytest.mark.parametrize("payload", [
    {"rows": [{"event_id": "not a uuid"}], "next": None, "limit": 100},
    {"rows": "none", "next": None, "limit": 100},
    [1, 2, 3],
], ids=["bad-row", "bad-rows", "not-a-page"])
def test_an_authentic_value_that_does_not_decode_is_a_counted_miss(settings: AuditSettings, client: redis.Redis,
                                                                    payload: object) -> None:
    with AuditDatabase(settings) as db:
        db.insert_many(events(2))
        db.query(q(), consistency="eventual")
        key = redis_key(db, q())
    plaintext, _ = encode_value(["d2026-11-10", "d2026-11-11"], [2**62, 2**62], payload)
    client.set(key, seal_at(settings, key, plaintext), px=60_000)
    source, stats = cold_read(settings)
    assert source == "primary" and stats["l2_hits"] == 0 and stats["l2_rejected"] == 1


def test_an_envelope_for_another_scope_or_undecodable_is_refused() -> None:
    plaintext, _ = encode_value(["d1", "d2"], [5, 6], 7)
    assert decode_value(plaintext, 1 << 20, ("d1", "d2")) == ((5, 6), 7)
    for scope in (("d1",), ("d2", "d1"), ("d1", "d3")):
        with pytest.raises(Refused, match="scope"):
            decode_value(plaintext, 1 << 20, scope)
    lz4_garbage = b"\x01" + (100).to_bytes(4, "big") + b"garbage, not an LZ4 block"
    for garbage in (b"", b"\x00\xc1", b"\x00" + msgspec.msgpack.encode([VERSION, "d1", [1], 1]),
                    b"\x02{not json", b"\x09" + plaintext[1:], b"\x01\x00", lz4_garbage):
        with pytest.raises(Refused) as refused:
            decode_value(garbage, 1 << 20, ("d1",))
        assert refused.value.suspicious, garbage
    big, size = encode_value(["d1"], [1], "x" * 5000)
    assert big[:1] == b"\x01" and len(big) < size  # compressed (LZ4) above COMPRESS_MIN_BYTES
    assert decode_value(big, size, ("d1",)) == ((1,), "x" * 5000)
    with pytest.raises(Refused, match="AUDIT_CACHE__MAX_VALUE_BYTES"):
        decode_value(big, size - 1, ("d1",))  # refused by its stated size, before any decompression
    understated = big[:1] + (1000).to_bytes(4, "big") + big[5:]  # a size that lies: decompression stops there
    with pytest.raises(Refused, match="not LZ4 of the stated size"):
        decode_value(understated, 1 << 20, ("d1",))
    huge, _ = encode_value(["d1"], [1], {"n": 10**30})  # beyond MessagePack: JSON (not worth compressing)
    assert huge[:1] == b"\x02" and decode_value(huge, 1 << 20, ("d1",)) == ((1,), {"n": 10**30})


# -- the L1 LRU under threads ---------------------------------------------------------------------------------------


def test_the_lru_keeps_its_bounds_and_byte_count_under_threads() -> None:
    lru = LRUCache(max_entries=50, max_bytes=3000)
    errors: list[BaseException] = []
    stop = time.monotonic() + 1.0

    def work(seed: int) -> None:
        rng = random.Random(seed)
        try:
            while time.monotonic() < stop:
                k = f"k{rng.randrange(200)}"
                op = rng.random()
                if op < 0.5:
                    value = lru.get(k)
                    assert value is None or value == k
                elif op < 0.9:
                    lru.put(k, k, size=rng.randrange(1, 200), ttl=rng.choice((0.0005, 60)))
                else:
                    lru.pop(k)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert set(lru._data) == set(lru._records)  # a size record per entry, and none for a key not held
    assert len(lru) <= 50 and lru.bytes == sum(size for _, size, _ in lru._records.values()) <= 3000
    assert lru.evictions > 0 and lru.expirations > 0


def test_the_lru_moves_a_hit_to_the_recent_end_without_a_lock() -> None:
    lru = LRUCache(max_entries=2, max_bytes=100)
    lru.put("a", 1, size=1, ttl=60)
    lru.put("b", 2, size=1, ttl=60)
    with lru._lock:  # a hit never waits for a writer
        assert lru.get("a") == 1 and lru.get("b") == 2 and lru.get("missing") is None
    lru.put("c", 3, size=1, ttl=60)  # evicts a (b was used last)
    assert lru.get("a") is None and lru.get("b") == 2 and lru.get("c") == 3


def test_an_entry_put_again_keeps_its_new_expiry_and_evicted_ones_leave_no_trace() -> None:
    now = [0.0]
    lru = LRUCache(max_entries=3, max_bytes=1000, clock=lambda: now[0])
    lru.put("k", "old", size=10, ttl=5)
    now[0] = 1.0
    lru.put("k", "new", size=20, ttl=10)  # the first put's expiry no longer applies to k
    now[0] = 5.5
    assert lru.get("k") == "new" and lru.expirations == 0 and lru.bytes == 20
    for i in range(3):  # evict k, then put it again: the evicted entry's expiry does not remove the new one
        lru.put(f"x{i}", i, size=1, ttl=1)
    assert lru.get("k") is None and lru.evictions == 1
    lru.put("k", "again", size=30, ttl=100)
    now[0] = 11.5  # past the second put's expiry and the x's
    assert lru.get("k") == "again" and len(lru) == 1 and lru.bytes == 30 and lru.expirations == 2
    now[0] = 106.0
    assert lru.get("k") is None and len(lru) == 0 and lru.bytes == 0 and lru.expirations == 3


def test_the_lru_still_expires_entries_after_its_buckets_are_rebuilt() -> None:
    now = [0.0]
    lru = LRUCache(max_entries=10, max_bytes=10_000, clock=lambda: now[0])
    for i in range(5_000):  # far more puts than entries: the buckets fill with records of evicted entries
        now[0] = i * 0.001
        lru.put(f"k{i % 40}", i, size=1, ttl=60)
    assert len(lru) == 10 and set(lru._records) == set(lru._data)
    assert lru.get("k39") == 4999 and lru.get("k0") is None
    now[0] = 64.985  # the oldest live entry (k30) was put at 4.990 s
    assert lru.get("k39") == 4999 and lru.expirations == 0
    now[0] = 65.0  # every entry's TTL is over
    assert lru.get("k39") is None and len(lru) == 0 and lru.bytes == 0 and lru.expirations == 10
