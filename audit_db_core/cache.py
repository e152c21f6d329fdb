"""Two-tier query cache: L1 in process (LRU + TTL + byte bound, :mod:`audit_db_core.cache_lru`), L2 in Redis
(compressed MessagePack, never pickle, :mod:`audit_db_core.cache_codec`; encrypted and authenticated,
:mod:`audit_db_core.cache_seal`).

Keys: a query's cache key is ``{query_type}:{sha256(normalized query)}:{sha256(params)}`` (L1 uses it as is); in
Redis it is ``{prefix}:{deployment_id}:{database}:{schema_version}:{query_type}:{HMAC(format, key)}`` (``prefix`` is
``AUDIT_CACHE__KEY_PREFIX``, ``audit-db`` by default; ``deployment_id`` the database's identity, see
:mod:`audit_db_core.deployment`; ``database`` the primary's database name). Two servers whose databases have the same
name can share one Redis and never share an entry; so can the generation counters, the invalidation channel and the
published breaker states, all under ``{prefix}:{deployment_id}:``. The identity is read from the database on the
first L2 use; until it is known, L2 is bypassed (L1 works as usual).

**Redis is not trusted.** Whoever can write to it must not be able to put rows into query results, alter or
replay them beyond a bound, nor read them (query results may hold PHI). With ``AUDIT_CACHE__KEY`` (32 bytes):

- every L2 value is sealed with AES-256-GCM: ``header ‖ nonce ‖ ciphertext+tag``, the header (format, creation
  time, TTL) and the full Redis key as associated data, so a value cannot be read, altered, or moved to another key,
  query or deployment; a value older than its TTL is refused (a replayed copy is served for at most its TTL);
- the generation counters kept in Redis are ``lsn:tag`` and the invalidation messages and breaker states carry a
  tag, HMAC-SHA256 (128 bits) under a key derived from the cache key (HKDF), bound to the Redis key or channel: a
  forged counter can only cause misses, never a stale hit (a counter that fails its tag fails the read closed, and
  the next genuine write repairs it);
- the query part of a Redis key is an HMAC of the query's key, so a reader of Redis cannot confirm a guessed filter
  (a patient's id) by hashing it;
- whatever fails (authentication, size, decoding, age) is a miss: counted (``l2_rejected``), logged at WARNING
  (the first time, then at most every five minutes, never with the value or key material), never raised, never
  returned. Decompression stops at ``AUDIT_CACHE__MAX_VALUE_BYTES``.

Without the key (a Redis URL but no ``AUDIT_CACHE__KEY``) L2 stays off, said once at start-up. What remains possible
for a writer to Redis — rolling a counter back to a genuine older value, replaying a genuine value within its TTL,
deleting or flooding keys, reading sizes and timings — is listed in docs/guides/security.md.

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
    cache.set(key, value, scope=scope, limits=limits, closed=True, encode=to_json)
    cache.stats()["hit_ratio"]
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from audit_db_core.breakers import BreakerRegistry, CircuitBreaker
from audit_db_core.cache_codec import VERSION as _VALUE_FORMAT
from audit_db_core.cache_codec import decode_value, encode_value
from audit_db_core.cache_lru import LRUCache
from audit_db_core.cache_scopes import ALL, range_scopes, read_scope, write_scopes  # noqa: F401 (re-exported)
from audit_db_core.cache_seal import SEAL_OVERHEAD as _SEAL_OVERHEAD
from audit_db_core.cache_seal import CacheSeal
from audit_db_core.cache_seal import Refused as _Refused
from audit_db_core.config import AuditSettings
from audit_db_core.errors import CacheError, redact
from audit_db_core.redis_client import redis_client

logger = logging.getLogger("audit_db_core.cache")

# An L1 entry: a plain tuple (indexing an exact tuple is the fastest field access Python has) of the result, when it
# was made (this cache's clock), and the scopes and generation limits it is valid for (per scope: the highest
# generation it reflects). The LRU keeps its size and expiry apart.
VALUE, CREATED_AT, SCOPE, LIMITS = 0, 1, 2, 3

#: Clocks of processes sharing a Redis may differ this much (ms): a value "from the future" beyond it is refused,
#: and one read up to this long after its TTL is a plain miss rather than a suspected replay.
_CLOCK_TOLERANCE_MS = 1000
_BREAKER_TTL_S = 120
_REJECT_LOG_INTERVAL_S = 300.0
_IDENTITY_RETRY_S = 1.0

# Keeps each scope's highest generation. Values are "lsn:tag"; the comparison reads the lsn. Returns the scopes it
# did not move because Redis holds a higher value ({scope, value, ...}): the caller checks that value's tag.
_BUMP = """
local function lsn(v)
  if not v then return 0 end
  return tonumber(string.match(v, '^(%d+):') or '0')
end
local higher = {}
for i = 1, #ARGV - 1, 2 do
  local current = redis.call('HGET', KEYS[1], ARGV[i])
  if lsn(current) < lsn(ARGV[i + 1]) then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  elseif current and current ~= ARGV[i + 1] then
    table.insert(higher, ARGV[i])
    table.insert(higher, current)
  end
end
redis.call('PUBLISH', KEYS[2], ARGV[#ARGV])
return higher
"""

# Replaces a counter whose tag failed with a genuine value, unless it changed meanwhile.
_REPAIR = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
  return 1
end
return 0
"""


def _database_name(settings: AuditSettings) -> str:
    """The primary's database name: part of every key, so audit databases sharing one Redis never share entries."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        name = conninfo_to_dict(settings.database_url.get_secret_value()).get("dbname")
    except Exception:
        name = None
    return str(name or "default").replace(":", "_")


def _read_identity(settings: AuditSettings) -> uuid.UUID:
    """The deployment identity, on a connection of its own (a cache used without an ``AuditDatabase``)."""
    import psycopg

    from audit_db_core.deployment import read_deployment_id
    from audit_db_core.errors import classify

    try:
        with psycopg.connect(settings.database_url.get_secret_value(), autocommit=True,
                             connect_timeout=settings.pool.connect_timeout_seconds) as conn:
            return read_deployment_id(conn)
    except psycopg.Error as exc:
        raise classify(exc, operation="deployment_id") from None


_MEMO_ENTRIES = 4096
_sorted_json = msgspec.json.Encoder(order="sorted", enc_hook=str).encode  # keys sorted: one text per value


def _digest(value: Any) -> str:
    """SHA-256 (hex) of ``value``: a text as it is, anything else as JSON with sorted keys (the text stdlib
    ``json.dumps(sort_keys=True)`` writes for ASCII data, several times faster)."""
    return hashlib.sha256(value.encode() if isinstance(value, str) else _sorted_json(value)).hexdigest()



def _resp(*args: str) -> bytes:
    """A Redis command in the protocol's own form (RESP: an array of bulk strings)."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def _memoized(memo: dict[Any, Any], key: Any, compute: Callable[[], Any]) -> Any:
    """``memo[key]``, computed on a miss; the memo is emptied when full (bounded memory, no LRU bookkeeping).
    Only results are kept: a computation that raises (a value refused) is never remembered."""
    found = memo.get(key)
    if found is None:
        found = compute()
        if len(memo) >= _MEMO_ENTRIES:
            memo.clear()
        memo[key] = found
    return found


@dataclass(frozen=True)
class _Namespace:
    """Where one deployment's cache lives in Redis (known once the deployment identity is)."""

    deployment_id: uuid.UUID
    base: str  # {prefix}:{deployment_id}:{database}:{schema_version}
    gen_key: str
    channel: str
    breakers: str  # {prefix}:{deployment_id}:breaker:
    breaker_key: str
    stats: str = ""  # {prefix}:{deployment_id}:stats: — each process's lookup counts, for a fleet-wide hit ratio
    stats_key: str = ""


# -- the two tiers -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CacheHit:
    value: Any
    tier: str  # "l1" | "l2"


class QueryCache:
    """L1 + L2 cache of query results with generation-based invalidation (see the module docstring).

    ``identity``: returns the deployment identity (:attr:`AuditDatabase.deployment_id`); by default it is read on a
    connection of its own. Called on the first L2 use, again after a failure at most once a second.
    """

    def __init__(
        self,
        settings: AuditSettings,
        *,
        schema_version: int = 0,
        breakers: BreakerRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
        identity: Callable[[], uuid.UUID] | None = None,
    ) -> None:
        self.settings = settings
        cfg = settings.cache
        self.enabled = cfg.enabled
        self.schema_version = schema_version
        self._clock = clock
        self.l1 = LRUCache(cfg.l1_max_entries, cfg.l1_max_bytes, clock=clock)
        key = cfg.key_bytes
        self._seal: CacheSeal | None = CacheSeal(key) if key is not None else None
        #: Why L2 is off although Redis is configured (``None``: it is not off for that reason).
        self.l2_off_reason: str | None = (
            "AUDIT_CACHE__KEY is not set" if settings.redis_url is not None and key is None else None)
        self._off_logged = False
        self._breaker: CircuitBreaker | None = (breakers or BreakerRegistry(settings.breakers)).get("redis") \
            if self.redis_configured else None
        self._identity = identity if identity is not None else functools.partial(_read_identity, settings)
        self._database = _database_name(settings)
        self._ns: _Namespace | None = None
        self._ns_lock = threading.Lock()
        self._ns_ready = threading.Event()
        self._ns_retry_at = 0.0
        self._ns_warned = False
        self._gens: dict[str, int] = {}
        self._gens_lock = threading.Lock()
        # Hot L2 reads meet the same counters and keys again and again: their HMACs are computed once.
        self._verified: dict[tuple[tuple[str, ...], tuple[Any, ...]], dict[str, int]] = {}
        self._hmgets: dict[tuple[str, tuple[str, ...]], bytes] = {}  # the HMGET of each scope, packed (_l2_get)
        self._l2_keys: dict[str, str] = {}
        self._pending: dict[str, int] = {}  # bumps Redis has not received yet (it was down)
        self._redis: Any = None
        self._bump: Any = None
        self._repair: Any = None
        self._subscriber: threading.Thread | None = None
        self._stop = threading.Event()
        self._synced = threading.Event()  # the invalidation channel is connected
        self._counts = {name: 0 for name in (
            "l1_hits", "l1_misses", "l2_hits", "l2_misses", "invalidated", "sets", "l2_sets", "bypassed",
            "redis_errors", "pool_waits", "invalidations", "messages", "l2_rejected")}
        self._counts_lock = threading.Lock()
        self._reject_log_lock = threading.Lock()
        self._reject_logged_at: float | None = None
        self._reject_unlogged = 0
        # Breakers of this process that are not closed, published for the fleet (see report_breaker).
        self._breaker_states: dict[str, dict[str, Any]] = {}
        self._breaker_dirty: set[str] = set()
        self._breaker_lock = threading.Lock()
        self._breaker_published = 0.0
        self._stats_published = 0.0

    # -- lifecycle -------------------------------------------------------------------------------------------------

    @property
    def redis_configured(self) -> bool:
        """L2 is configured: a Redis URL and the key that seals its values (``AUDIT_CACHE__KEY``)."""
        return self.settings.redis_url is not None and self._seal is not None

    @property
    def deployment_id(self) -> uuid.UUID | None:
        """The deployment identity the L2 keys are under, once read (``None`` before the first L2 use)."""
        ns = self._ns
        return ns.deployment_id if ns is not None else None

    def open(self) -> QueryCache:
        if self.enabled and self.l2_off_reason is not None and not self._off_logged:
            self._off_logged = True
            logger.warning("L2 cache off: %s (AUDIT_REDIS_URL is set; the cache runs in process only)",
                           self.l2_off_reason)
        if not self.enabled or not self.redis_configured or self._redis is not None:
            return self
        timeout = self.settings.cache.redis_timeout_seconds
        assert self.settings.redis_url is not None
        # A blocking pool: more threads than connections wait (up to the timeout) instead of being refused. One
        # server, or the master of a Sentinel group (redis+sentinel://), found again after a Sentinel failover.
        self._redis = redis_client(
            self.settings.redis_url.get_secret_value(),
            timeout=timeout,
            max_connections=self.settings.cache.redis_max_connections,
            health_check_interval=30,
        )
        self._bump = self._redis.register_script(_BUMP)
        self._repair = self._redis.register_script(_REPAIR)
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
            if self._ns is not None:
                try:
                    self._redis.delete(self._ns.breaker_key)  # this process's breakers go with it
                except Exception:
                    pass
            try:
                self._redis.close()
            except Exception:
                pass
            self._redis = None
        self._synced.clear()

    def wait_synced(self, timeout: float = 5.0) -> bool:
        """Block until the invalidation channel is connected (tests, start-up); ``True`` when it is. Reads the
        deployment identity first if it is not known yet."""
        deadline = time.monotonic() + timeout
        while self._namespace() is None and time.monotonic() < deadline and self._redis is not None:
            time.sleep(0.05)
        return self._synced.wait(max(deadline - time.monotonic(), 0))

    def _namespace(self) -> _Namespace | None:
        """Where this deployment's entries live in Redis; ``None`` (L2 bypassed) until the identity is known."""
        ns = self._ns
        if ns is not None or self._redis is None or self._seal is None:
            return ns
        if time.monotonic() < self._ns_retry_at or not self._ns_lock.acquire(timeout=2.0):
            return None
        try:
            if self._ns is None:
                try:
                    ident = self._identity()
                except Exception as exc:
                    self._ns_retry_at = time.monotonic() + _IDENTITY_RETRY_S
                    if not self._ns_warned:
                        self._ns_warned = True
                        logger.warning("L2 cache bypassed until the deployment identity can be read: %s",
                                       redact(getattr(exc, "message", None) or str(exc)) or type(exc).__name__)
                    return None
                prefix = self.settings.cache.key_prefix
                base = f"{prefix}:{ident}:{self._database}:{self.schema_version}"
                breakers, stats = f"{prefix}:{ident}:breaker:", f"{prefix}:{ident}:stats:"
                me = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
                self._ns = _Namespace(
                    deployment_id=ident, base=base, gen_key=f"{base}:gen", channel=f"{base}:invalidate",
                    breakers=breakers, breaker_key=f"{breakers}{me}", stats=stats, stats_key=f"{stats}{me}")
                self._ns_ready.set()
            return self._ns
        finally:
            self._ns_lock.release()

    # -- keys ------------------------------------------------------------------------------------------------------

    def key(self, query_type: str, normalized_query: Any, params: Any) -> str:
        """``{query_type}:{sha256(normalized query)}:{sha256(params)}``: the key of a query in L1, and below
        ``{prefix}:{deployment_id}:{database}:{schema_version}:`` in Redis (:meth:`redis_key`)."""
        return f"{query_type}:{_digest(normalized_query)}:{_digest(params)}"

    def redis_key(self, key: str) -> str | None:
        """The Redis key of a :meth:`key`: ``{prefix}:{deployment_id}:{database}:{schema_version}:{query_type}:``
        then an HMAC of the whole key (``None`` while the deployment identity is not known). Keyed, so that a reader
        of Redis cannot confirm a guessed filter (a patient's id) by hashing it."""
        ns = self._namespace()
        return self._l2_key(ns, key) if ns is not None else None

    def _l2_key(self, ns: _Namespace, key: str) -> str:
        found = self._l2_keys.get(key)
        if found is not None:
            return found
        seal = self._seal
        assert seal is not None
        # The values' format is part of the digest: a value of another format is never looked up.
        return _memoized(self._l2_keys, key, lambda: f"{ns.base}:{key.partition(':')[0]}:"
                                                     f"{seal.digest('key', ns.base, f'v{_VALUE_FORMAT}:{key}')}")

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
        if not self._pending:  # the common case, read without the lock: a bump being added is not sent yet anyway
            return True
        with self._gens_lock:
            pending = dict(self._pending)
        if not pending:
            return True
        ns = self._namespace()
        if ns is None or self._seal is None:
            return False
        seal = self._seal
        args: list[Any] = []
        for s, g in pending.items():
            args += [s, seal.generation(ns.gen_key, s, g)]
        args.append(seal.sign("invalidate", ns.channel, json.dumps(pending, separators=(",", ":"))))
        higher = self._redis_call(lambda: self._bump(keys=[ns.gen_key, ns.channel], args=args))
        if higher is None:
            return False
        if isinstance(higher, list) and higher:
            self._repair_counters(ns, pending, higher)
        with self._gens_lock:
            for s, g in pending.items():
                if self._pending.get(s) == g:
                    del self._pending[s]
            return not self._pending

    def _repair_counters(self, ns: _Namespace, ours: Mapping[str, int], higher: list[Any]) -> None:
        """Redis holds a higher counter than a write of ours: genuine (another process wrote later) or forged. A
        forged one would fail every read of its scope closed for good: replace it with our genuine value."""
        assert self._seal is not None
        for scope_b, current in zip(higher[::2], higher[1::2]):
            scope = scope_b.decode() if isinstance(scope_b, bytes) else str(scope_b)
            try:
                self._merge({scope: self._seal.read_generation(ns.gen_key, scope, current)})
            except _Refused as refused:
                self._reject(refused)
                value = self._seal.generation(ns.gen_key, scope, ours[scope])
                self._redis_call(lambda: self._repair(keys=[ns.gen_key], args=[scope, current, value]))

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
        entry = self.l1.get(key)
        if entry is not None and min_generation and min(entry[LIMITS], default=0) < min_generation:
            entry = None  # too old for this caller; leave it for others
            self._count("l1_misses")
            return None
        if entry is not None:
            fresh = self._synced.is_set() or not self.redis_configured or \
                self._clock() - entry[CREATED_AT] <= self.settings.cache.ttl_seconds
            if fresh and self._valid(entry[SCOPE], entry[LIMITS]):
                self._count("l1_hits")
                return CacheHit(entry[VALUE], "l1")
            self.l1.pop(key)
            self._count("invalidated")
        self._count("l1_misses")
        if self._redis is None:
            return None
        # A codec of cache_codec (a page) names the type its payload decodes into, in the envelope's pass.
        payload_type = getattr(decode, "payload_type", Any)
        found = self._l2_get(key, scope, payload_type)
        if found is None:
            self._count("l2_misses")
            return None
        payload, limits, ttl_left, size = found
        if min_generation and min(limits, default=0) < min_generation:
            self._count("l2_misses")
            return None
        try:
            if payload_type is not Any:
                value = decode.from_typed(payload)  # type: ignore[union-attr]
            else:
                value = decode(payload) if decode is not None else payload
        except (ValueError, TypeError, KeyError, AttributeError):
            self._reject(_Refused("undecodable payload"))
            self._count("l2_misses")
            return None
        now = self._clock()
        self.l1.put(key, (value, now, scope, limits), size=size, ttl=ttl_left)
        self._count("l2_hits")
        return CacheHit(value, "l2")

    def _l2_get(self, key: str, scope: tuple[str, ...],
                payload_type: Any) -> tuple[Any, tuple[int, ...], float, int] | None:
        """``(payload, limits, seconds left, size)`` of the L2 value of ``key``, if valid for ``scope``; the payload
        decoded as ``payload_type``."""
        ns = self._namespace()
        if ns is None or not self._flush_pending():
            return None
        redis_key = self._l2_key(ns, key)

        # One round trip: the value and the counters of its scope, sent together on one pooled connection. No PTTL:
        # the value's own authenticated creation time and TTL say how long it may still live. The two commands are
        # written and read on the connection directly, as redis-py's pipeline does, without its per-call objects
        # (~0.1 ms of an L2 hit, measured; see benchmarks/README.md), and in the protocol's own form, the counters'
        # command made once per scope (redis-py's packing took as long again, a month's scope being 30 keys).
        command = _resp("GET", redis_key) + _memoized(
            self._hmgets, (ns.gen_key, scope), lambda: _resp("HMGET", ns.gen_key, *scope))

        def fetch() -> Any:
            pool = self._redis.connection_pool
            conn = pool.get_connection()

            def once() -> list[Any]:
                conn.send_packed_command([command])
                return [conn.read_response(), conn.read_response()]

            try:
                return conn.retry.call_with_retry(once, lambda _error: conn.disconnect())
            except BaseException:
                conn.disconnect()  # a reply may be left unread: the connection is not reused
                raise
            finally:
                pool.release(conn)

        result = self._redis_call(fetch)
        if not isinstance(result, list) or len(result) != 2:
            return None
        blob, gens = result
        if blob is None:
            return None
        try:
            remote = self._remote_generations(ns, scope, gens)
            limits, payload, ttl_left = self._open_value(redis_key, blob, scope, payload_type)
        except _Refused as refused:
            self._reject(refused)
            return None
        if not self._valid(scope, limits, remote):
            self._count("invalidated")
            return None
        return payload, limits, ttl_left, len(blob)

    def _remote_generations(self, ns: _Namespace, scope: tuple[str, ...], values: list[Any]) -> dict[str, int]:
        """The authenticated counters of ``scope`` from Redis (absent = 0), merged into this process's view. One
        that fails its tag refuses the read: it may hide a genuine, higher counter."""
        seal = self._seal
        assert seal is not None
        remote: dict[str, int] = _memoized(self._verified, (scope, tuple(values)), lambda: {
            s: seal.read_generation(ns.gen_key, s, v) for s, v in zip(scope, values) if v is not None})
        self._merge(remote)
        return remote

    def _open_value(self, redis_key: str, blob: bytes, scope: tuple[str, ...],
                    payload_type: Any) -> tuple[tuple[int, ...], Any, float]:
        """``(limits, payload, seconds it may still live)`` of a sealed L2 value; :class:`_Refused` otherwise."""
        assert self._seal is not None
        limit = self.settings.cache.max_value_bytes
        if len(blob) > limit + _SEAL_OVERHEAD + 8:  # never more than the envelope and its marker: see encode_value
            raise _Refused(f"larger than AUDIT_CACHE__MAX_VALUE_BYTES ({limit})")
        plaintext, created_ms, ttl_ms = self._seal.unseal(redis_key, blob)
        age_ms = int(time.time() * 1000) - created_ms
        if age_ms < -_CLOCK_TOLERANCE_MS:
            raise _Refused("created in the future (clocks differ, or a forged time)")
        if age_ms > ttl_ms:
            raise _Refused("older than its TTL: a copy written back (a replay)",
                           suspicious=age_ms > ttl_ms + _CLOCK_TOLERANCE_MS)
        limits, payload = decode_value(plaintext, limit, scope, payload_type)
        return limits, payload, max(ttl_ms - max(age_ms, 0), 1) / 1000

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
        document = getattr(encode, "document", None)  # a codec with a typed document of its own (cache_codec)
        try:
            payload = document(value) if document is not None else encode(value) if encode is not None else value
            plaintext, size = encode_value(scope, limits, payload)
        except (TypeError, ValueError, OverflowError) as exc:  # not encodable: not cached, not the caller's problem
            logger.debug("cache: a %s result is not cached (%s)", type(value).__name__, type(exc).__name__)
            return
        now = self._clock()
        self.l1.put(key, (value, now, scope, limits), size=len(plaintext), ttl=ttl)
        self._count("sets")
        if self._redis is None or self._seal is None or size > cfg.max_value_bytes:
            return  # a value readers would refuse is not worth sending
        ns = self._namespace()
        if ns is None or not self._flush_pending():
            return
        redis_key = self._l2_key(ns, key)
        ttl_ms = max(int(ttl * 1000), 1)
        blob = self._seal.seal(redis_key, plaintext, created_ms=int(time.time() * 1000), ttl_ms=ttl_ms)
        if self._redis_call(lambda: self._redis.set(redis_key, blob, px=ttl_ms)):
            self._count("l2_sets")

    def clear(self) -> int:
        """Drop every entry of this schema version: L1 here, L2 by ``SCAN`` + ``UNLINK`` (never ``KEYS``)."""
        self.l1.clear()
        ns = self._namespace()
        if self._redis is None or ns is None:
            return 0

        def sweep() -> int:
            n = 0
            batch: list[bytes] = []
            for k in self._redis.scan_iter(match=f"{ns.base}:*", count=500):
                if k.decode() == ns.gen_key:
                    continue
                batch.append(k)
                if len(batch) >= 500:
                    n += self._redis.unlink(*batch)
                    batch = []
            if batch:
                n += self._redis.unlink(*batch)
            return n

        return int(self._redis_call(sweep) or 0)

    # -- refused values --------------------------------------------------------------------------------------------

    def _reject(self, refused: _Refused) -> None:
        """A value from Redis that is not used: a miss; counted and logged (rate-limited) when it is suspicious."""
        if not refused.suspicious:
            return
        self._count("l2_rejected")
        with self._reject_log_lock:
            now = time.monotonic()
            if self._reject_logged_at is not None and now - self._reject_logged_at < _REJECT_LOG_INTERVAL_S:
                self._reject_unlogged += 1
                return
            earlier, self._reject_unlogged, self._reject_logged_at = self._reject_unlogged, 0, now
        logger.warning(
            "L2 cache: refused a value from Redis (%s); served as a miss. Another client may be writing to this "
            "Redis, or a process uses another AUDIT_CACHE__KEY%s", refused.reason,
            f" ({earlier} more refused since the last warning)" if earlier else "")

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

    def _verified_generations(self, ns: _Namespace, values: Mapping[Any, Any]) -> dict[str, int]:
        """The counters of a whole generation hash whose tags hold (the others are refused and skipped)."""
        assert self._seal is not None
        out: dict[str, int] = {}
        for scope_b, value in values.items():
            scope = scope_b.decode("utf-8", "replace") if isinstance(scope_b, bytes) else str(scope_b)
            try:
                out[scope] = self._seal.read_generation(ns.gen_key, scope, value)
            except _Refused as refused:
                self._reject(refused)
        return out

    def _message(self, ns: _Namespace, data: Any) -> dict[str, int] | None:
        """The bumps of an invalidation message, or ``None`` (refused) when it is not authentic."""
        assert self._seal is not None
        try:
            bumps = json.loads(self._seal.verify("invalidate", ns.channel, data))
            return {str(s): int(g) for s, g in bumps.items()}
        except _Refused as refused:
            self._reject(refused)
        except (ValueError, TypeError, AttributeError):
            self._reject(_Refused("invalidation message undecodable"))
        return None

    def _listen(self) -> None:
        """Apply invalidation messages from other processes; on (re)connect, re-read every generation. Waits for
        the deployment identity (read on the first L2 use) before it subscribes."""
        pubsub = None
        while not self._stop.is_set():
            ns = self._ns
            if ns is None:
                self._ns_ready.wait(0.5)
                continue
            try:
                if pubsub is None:
                    pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
                    pubsub.subscribe(ns.channel)
                    self._merge(self._verified_generations(ns, self._redis.hgetall(ns.gen_key)))
                    self._synced.set()
                self._publish_breakers()
                self._publish_stats()
                message = pubsub.get_message(timeout=0.5)
                if message and message.get("type") == "message":
                    bumps = self._message(ns, message["data"])
                    if bumps is not None:
                        self._merge(bumps)
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
        not closed under ``{prefix}:{deployment_id}:breaker:<host>:<pid>:…`` (authenticated, expiring, refreshed
        while they stay open), so a monitor in another process — the Dagster check — sees every process's open
        breakers. Never blocks and never touches Redis itself: it may run inside a breaker's own transition."""
        with self._breaker_lock:
            if state == "closed":
                self._breaker_states.pop(name, None)
            else:
                self._breaker_states[name] = {"breaker": name, "state": state, "since": time.time(),
                                              "host": socket.gethostname(), "pid": os.getpid(), **(detail or {})}
            self._breaker_dirty.add(name)

    def _publish_breakers(self, *, force: bool = False) -> None:
        ns = self._ns
        if ns is None or self._seal is None:
            return
        now = time.monotonic()
        with self._breaker_lock:
            if not self._breaker_dirty and not (self._breaker_states and now - self._breaker_published > 30):
                return
            states = {k: dict(v) for k, v in self._breaker_states.items()}
            self._breaker_dirty.clear()
        seal = self._seal

        def send() -> None:
            if states:
                body = json.dumps({"at": time.time(), "states": states}, default=str)
                self._redis.set(ns.breaker_key, seal.sign("breakers", ns.breaker_key, body), ex=_BREAKER_TTL_S)
            else:
                self._redis.delete(ns.breaker_key)
        if self._redis_call(send):
            self._breaker_published = now
        else:
            with self._breaker_lock:
                self._breaker_dirty.update(states or {"*"})

    def fleet_breakers(self) -> list[dict[str, Any]] | None:
        """Every breaker not closed in any process of this deployment sharing this Redis (``None`` when L2 is not
        configured, the deployment identity is not known, or Redis cannot be read). States that fail
        authentication, or are older than their expiry, are left out."""
        docs = self._published("breakers", lambda ns: ns.breakers, "breaker states")
        if docs is None:
            return None
        return [state for doc in docs if isinstance(doc.get("states"), dict) for state in doc["states"].values()]

    def _published(self, purpose: str, prefix: Callable[[_Namespace], str], what: str) -> list[Any] | None:
        """The documents every process published under ``prefix`` (``_publish_breakers`` / ``_publish_stats``)
        that pass authentication and are younger than their expiry; ``None`` when Redis cannot tell."""
        ns = self._namespace()
        if self._redis is None or ns is None or self._seal is None:
            return None
        seal, pattern = self._seal, f"{prefix(ns)}*"

        def read() -> list[tuple[bytes, Any]]:
            keys = list(self._redis.scan_iter(match=pattern, count=500))
            return list(zip(keys, self._redis.mget(keys))) if keys else []

        result = self._redis_call(read)
        if result is None:
            return None
        docs: list[Any] = []
        for key, blob in result if isinstance(result, list) else []:
            if not blob:
                continue
            try:
                doc = json.loads(seal.verify(purpose, key.decode("utf-8", "replace"), blob))
                if not time.time() - _BREAKER_TTL_S - _CLOCK_TOLERANCE_MS / 1000 <= float(doc["at"]):
                    raise _Refused(f"{what} older than their expiry (a replay)")
                docs.append(doc)
            except _Refused as refused:
                self._reject(refused)
            except (ValueError, KeyError, TypeError, AttributeError):
                self._reject(_Refused(f"{what} undecodable"))
        return docs

    def _publish_stats(self, *, force: bool = False) -> None:
        """This process's lookup counts under ``{prefix}:{deployment_id}:stats:<host>:<pid>:…`` (authenticated,
        expiring, refreshed every 30 s), so a monitor sees the fleet's hit ratio, not its own fresh cache's."""
        ns = self._ns
        now = time.monotonic()
        if ns is None or self._seal is None or not ns.stats_key or (not force and now - self._stats_published < 30):
            return
        with self._counts_lock:
            c = dict(self._counts)
        body = json.dumps({"at": time.time(), "lookups": c["l1_hits"] + c["l1_misses"],
                           "hits": c["l1_hits"] + c["l2_hits"], "l2_hits": c["l2_hits"]})
        seal = self._seal
        if self._redis_call(lambda: self._redis.set(ns.stats_key, seal.sign("stats", ns.stats_key, body),
                                                    ex=_BREAKER_TTL_S)):
            self._stats_published = now

    def fleet_stats(self) -> dict[str, Any] | None:
        """Lookups and hits summed over every process of this deployment that published them in the last two
        minutes (``None`` when L2 is not configured, the identity is not known, or Redis cannot be read). Values
        that fail authentication or are older than their expiry are left out (and counted as refused)."""
        docs = self._published("stats", lambda ns: ns.stats, "cache statistics")
        if docs is None:
            return None
        counted = [(int(d["lookups"]), int(d["hits"])) for d in docs
                   if isinstance(d.get("lookups"), int) and isinstance(d.get("hits"), int)]
        lookups, hits = sum(c[0] for c in counted), sum(c[1] for c in counted)
        return {"processes": len(counted), "lookups": lookups, "hits": hits,
                "hit_ratio": round(hits / lookups, 4) if lookups else 0.0}

    # -- stats -----------------------------------------------------------------------------------------------------

    def _count(self, name: str, n: int = 1) -> None:
        with self._counts_lock:
            self._counts[name] += n

    def stats(self) -> dict[str, Any]:
        """Hits and misses per tier, hit ratio, evictions, bytes, Redis errors and bypasses, values refused."""
        with self._counts_lock:
            c = dict(self._counts)
        lookups = c["l1_hits"] + c["l1_misses"]
        hits = c["l1_hits"] + c["l2_hits"]
        ident = self.deployment_id
        return {
            "enabled": self.enabled,
            "l2_configured": self.redis_configured,
            "l2_off_reason": self.l2_off_reason,
            "deployment_id": str(ident) if ident is not None else None,
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
