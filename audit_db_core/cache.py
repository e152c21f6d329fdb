"""Two-tier query cache: L1 in process (LRU + TTL + byte bound), L2 in Redis (compressed JSON, never pickle).

Keys follow ``{prefix}:{database}:{schema_version}:{query_type}:{sha256(normalized query)}:{sha256(params)}``
(``prefix`` is ``AUDIT_CACHE__KEY_PREFIX``, ``audit-db`` by default; ``database`` the primary's database name, so
several audit databases can share one Redis without ever sharing an entry).

**Invalidation.** Audit rows are append-only, so a cached result stays true until a write lands in the time range
it covers. Time is cut into *scopes*: UTC days, UTC months, and ``*`` (everything). A write bumps the generation of
the day, the month and ``*`` of each event it stored, to the WAL position (LSN) of its commit; a query reads the
generations before it runs and records the WAL position its snapshot includes. A cached result is served only
while no scope it covers has moved past what its snapshot saw:

- in the process that wrote, at once (the generation moves before the write returns);
- in every process for L2 entries, at once (each L2 read checks the generations kept in Redis);
- in other processes' L1, as soon as the invalidation message published on Redis arrives (pub/sub; a reconnect
  re-reads every generation). While Redis is unreachable, L1 entries are served for at most ``ttl_seconds``.

Redis down or slow: its breaker opens and the cache runs on L1 alone; no caller ever sees a cache error.

Example::

    cache = QueryCache(settings)
    cache.open()
    key = cache.key("page", {"principal_id": "u1"}, {"limit": 10})
    hit = cache.get(key, scope)               # a CacheHit (value, tier) or None
    cache.set(key, value, scope=scope, as_of=lsn, seen=seen, encode=to_json)
    cache.stats()["hit_ratio"]
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import logging
import os
import socket
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from audit_db_core.breakers import BreakerRegistry, CircuitBreaker
from audit_db_core.config import AuditSettings
from audit_db_core.errors import CacheError, redact

logger = logging.getLogger("audit_db_core.cache")

ALL = "*"
#: Queries over more days than this are scoped by month; over more months than ``_MAX_MONTHS``, by ``*``.
_MAX_DAYS = 62
_MAX_MONTHS = 240
_FORMAT = 1

_BUMP = """
local changed = {}
for i = 1, #ARGV - 1, 2 do
  local current = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0')
  if current < tonumber(ARGV[i + 1]) then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
redis.call('PUBLISH', KEYS[2], ARGV[#ARGV])
return 1
"""


def _database_name(settings: AuditSettings) -> str:
    """The primary's database name: part of every key, so audit databases sharing one Redis never share entries."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        name = conninfo_to_dict(settings.database_url.get_secret_value()).get("dbname")
    except Exception:
        name = None
    return str(name or "default").replace(":", "_")


# -- scopes ----------------------------------------------------------------------------------------------------------


def _utc(ts: dt.datetime) -> dt.datetime:
    return ts.astimezone(dt.UTC)


def _day(day: dt.date) -> str:
    return "d" + day.isoformat()


def _month(day: dt.date) -> str:
    return "m" + day.isoformat()[:7]


def write_scopes(event_times: Iterable[dt.datetime]) -> set[str]:
    """The scopes a write of events at these times moves: each event's UTC day and month, and ``*``."""
    days = {(ts if ts.tzinfo is dt.UTC else _utc(ts)).date() for ts in event_times}
    out = {ALL}
    for day in days:
        out.add(_day(day))
        out.add(_month(day))
    return out


def range_scopes(start: dt.datetime, end: dt.datetime) -> set[str]:
    """Every scope a change to ``[start, end)`` moves (lifecycle: purge, detach): days, months and ``*``."""
    out = {ALL}
    day = _utc(start).replace(hour=0, minute=0, second=0, microsecond=0)
    last = _utc(end)
    while day < last:
        out.add(_day(day.date()))
        out.add(_month(day.date()))
        day += dt.timedelta(days=1)
    return out


@functools.lru_cache(maxsize=4096)  # dashboards ask for the same windows again and again
def read_scope(since: dt.datetime | None, until: dt.datetime | None) -> tuple[str, ...]:
    """The scopes a query over ``[since, until)`` depends on: its days when it spans a few weeks, its months
    when it spans up to twenty years, else ``*``. An open end (``until`` unset) depends on ``*``."""
    if since is None or until is None:
        return (ALL,)
    start, end = _utc(since), _utc(until)
    if end <= start:
        return (ALL,)
    first_day = start.replace(hour=0, minute=0, second=0, microsecond=0)
    days = (end - first_day).days + (1 if (end - first_day) % dt.timedelta(days=1) else 0)
    if days <= _MAX_DAYS:
        first = first_day.date()
        return tuple(_day(first + dt.timedelta(days=i)) for i in range(days))
    months = (end.year - start.year) * 12 + end.month - start.month + 1
    if months <= _MAX_MONTHS:
        out = []
        y, m = start.year, start.month
        for _ in range(months):
            out.append(f"m{y:04d}-{m:02d}")
            y, m = (y + 1, 1) if m == 12 else (y, m + 1)
        return tuple(out)
    return (ALL,)


# -- L1 ----------------------------------------------------------------------------------------------------------------


@dataclass
class _Entry:
    value: Any
    size: int
    expires_at: float
    created_at: float
    scope: tuple[str, ...]
    limits: tuple[int, ...]  # per scope: the highest generation this result already reflects


class LRUCache:
    """A thread-safe LRU map with per-entry expiry and bounds on entries and bytes; get, put and evict are O(1)
    (an ``OrderedDict`` moved to the end on use, popped from the front to evict).

    Example::

        lru = LRUCache(max_entries=1000, max_bytes=1 << 20)
        lru.put("k", value, size=120, ttl=60)
        lru.get("k")
    """

    def __init__(self, max_entries: int, max_bytes: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._clock = clock
        self._data: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self.bytes = 0
        self.evictions = 0
        self.expirations = 0

    def __len__(self) -> int:
        return len(self._data)

    def get_entry(self, key: str) -> _Entry | None:
        with self._lock:
            entry = self._data.get(key)
            if entry is None:
                return None
            if entry.expires_at <= self._clock():
                self._remove(key)
                self.expirations += 1
                return None
            self._data.move_to_end(key)
            return entry

    def get(self, key: str) -> Any:
        entry = self.get_entry(key)
        return None if entry is None else entry.value

    def put_entry(self, key: str, entry: _Entry) -> None:
        if entry.size > self.max_bytes or self.max_entries == 0:
            return  # larger than the whole cache: not worth evicting everything for
        with self._lock:
            if key in self._data:
                self._remove(key)
            self._data[key] = entry
            self.bytes += entry.size
            while len(self._data) > self.max_entries or self.bytes > self.max_bytes:
                old_key, old = self._data.popitem(last=False)
                self.bytes -= old.size
                self.evictions += 1

    def put(self, key: str, value: Any, *, size: int, ttl: float) -> None:
        now = self._clock()
        self.put_entry(key, _Entry(value, size, now + ttl, now, (), ()))

    def pop(self, key: str) -> None:
        with self._lock:
            if key in self._data:
                self._remove(key)

    def _remove(self, key: str) -> None:
        entry = self._data.pop(key)
        self.bytes -= entry.size

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self.bytes = 0


# -- the two tiers -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CacheHit:
    value: Any
    tier: str  # "l1" | "l2"


class QueryCache:
    """L1 + L2 cache of query results with generation-based invalidation (see the module docstring)."""

    def __init__(
        self,
        settings: AuditSettings,
        *,
        schema_version: int = 0,
        breakers: BreakerRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        cfg = settings.cache
        self.enabled = cfg.enabled
        self.schema_version = schema_version
        self._clock = clock
        self.l1 = LRUCache(cfg.l1_max_entries, cfg.l1_max_bytes, clock=clock)
        self._breaker: CircuitBreaker | None = (breakers or BreakerRegistry(settings.breakers)).get("redis") \
            if settings.redis_url is not None else None
        self._prefix = f"{cfg.key_prefix}:{_database_name(settings)}:{schema_version}"
        self._gen_key = f"{self._prefix}:gen"
        self._channel = f"{self._prefix}:invalidate"
        self._gens: dict[str, int] = {}
        self._gens_lock = threading.Lock()
        self._pending: dict[str, int] = {}  # bumps Redis has not received yet (it was down)
        self._redis: Any = None
        self._bump: Any = None
        self._subscriber: threading.Thread | None = None
        self._stop = threading.Event()
        self._synced = threading.Event()  # the invalidation channel is connected
        self._counts = {name: 0 for name in (
            "l1_hits", "l1_misses", "l2_hits", "l2_misses", "invalidated", "sets", "l2_sets", "bypassed",
            "redis_errors", "pool_waits", "invalidations", "messages")}
        self._counts_lock = threading.Lock()
        # Breakers of this process that are not closed, published for the fleet (see report_breaker).
        self._breaker_key = f"{cfg.key_prefix}:breaker:{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self._breaker_states: dict[str, dict[str, Any]] = {}
        self._breaker_dirty: set[str] = set()
        self._breaker_lock = threading.Lock()
        self._breaker_published = 0.0

    # -- lifecycle -------------------------------------------------------------------------------------------------

    @property
    def redis_configured(self) -> bool:
        return self.settings.redis_url is not None

    def open(self) -> QueryCache:
        if not self.enabled or not self.redis_configured or self._redis is not None:
            return self
        import redis

        timeout = self.settings.cache.redis_timeout_seconds
        assert self.settings.redis_url is not None
        # A blocking pool: more threads than connections wait (up to the timeout) instead of being refused.
        pool = redis.BlockingConnectionPool.from_url(
            self.settings.redis_url.get_secret_value(),
            max_connections=self.settings.cache.redis_max_connections,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry_on_timeout=False,
            health_check_interval=30,
        )
        self._redis = redis.Redis(connection_pool=pool)
        self._bump = self._redis.register_script(_BUMP)
        self._stop.clear()
        self._subscriber = threading.Thread(target=self._listen, name="audit-cache-invalidation", daemon=True)
        self._subscriber.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._subscriber is not None:
            self._subscriber.join(timeout=5)
            self._subscriber = None
        if self._redis is not None:
            try:
                self._redis.delete(self._breaker_key)  # this process's breakers go with it
            except Exception:
                pass
            try:
                self._redis.close()
            except Exception:
                pass
            self._redis = None
        self._synced.clear()

    def wait_synced(self, timeout: float = 5.0) -> bool:
        """Block until the invalidation channel is connected (tests, start-up); ``True`` when it is."""
        return self._synced.wait(timeout)

    # -- keys ------------------------------------------------------------------------------------------------------

    def key(self, query_type: str, normalized_query: Any, params: Any) -> str:
        """``{prefix}:{database}:{schema_version}:{query_type}:{sha256(normalized query)}:{sha256(params)}``."""
        def digest(value: Any) -> str:
            text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, separators=(",", ":"),
                                                                   default=str)
            return hashlib.sha256(text.encode()).hexdigest()

        return f"{self._prefix}:{query_type}:{digest(normalized_query)}:{digest(params)}"

    # -- generations -----------------------------------------------------------------------------------------------

    def generations(self, scope: Iterable[str]) -> tuple[int, ...]:
        """This process's view of the generations of ``scope`` (read before a query runs: its ``seen``)."""
        with self._gens_lock:
            return tuple(self._gens.get(s, 0) for s in scope)

    def _merge(self, values: Mapping[str, int]) -> None:
        with self._gens_lock:
            for scope, gen in values.items():
                if gen > self._gens.get(scope, 0):
                    self._gens[scope] = gen

    def _valid(self, scope: tuple[str, ...], limits: tuple[int, ...], remote: Mapping[str, int] | None = None) -> bool:
        with self._gens_lock:
            for s, limit in zip(scope, limits):
                gen = self._gens.get(s, 0)
                if remote is not None:
                    gen = max(gen, remote.get(s, 0))
                if gen > limit:
                    return False
        return True

    @staticmethod
    def limits(scope: tuple[str, ...], seen: tuple[int, ...], as_of: int, *, from_replica: bool) -> tuple[int, ...]:
        """Per scope, the highest generation a result already reflects.

        A replica result read at replay position ``as_of`` reflects every write committed at or before it. A
        primary result reflects every write whose generation was already known when the query started (``seen``:
        generations move only after the write is visible), and every write committed strictly before ``as_of``
        (a commit at exactly ``as_of`` may have been in flight when the snapshot was taken)."""
        if from_replica:
            return tuple(as_of for _ in scope)
        return tuple(max(s, as_of - 1) for s in seen)

    def invalidate(self, scopes: Iterable[str], lsn: int, *, publish: bool = True) -> None:
        """Move ``scopes`` to generation ``lsn`` here (at once) and, through Redis, in every process sharing it
        (now, or at the next :meth:`publish` when ``publish=False``)."""
        bumps = {s: int(lsn) for s in scopes}
        if not bumps:
            return
        self._merge(bumps)
        self._count("invalidations")
        if not self.enabled or self._redis is None:
            return
        with self._gens_lock:
            for s, g in bumps.items():
                if g > self._pending.get(s, 0):
                    self._pending[s] = g
        if publish:
            self._flush_pending()

    def publish(self) -> None:
        """Send the invalidations not yet in Redis (a failure leaves them pending; L2 is not used until sent)."""
        if self._redis is not None and self._pending:
            self._flush_pending()

    def _flush_pending(self) -> bool:
        """Send bumps Redis missed; ``True`` when nothing is pending any more (L2 may be used)."""
        with self._gens_lock:
            pending = dict(self._pending)
        if not pending:
            return True
        args: list[Any] = []
        for s, g in pending.items():
            args += [s, g]
        args.append(json.dumps(pending, separators=(",", ":")))
        if not self._redis_call(lambda: self._bump(keys=[self._gen_key, self._channel], args=args)):
            return False
        with self._gens_lock:
            for s, g in pending.items():
                if self._pending.get(s) == g:
                    del self._pending[s]
            return not self._pending

    # -- get / set -------------------------------------------------------------------------------------------------

    def get(
        self,
        key: str,
        scope: tuple[str, ...],
        decode: Callable[[Any], Any] | None = None,
        *,
        min_generation: int = 0,
    ) -> CacheHit | None:
        """The cached value for ``key`` if one is still valid for ``scope``: L1 first, then L2 (promoted to L1).

        ``min_generation``: only a result that reflects every commit up to that WAL position will do (a caller
        reading its own write, whose invalidation may not have reached this process yet)."""
        if not self.enabled:
            return None
        entry = self.l1.get_entry(key)
        if entry is not None and min_generation and min(entry.limits, default=0) < min_generation:
            entry = None  # too old for this caller; leave it for others
            self._count("l1_misses")
            return None
        if entry is not None:
            fresh = self._synced.is_set() or not self.redis_configured or \
                self._clock() - entry.created_at <= self.settings.cache.ttl_seconds
            if fresh and self._valid(entry.scope, entry.limits):
                self._count("l1_hits")
                return CacheHit(entry.value, "l1")
            self.l1.pop(key)
            self._count("invalidated")
        self._count("l1_misses")
        if self._redis is None:
            return None
        found = self._l2_get(key, scope)
        if found is None:
            self._count("l2_misses")
            return None
        payload, limits, ttl_left, size = found
        if min_generation and min(limits, default=0) < min_generation:
            self._count("l2_misses")
            return None
        value = decode(payload) if decode is not None else payload
        now = self._clock()
        self.l1.put_entry(key, _Entry(value, size, now + ttl_left, now, scope, limits))
        self._count("l2_hits")
        return CacheHit(value, "l2")

    def _l2_get(self, key: str, scope: tuple[str, ...]) -> tuple[Any, tuple[int, ...], float, int] | None:
        if not self._flush_pending():
            return None

        def fetch() -> Any:
            pipe = self._redis.pipeline(transaction=False)
            pipe.get(key)
            pipe.pttl(key)
            pipe.hmget(self._gen_key, list(scope))
            return pipe.execute()

        result = self._redis_call(fetch)
        if not result:
            return None
        blob, pttl, gens = result
        if blob is None:
            return None
        remote = {s: int(g) for s, g in zip(scope, gens) if g is not None}
        self._merge(remote)
        try:
            doc = json.loads(zlib.decompress(blob))
            if doc.get("f") != _FORMAT or tuple(doc["s"]) != tuple(scope):
                return None
            limits = tuple(int(x) for x in doc["l"])
        except (ValueError, KeyError, TypeError, zlib.error):
            logger.warning("ignoring an unreadable L2 cache entry")
            return None
        if not self._valid(tuple(scope), limits, remote):
            self._count("invalidated")
            return None
        ttl_left = max(pttl, 0) / 1000 if pttl and pttl > 0 else self.settings.cache.ttl_seconds
        return doc["p"], limits, ttl_left, len(blob)

    def set(
        self,
        key: str,
        value: Any,
        *,
        scope: tuple[str, ...],
        limits: tuple[int, ...],
        closed: bool,
        encode: Callable[[Any], Any] | None = None,
    ) -> None:
        """Cache ``value`` (a result over ``scope`` reflecting generations up to ``limits``). ``closed``: the
        window lies wholly in the past, so the longer ``closed_window_ttl_seconds`` applies."""
        if not self.enabled:
            return
        if not self._valid(scope, limits):  # a write landed while the query ran: do not cache a stale result
            return
        cfg = self.settings.cache
        ttl = cfg.closed_window_ttl_seconds if closed else cfg.ttl_seconds
        payload = encode(value) if encode is not None else value
        blob = zlib.compress(json.dumps({"f": _FORMAT, "s": list(scope), "l": list(limits), "p": payload},
                                        separators=(",", ":"), default=str).encode(), 1)
        now = self._clock()
        self.l1.put_entry(key, _Entry(value, len(blob), now + ttl, now, scope, limits))
        self._count("sets")
        if self._redis is not None and self._flush_pending():
            if self._redis_call(lambda: self._redis.set(key, blob, px=max(int(ttl * 1000), 1))):
                self._count("l2_sets")

    def clear(self) -> int:
        """Drop every entry of this schema version: L1 here, L2 by ``SCAN`` + ``UNLINK`` (never ``KEYS``)."""
        self.l1.clear()
        if self._redis is None:
            return 0
        removed = 0

        def sweep() -> int:
            n = 0
            batch: list[bytes] = []
            for k in self._redis.scan_iter(match=f"{self._prefix}:*", count=500):
                if k.decode() in (self._gen_key,):
                    continue
                batch.append(k)
                if len(batch) >= 500:
                    n += self._redis.unlink(*batch)
                    batch = []
            if batch:
                n += self._redis.unlink(*batch)
            return n

        result = self._redis_call(sweep)
        removed = int(result or 0)
        return removed

    # -- Redis, behind its breaker ---------------------------------------------------------------------------------

    def _redis_call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` against Redis; on failure (or an open breaker) count it and return ``None``. Never raises."""
        breaker = self._breaker
        if breaker is not None and not breaker.allow():
            self._count("bypassed")
            return None
        try:
            result = fn()
        except Exception as exc:
            self._count("bypassed")
            if "No connection available" in str(exc):  # our own pool was busy: load, not a failing Redis
                self._count("pool_waits")
                if breaker is not None:
                    breaker.record_success()
                return None
            self._count("redis_errors")
            if breaker is not None:
                breaker.record_failure(CacheError(redact(str(exc)) or type(exc).__name__, operation="cache"))
            logger.debug("redis unavailable, cache bypassed: %s", redact(str(exc)))
            return None
        if breaker is not None:
            breaker.record_success()
        return result if result is not None else True

    def _listen(self) -> None:
        """Apply invalidation messages from other processes; on (re)connect, re-read every generation."""
        pubsub = None
        while not self._stop.is_set():
            try:
                if pubsub is None:
                    pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
                    pubsub.subscribe(self._channel)
                    self._merge({k.decode(): int(v) for k, v in self._redis.hgetall(self._gen_key).items()})
                    self._synced.set()
                self._publish_breakers()
                message = pubsub.get_message(timeout=0.5)
                if message and message.get("type") == "message":
                    self._merge({k: int(v) for k, v in json.loads(message["data"]).items()})
                    self._count("messages")
            except Exception as exc:
                if self._synced.is_set():
                    logger.warning("cache invalidation channel lost: %s", redact(str(exc)))
                self._synced.clear()
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except Exception:
                        pass
                    pubsub = None
                self._stop.wait(0.5)
        if pubsub is not None:
            try:
                pubsub.close()
            except Exception:
                pass

    # -- breaker states, shared through Redis ------------------------------------------------------------------------

    def report_breaker(self, name: str, state: str, detail: Mapping[str, Any] | None = None) -> None:
        """Record a breaker transition of this process; the invalidation thread publishes the breakers that are
        not closed under ``{prefix}:breaker:<host>:<pid>:…`` (expiring, refreshed while they stay open), so a
        monitor in another process — the Dagster check — sees every process's open breakers.
        Never blocks and never touches Redis itself: it may run inside a breaker's own transition."""
        with self._breaker_lock:
            if state == "closed":
                self._breaker_states.pop(name, None)
            else:
                self._breaker_states[name] = {"breaker": name, "state": state, "since": time.time(),
                                              "host": socket.gethostname(), "pid": os.getpid(), **(detail or {})}
            self._breaker_dirty.add(name)

    def _publish_breakers(self, *, force: bool = False) -> None:
        now = time.monotonic()
        with self._breaker_lock:
            if not self._breaker_dirty and not (self._breaker_states and now - self._breaker_published > 30):
                return
            states = {k: dict(v) for k, v in self._breaker_states.items()}
            self._breaker_dirty.clear()
        def send() -> None:
            if states:
                self._redis.set(self._breaker_key, json.dumps(states, default=str), ex=120)
            else:
                self._redis.delete(self._breaker_key)
        if self._redis_call(send):
            self._breaker_published = now
        else:
            with self._breaker_lock:
                self._breaker_dirty.update(states or {"*"})

    def fleet_breakers(self) -> list[dict[str, Any]] | None:
        """Every breaker not closed in any process sharing this Redis (``None`` when Redis is not configured or
        cannot be read)."""
        if self._redis is None:
            return None

        def read() -> list[dict[str, Any]]:
            out: list[dict[str, Any]] = []
            keys = list(self._redis.scan_iter(match=f"{self.settings.cache.key_prefix}:breaker:*", count=500))
            for blob in (self._redis.mget(keys) if keys else []):
                if blob:
                    out.extend(json.loads(blob).values())
            return out

        result = self._redis_call(read)
        return result if isinstance(result, list) else None

    # -- stats -----------------------------------------------------------------------------------------------------

    def _count(self, name: str, n: int = 1) -> None:
        with self._counts_lock:
            self._counts[name] += n

    def stats(self) -> dict[str, Any]:
        """Hits and misses per tier, hit ratio, evictions, bytes, Redis errors and bypasses."""
        with self._counts_lock:
            c = dict(self._counts)
        lookups = c["l1_hits"] + c["l1_misses"]
        hits = c["l1_hits"] + c["l2_hits"]
        return {
            "enabled": self.enabled,
            "l2_configured": self.redis_configured,
            "invalidation_channel": "connected" if self._synced.is_set() else
            ("not configured" if not self.redis_configured else "disconnected"),
            **c,
            "lookups": lookups,
            "hits": hits,
            "hit_ratio": round(hits / lookups, 4) if lookups else 0.0,
            "l1_entries": len(self.l1),
            "l1_bytes": self.l1.bytes,
            "l1_evictions": self.l1.evictions,
            "l1_expirations": self.l1.expirations,
            "pending_invalidations": len(self._pending),
        }

    def reset_stats(self) -> None:
        with self._counts_lock:
            for k in self._counts:
                self._counts[k] = 0
