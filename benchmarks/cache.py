"""Cache benchmark: the L1 LRU's get/put rate against its peers, and what a cached query costs against the database.

What is measured
----------------
1. ``l1`` — ``audit_db_core.cache.LRUCache`` (the query cache's L1: thread-safe, TTL and byte bound per entry)
   against ``cachetools.LRUCache`` (a plain LRU, not thread-safe), ``cachetools.TTLCache`` (LRU + TTL, the
   closest in features; not thread-safe) and ``functools.lru_cache`` (C, a memoizing decorator: a *get* is a call
   that hits, a *put* a call that misses and stores the function's result), at ``--sizes`` entries
   (1k, 100k, 1M). Each is filled to its bound, then timed on ``--ops`` gets of random present keys (each
   implementation gets the same keys in the same order) and then ``--ops`` puts of new keys (each evicts the
   least recently used entry), ``--repeats`` times, interleaved across implementations, the median reported as
   operations per second. Each loop uses
   the implementation's natural call (``lru.get(k)`` / ``lru.put(k, v, size=…, ttl=…)``, ``c[k]`` /
   ``c[k] = v``, ``f(k)``); the garbage collector is off during the timed loops (as ``timeit`` does).
   O(1) shows as an ops/s that stays flat from the smallest to the largest size (``flatness`` = ops/s at the
   largest size / ops/s at the smallest; CPU caches make every implementation somewhat slower on 1M entries).
   Ratios: ours / ``cachetools.LRUCache`` per size and operation.
2. ``latency`` — ``AuditDatabase.query(q, consistency="eventual")`` latency, per tier, on ``--rows`` events over
   the ``--days`` UTC days before today (a scratch database; every replica has replayed it before timing):
   ``--shapes`` queries (one principal each, the ``--window-days`` days before today: closed windows, pages of
   ``--page-size``), ``--lookups`` timed lookups per tier, the three tiers interleaved shape by shape:
   ``database`` (``use_cache=False``, served by a replica when there is one), ``l2`` (``db.cache.l1.clear()``
   untimed before each lookup, so it is answered from Redis: verify and decrypt, decompress, decode, rebuild the
   page) and ``l1`` (an in-process hit). Every lookup checks where it was served (``page.extra["source"]``) and
   that its events are those the database returned. Reported: p50/p95/p99/mean/max in ms, ratios
   ``database / l1`` and ``database / l2`` (p50 and p99), the cache's own stats, and the router's read counts.
   ``l2_sealing``: the size of one page's L2 value and what its AES-256-GCM seal and open cost (a breakdown, not a
   separate tier).

Targets (reported as met / MISSED, never an exit status): cached lookups (L1 and L2) p99 < 100 ms, from the
original design brief; L1 hit p99 < 1 ms. A failed correctness check (a lookup served by the wrong tier, a cached
page that differs from the database's, data not as prepared) exits with status 2 and writes no report.

Servers: with ``AUDIT_BENCH_DATABASE_URL`` set (plus optional ``AUDIT_BENCH_REPLICA_URLS`` and
``AUDIT_BENCH_REDIS_URL``), those servers are used: the script creates and drops its own scratch database (the
role needs CREATEDB) and uses Redis keys under a prefix of its own, deleted at the end, sealed with a random
``AUDIT_CACHE__KEY`` of its own. Without Redis the ``l2`` tier is not measured; without replicas the database
tier is the primary. Otherwise a local PostgreSQL primary,
streaming replica and Redis (``audit_local``) are started in a temporary directory and always stopped
and removed, Ctrl-C and SIGTERM included.

Run it from the repository root::

    python benchmarks/cache.py                                   # 1k/100k/1M entries, 100k rows (~3 min)
    python benchmarks/cache.py --sizes 1000,100000 --rows 20000 --lookups 500 --output /tmp/cache.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import gc
import inspect
import math
import os
import platform
import random
import secrets
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import cachetools
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: make `benchmarks` importable

from benchmarks import common  # noqa: E402
from benchmarks.common import positive_int  # noqa: E402
from benchmarks.read_data import CheckFailed, check_principals, principal, read_database  # noqa: E402
from audit_db_core import AuditDatabase, AuditQuery, AuditSettings  # noqa: E402
from audit_db_core.cache import CacheSeal, LRUCache, QueryCache, read_scope  # noqa: E402

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "cache.json"
APPLICATION_NAME = "audit-bench-cache"
DEFAULT_SIZES = (1_000, 100_000, 1_000_000)
L1_TARGET_P99_MS = 1.0
CACHED_TARGET_P99_MS = 100.0
ENTRY_SIZE = 2_000  # bytes charged per entry of our LRU (about a cached page's compressed size)
TTL_SECONDS = 3600.0


def log(message: str) -> None:
    print(f"[cache] {message}", file=sys.stderr, flush=True)


def check(ok: bool, message: str) -> None:
    if not ok:
        raise CheckFailed(message)


# -- 1. L1 get / put -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Implementation:
    name: str
    description: str
    # make(n) -> (fill(keys, value), get_loop(keys), put_loop(keys, value)); the loops are timed.
    make: Callable[[int], tuple[Callable[..., None], Callable[..., None], Callable[..., None]]]


def _ours(n: int) -> tuple[Callable[..., None], Callable[..., None], Callable[..., None]]:
    lru = LRUCache(max_entries=n, max_bytes=n * ENTRY_SIZE * 2)  # the entry bound is the one that evicts

    def fill(keys: Sequence[str], value: Any) -> None:
        put = lru.put
        for k in keys:
            put(k, value, size=ENTRY_SIZE, ttl=TTL_SECONDS)
        check(len(lru) == n, f"ours: {len(lru)} entries after the fill, expected {n}")

    def gets(keys: Sequence[str]) -> None:
        get = lru.get
        for k in keys:
            get(k)

    def puts(keys: Sequence[str], value: Any) -> None:
        put = lru.put
        for k in keys:
            put(k, value, size=ENTRY_SIZE, ttl=TTL_SECONDS)

    return fill, gets, puts


def _cachetools(make_cache: Callable[[int], Any], label: str) -> Callable[[int], Any]:
    def make(n: int) -> tuple[Callable[..., None], Callable[..., None], Callable[..., None]]:
        c = make_cache(n)

        def fill(keys: Sequence[str], value: Any) -> None:
            for k in keys:
                c[k] = value
            check(len(c) == n, f"{label}: {len(c)} entries after the fill, expected {n}")

        def gets(keys: Sequence[str]) -> None:
            for k in keys:
                c[k]

        def puts(keys: Sequence[str], value: Any) -> None:
            for k in keys:
                c[k] = value

        return fill, gets, puts

    return make


def _functools(n: int) -> tuple[Callable[..., None], Callable[..., None], Callable[..., None]]:
    stored = object()

    @functools.lru_cache(maxsize=n)
    def f(key: str) -> Any:
        return stored

    def fill(keys: Sequence[str], _value: Any) -> None:
        for k in keys:
            f(k)
        size = f.cache_info().currsize
        check(size == n, f"functools.lru_cache: {size} entries after the fill, expected {n}")

    def gets(keys: Sequence[str]) -> None:
        for k in keys:
            f(k)

    def puts(keys: Sequence[str], _value: Any) -> None:
        for k in keys:
            f(k)

    return fill, gets, puts


IMPLEMENTATIONS: tuple[Implementation, ...] = (
    Implementation("ours", "audit_db_core.cache.LRUCache: OrderedDict LRU, TTL + byte bound per entry, locked",
                   _ours),
    Implementation("cachetools_lru", f"cachetools.LRUCache {cachetools.__version__} (no TTL, not thread-safe)",
                   _cachetools(lambda n: cachetools.LRUCache(maxsize=n), "cachetools.LRUCache")),
    Implementation("cachetools_ttl", f"cachetools.TTLCache {cachetools.__version__} (LRU + TTL, not thread-safe)",
                   _cachetools(lambda n: cachetools.TTLCache(maxsize=n, ttl=TTL_SECONDS), "cachetools.TTLCache")),
    Implementation("functools_lru_cache", "functools.lru_cache (C; get = a hitting call, put = a missing call)",
                   _functools),
)


def timed_loop(loop: Callable[[], None]) -> float:
    gc.collect()
    gc.disable()
    try:
        started = time.perf_counter()
        loop()
        return time.perf_counter() - started
    finally:
        gc.enable()


def measure_size(n: int, ops: int, repeats: int, seed: int) -> dict[str, dict[str, Any]]:
    """Every implementation at ``n`` entries. Repeats are interleaved (repeat 1 of each implementation, then
    repeat 2 …), so a burst of other work on the machine hits them alike; each gets the same keys in the same
    order."""
    rng = random.Random(f"{seed}:{n}")
    keys = [f"audit-db:bench:page:{i:012d}" for i in range(n)]
    get_runs = [rng.choices(keys, k=ops) for _ in range(repeats)]
    new_keys = [[f"audit-db:bench:page:{n + r * ops + i:012d}" for i in range(ops)] for r in range(repeats)]
    value = ("a cached page",)
    loops = {impl.name: impl.make(n) for impl in IMPLEMENTATIONS}
    fill_seconds = {name: timed_loop(lambda fill=fill: fill(keys, value)) for name, (fill, _, _) in loops.items()}
    get_seconds: dict[str, list[float]] = {name: [] for name in loops}
    put_seconds: dict[str, list[float]] = {name: [] for name in loops}
    for run in get_runs:
        for name, (_, gets, _) in loops.items():
            get_seconds[name].append(timed_loop(lambda gets=gets, run=run: gets(run)))
    for run in new_keys:  # after every get: each put evicts, so the keys read above would be gone
        for name, (_, _, puts) in loops.items():
            put_seconds[name].append(timed_loop(lambda puts=puts, run=run: puts(run, value)))
    del loops, keys, get_runs, new_keys
    gc.collect()
    out = {}
    for name in get_seconds:
        get_s, put_s = statistics.median(get_seconds[name]), statistics.median(put_seconds[name])
        out[name] = {
            "entries": n,
            "fill_seconds": round(fill_seconds[name], 4),
            "get_ops_per_second": round(ops / get_s, 1),
            "put_ops_per_second": round(ops / put_s, 1),
            "get_ns_per_op": round(get_s / ops * 1e9, 1),
            "put_ns_per_op": round(put_s / ops * 1e9, 1),
        }
        log(f"l1 {name} n={n}: get {ops / get_s:,.0f} ops/s, put {ops / put_s:,.0f} ops/s")
    return out


def bench_l1(sizes: Sequence[int], ops: int, repeats: int, seed: int) -> dict[str, Any]:
    measured = {n: measure_size(n, ops, repeats, seed) for n in sizes}
    impls: dict[str, dict[str, Any]] = {}
    for impl in IMPLEMENTATIONS:
        per_size = {str(n): measured[n][impl.name] for n in sizes}
        first, last = per_size[str(sizes[0])], per_size[str(sizes[-1])]
        impls[impl.name] = {
            "description": impl.description,
            "sizes": per_size,
            "flatness": {op: round(last[f"{op}_ops_per_second"] / first[f"{op}_ops_per_second"], 3)
                         for op in ("get", "put")},
        }
    ratios = {}
    for n in sizes:
        ours, peer = impls["ours"]["sizes"][str(n)], impls["cachetools_lru"]["sizes"][str(n)]
        ratios[str(n)] = {f"{op}_ours_over_cachetools_lru": round(ours[f"{op}_ops_per_second"]
                                                                  / peer[f"{op}_ops_per_second"], 3)
                          for op in ("get", "put")}
    return {"sizes": list(sizes), "ops": ops, "repeats": repeats, "entry_bytes_charged": ENTRY_SIZE,
            "implementations": impls, "ratios": ratios}


# -- 2. query latency per tier ---------------------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def summary_ms(seconds: Sequence[float]) -> dict[str, Any]:
    values = sorted(s * 1000 for s in seconds)
    return {
        "samples": len(values),
        "p50_ms": round(percentile(values, 50), 4),
        "p95_ms": round(percentile(values, 95), 4),
        "p99_ms": round(percentile(values, 99), 4),
        "mean_ms": round(statistics.fmean(values), 4),
        "max_ms": round(values[-1], 4),
    }


def quotient(a: float, b: float) -> float:
    return round(a / b, 2) if b > 0 else float("inf")


def bench_settings(url: str, replica_urls: list[str], redis_url: str | None, prefix: str) -> AuditSettings:
    """Settings pinned to what the benchmark assumes, whatever ``AUDIT_*`` variables the environment holds; the L2
    values are sealed with a key of the run's own."""
    return AuditSettings(
        database_url=url, replica_urls=replica_urls, redis_url=redis_url, application_name=APPLICATION_NAME,
        cache={"enabled": True, "key_prefix": prefix, "l1_max_entries": 10_000, "l1_max_bytes": 64 << 20,
               "key": secrets.token_hex(32)},
    )


def measure_sealing(db: AuditDatabase, query: AuditQuery, redis_url: str, repeats: int) -> dict[str, Any]:
    """What sealing costs on one cached page as L2 holds it: AES-256-GCM seal and open of its compressed MessagePack
    (median of ``repeats``, in µs), against the page's sizes. Untimed by the tiers above; a breakdown of them."""
    import redis

    key = db.cache.redis_key(db.cache.key("page", query.filters(), {"limit": query.limit, "cursor": None}))
    check(key is not None, "the cache's deployment identity is not known after the lookups")
    assert key is not None
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    try:
        blob = client.get(key)
    finally:
        client.close()
    check(blob is not None, "the first query's page is not in Redis")
    seal = CacheSeal(db.settings.cache.key_bytes)  # type: ignore[arg-type]
    compressed, created, ttl = seal.unseal(key, blob)
    seal_s, open_s = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        sealed = seal.seal(key, compressed, created_ms=created, ttl_ms=ttl)
        middle = time.perf_counter()
        seal.unseal(key, sealed)
        seal_s.append(middle - started)
        open_s.append(time.perf_counter() - middle)
    return {
        "repeats": repeats,
        "sealed_bytes": len(blob),
        "compressed_bytes": len(compressed),
        # The envelope's own size: stated after the marker when LZ4-compressed (bit 0), else what follows it.
        "envelope_bytes": int.from_bytes(compressed[1:5], "big") if compressed[0] & 1 else len(compressed) - 1,
        "seal_us_p50": round(statistics.median(seal_s) * 1e6, 2),
        "open_us_p50": round(statistics.median(open_s) * 1e6, 2),
    }


def drop_redis_keys(redis_url: str | None, prefix: str) -> int:
    """Delete every key under this run's own prefix (SCAN + UNLINK; the prefix is unique to the run)."""
    if redis_url is None:
        return 0
    import redis

    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    try:
        removed = 0
        batch: list[bytes] = []
        for key in client.scan_iter(match=f"{prefix}:*", count=500):
            batch.append(key)
            if len(batch) >= 500:
                removed += client.unlink(*batch)
                batch = []
        if batch:
            removed += client.unlink(*batch)
        return removed
    finally:
        client.close()


def ids(page: Any) -> list[uuid.UUID]:
    return [e.event_id for e in page.events]


def bench_latency(servers: common.ReadServers, args: argparse.Namespace) -> dict[str, Any]:
    prefix = f"audit-bench-{uuid.uuid4().hex[:8]}"
    with read_database(servers, "cache", rows=args.rows, days=args.days, principals=args.principals,
                       application_name=APPLICATION_NAME, log=log) as data:
        settings = bench_settings(data.url, data.replica_urls, servers.redis_url, prefix)
        queries = [AuditQuery(principal_id=principal(k), since=data.today - dt.timedelta(days=args.window_days),
                              until=data.today, limit=args.page_size)
                   for k in range(min(args.shapes, args.principals))]
        try:
            with AuditDatabase(settings) as db:
                result = measure_tiers(db, queries, args, has_l2=servers.redis_url is not None)
                if servers.redis_url is not None:
                    result["l2_sealing"] = measure_sealing(db, queries[0], servers.redis_url, repeats=1000)
                    if args.compare_rev:
                        result["compare"] = compare_caches(db, queries, args.compare_rev, args)
        finally:
            drop_redis_keys(servers.redis_url, prefix)
            drop_redis_keys(servers.redis_url, f"{prefix}-ab")  # the caches --compare-rev times
        return {**result, "cache_key_prefix": prefix}


#: The cache's own modules, in an order where each one's imports among them come first: a revision's cache.py is
#: loaded with the revision's versions of these (those it has), the rest of the package from this checkout.
CACHE_MODULES = ("cache_scopes", "cache_lru", "cache_seal", "cache_codec", "cache")


def cache_module_at(rev: str) -> ModuleType:
    """``audit_db_core/cache.py`` as it was at git revision ``rev``, loaded beside this checkout's together with the
    cache's other modules as of ``rev`` (:data:`CACHE_MODULES`); its imports of the rest of the package resolve to
    this checkout's modules."""
    repo = Path(__file__).resolve().parent.parent
    tag = uuid.uuid4().hex[:8]
    replaced: dict[str, ModuleType | None] = {}
    module = None
    try:
        for part in CACHE_MODULES:
            path = f"audit_db_core/{part}.py"
            shown = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=repo, capture_output=True, text=True)
            if shown.returncode != 0:
                if part == "cache":
                    raise CheckFailed(f"--compare-rev {rev}: cannot read {path} at that revision "
                                      f"({shown.stderr.strip() or 'git show failed'})")
                continue  # not a module of its own yet at that revision
            module = ModuleType(f"audit_db_core._{part}_at_{tag}")
            module.__file__ = f"{rev}:{path}"
            sys.modules[module.__name__] = module  # dataclasses look their module up
            exec(compile(shown.stdout, module.__file__, "exec"), module.__dict__)  # noqa: S102 - own history
            if part != "cache":  # the next ones import this version of it
                replaced.setdefault(f"audit_db_core.{part}", sys.modules.get(f"audit_db_core.{part}"))
                sys.modules[f"audit_db_core.{part}"] = module
    except OSError as exc:
        raise CheckFailed(f"--compare-rev {rev}: cannot run git ({exc})") from None
    finally:
        for name, previous in replaced.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous
    assert module is not None
    return module


def compare_caches(db: AuditDatabase, queries: list[AuditQuery], rev: str, args: argparse.Namespace) -> dict[str, Any]:
    """The query cache of this checkout against the one of ``rev``, in one process, on the same Redis and the
    same pages (those of ``queries``, as the database returned them): ``cache.key`` + ``cache.get`` answered by L1,
    and by L2 (``l1.clear()`` untimed before each), ``--lookups`` each, lookup by lookup, alternating which goes
    first (the machine's drift then weighs on both alike).
    Only the cache's code differs; the rest of a query's path (routing, rebuilding the page) is the same in both."""
    from audit_db_core.database import _page_to_json
    from audit_db_core.migrate import SCHEMA_VERSION

    old_module = cache_module_at(rev)
    # A prefix of its own, removed by bench_latency.
    settings = db.settings.with_overrides(cache={"key_prefix": f"{db.settings.cache.key_prefix}-ab"})
    caches: dict[str, Any] = {"this": QueryCache(settings, schema_version=SCHEMA_VERSION,
                                                 identity=lambda: db.deployment_id)}
    extra = {"identity": lambda: db.deployment_id} if "identity" in inspect.signature(
        old_module.QueryCache).parameters else {}
    caches["rev"] = old_module.QueryCache(settings, schema_version=SCHEMA_VERSION, **extra)
    shapes = []
    for q in queries:
        page = db.query(q, consistency="eventual", use_cache=False)
        scope = read_scope(q.since, q.until)
        shapes.append((q.filters(), {"limit": q.limit, "cursor": None}, scope, _page_to_json(page)))
    samples: dict[tuple[str, str], list[float]] = {(n, t): [] for n in caches for t in ("l1", "l2")}
    try:
        for cache in caches.values():
            cache.open()
            check(cache.wait_synced(10), "a compared cache did not connect to Redis")
            for filters, params, scope, doc in shapes:
                cache.invalidate(scope, 1)  # counters in Redis, as after writes
                cache.set(cache.key("page", filters, params), doc, scope=scope, limits=tuple(2 for _ in scope),
                          closed=True)
        for tier in ("l2", "l1"):
            if tier == "l1":
                for cache in caches.values():
                    for filters, params, scope, _ in shapes:  # untimed: every page back in L1
                        cache.get(cache.key("page", filters, params), scope)
            gc.collect()
            gc.disable()
            try:
                for i in range(args.lookups):  # lookup by lookup, alternating which cache goes first
                    filters, params, scope, doc = shapes[i % len(shapes)]
                    for name in (("this", "rev") if i % 2 == 0 else ("rev", "this")):
                        cache = caches[name]
                        if tier == "l2":
                            cache.l1.clear()
                        started = time.perf_counter()
                        hit = cache.get(cache.key("page", filters, params), scope)
                        samples[(name, tier)].append(time.perf_counter() - started)
                        check(hit is not None and hit.tier == tier and hit.value == doc,
                              f"compared cache {name}: a {tier} lookup was not a correct {tier} hit")
            finally:
                gc.enable()
    finally:
        for cache in caches.values():
            cache.clear()
            cache.close()

    def summary_us(seconds: list[float]) -> dict[str, float]:
        values = sorted(x * 1e6 for x in seconds)
        return {"p50_us": round(percentile(values, 50), 2), "p95_us": round(percentile(values, 95), 2),
                "p99_us": round(percentile(values, 99), 2), "mean_us": round(statistics.fmean(values), 2)}

    out: dict[str, Any] = {"rev": rev, "lookups_per_tier": args.lookups, "tiers": {}}
    for tier in ("l1", "l2"):
        this, old = summary_us(samples[("this", tier)]), summary_us(samples[("rev", tier)])
        out["tiers"][tier] = {"this": this, "rev": old,
                              "this_over_rev": {k: round(this[k] / old[k], 3) for k in this}}
        log(f"compare {tier}: p50 {this['p50_us']:.1f} us here, {old['p50_us']:.1f} us at {rev}")
    return out


def measure_tiers(db: AuditDatabase, queries: list[AuditQuery], args: argparse.Namespace, *,
                  has_l2: bool) -> dict[str, Any]:
    db.router.wait_measured()
    if has_l2:
        check(db.cache.wait_synced(10), "the cache's invalidation channel did not connect to Redis")
    expected: dict[int, list[uuid.UUID]] = {}
    for i, q in enumerate(queries):  # warm-up (untimed): PostgreSQL's buffers, the pools, then L1 and L2
        expected[i] = ids(db.query(q, consistency="eventual", use_cache=False))
        check(len(expected[i]) > 0, f"query {i} ({q.principal_id}) found no events")
        page = db.query(q, consistency="eventual")
        check(ids(page) == expected[i], f"query {i}: the first cached read differs from the database's page")
    db.cache.reset_stats()
    before = db.router.snapshot()["reads"]
    tiers = ["database", "l2", "l1"] if has_l2 else ["database", "l1"]
    samples: dict[str, list[float]] = {t: [] for t in tiers}
    sources: dict[str, dict[str, int]] = {t: {} for t in tiers}
    order = list(range(len(queries)))
    rng = random.Random(args.seed)
    done = 0
    while done < args.lookups:
        rng.shuffle(order)
        for i in order[: args.lookups - done]:
            q = queries[i]
            for tier in tiers:
                if tier == "l2":
                    db.cache.l1.clear()
                started = time.perf_counter()
                page = db.query(q, consistency="eventual", use_cache=tier != "database")
                elapsed = time.perf_counter() - started
                source = page.extra["source"]
                sources[tier][source] = sources[tier].get(source, 0) + 1
                if tier == "database":
                    check(not source.startswith("cache"), f"an uncached query was served by {source}")
                else:
                    check(source == f"cache-{tier}", f"a lookup meant for {tier} was served by {source}")
                check(ids(page) == expected[i], f"query {i} via {tier}: events differ from the database's page")
                samples[tier].append(elapsed)
        done = min(args.lookups, done + len(order))
    after = db.router.snapshot()["reads"]
    stats = db.cache.stats()
    results = {t: {**summary_ms(samples[t]), "served_by": sources[t]} for t in tiers}
    db_s = results["database"]
    ratios = {"database_over_l1_p50": quotient(db_s["p50_ms"], results["l1"]["p50_ms"]),
              "database_over_l1_p99": quotient(db_s["p99_ms"], results["l1"]["p99_ms"])}
    if has_l2:
        ratios["database_over_l2_p50"] = quotient(db_s["p50_ms"], results["l2"]["p50_ms"])
        ratios["database_over_l2_p99"] = quotient(db_s["p99_ms"], results["l2"]["p99_ms"])
    for t in tiers:
        log(f"latency {t}: p50 {results[t]['p50_ms']:.3f} ms, p99 {results[t]['p99_ms']:.3f} ms")
    return {
        "shapes": len(queries),
        "lookups_per_tier": args.lookups,
        "page_size": args.page_size,
        "window_days": args.window_days,
        "events_per_page": round(statistics.fmean(len(v) for v in expected.values()), 1),
        "tiers": results,
        "l2_measured": has_l2,
        "ratios": ratios,
        "cache_stats": stats,
        "reads_by_server": {k: after.get(k, 0) - before.get(k, 0) for k in after},
    }


# -- report --------------------------------------------------------------------------------------------------------


def targets(latency: dict[str, Any]) -> dict[str, dict[str, Any]]:
    tiers = latency["tiers"]
    cached_p99 = max(tiers[t]["p99_ms"] for t in ("l1", "l2") if t in tiers)
    return {
        "l1_hit_p99_ms": {"value": tiers["l1"]["p99_ms"], "target": L1_TARGET_P99_MS,
                          "met": tiers["l1"]["p99_ms"] < L1_TARGET_P99_MS},
        "cached_p99_ms": {"value": cached_p99, "target": CACHED_TARGET_P99_MS, "met": cached_p99 < CACHED_TARGET_P99_MS,
                          "tiers": [t for t in ("l1", "l2") if t in tiers]},
    }


#: The server settings its figures depend on, reported with them.
_SERVER_SETTINGS = (
    "fsync", "synchronous_commit", "shared_buffers", "work_mem", "plan_cache_mode",
)


def redis_version(redis_url: str | None) -> str | None:
    if redis_url is None:
        return None
    import redis

    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    try:
        return str(client.info("server").get("redis_version"))
    finally:
        client.close()


def environment(servers: common.ReadServers, args: argparse.Namespace) -> dict[str, Any]:
    import redis

    return {
        "date_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "python_version": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "psycopg_version": psycopg.__version__,
        "psycopg_impl": psycopg.pq.__impl__,
        "redis_py_version": redis.__version__,
        "cachetools_version": cachetools.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "server": servers.description,
        **common.server_facts(servers.database_url, _SERVER_SETTINGS, application_name=APPLICATION_NAME),
        "replicas": len(servers.replica_urls),
        "redis_server_version": redis_version(servers.redis_url),
        "rows": args.rows,
        "days": args.days,
        "principals": args.principals,
        "seed": args.seed,
    }


def format_table(report: dict[str, Any]) -> str:
    env, l1, lat = report["environment"], report["l1"], report["latency"]
    sizes = [str(n) for n in l1["sizes"]]
    lines = [
        f"cache benchmark  {env['date_utc']}  PostgreSQL {env['server_version']}  Redis "
        f"{env['redis_server_version'] or '-'}  Python {env['python_version']}  cpus {env['cpu_count']}",
        f"server: {env['server']}",
        f"load average (1/5/15 min) before {env['load_average_before']}, after {env['load_average_after']}",
        "",
        f"1. L1 LRU: operations per second (median of {l1['repeats']} x {l1['ops']:,} ops; gc off while timed)",
        f"  {'implementation':<22}{'op':<5}" + "".join(f"{int(n):>14,}" for n in sizes) + f"{'flatness':>10}",
    ]
    for name, impl in l1["implementations"].items():
        for op in ("get", "put"):
            lines.append(f"  {name:<22}{op:<5}" + "".join(f"{impl['sizes'][n][f'{op}_ops_per_second']:>14,.0f}"
                                                         for n in sizes) + f"{impl['flatness'][op]:>10.3f}")
    for op in ("get", "put"):
        lines.append(f"  {'ours / cachetools_lru':<22}{op:<5}" + "".join(
            f"{l1['ratios'][n][f'{op}_ours_over_cachetools_lru']:>14.3f}" for n in sizes))
    lines += [
        "",
        f"2. AuditDatabase.query(consistency='eventual'): {lat['lookups_per_tier']} lookups per tier, "
        f"{lat['shapes']} query shapes, pages of {lat['page_size']} ({lat['events_per_page']} events on average), "
        f"{env['rows']:,} rows over {env['days']} days",
        f"  {'tier':<10}{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}{'mean ms':>10}{'max ms':>10}   served by",
    ]
    for tier, s in lat["tiers"].items():
        served = ", ".join(f"{k} {v}" for k, v in s["served_by"].items())
        lines.append(f"  {tier:<10}{s['p50_ms']:>10.3f}{s['p95_ms']:>10.3f}{s['p99_ms']:>10.3f}{s['mean_ms']:>10.3f}"
                     f"{s['max_ms']:>10.3f}   {served}")
    if not lat["l2_measured"]:
        lines.append("  l2: not measured (no Redis configured)")
    lines.append("  " + "   ".join(f"{k.replace('_over_', ' / ')} = {v:,.1f}" for k, v in lat["ratios"].items()))
    stats = lat["cache_stats"]
    lines.append(f"  cache stats: hit ratio {stats['hit_ratio']}, l1 hits {stats['l1_hits']}, l2 hits "
                 f"{stats['l2_hits']}, misses l1 {stats['l1_misses']} / l2 {stats['l2_misses']}, "
                 f"bypassed {stats['bypassed']}, refused {stats.get('l2_rejected', 0)}")
    sealing = lat.get("l2_sealing")
    if sealing:
        lines.append(f"  L2 value of a page: {sealing['envelope_bytes']:,} B MessagePack, {sealing['compressed_bytes']:,} B "
                     f"compressed, {sealing['sealed_bytes']:,} B sealed; AES-256-GCM seal "
                     f"{sealing['seal_us_p50']:.1f} us, open {sealing['open_us_p50']:.1f} us (p50)")
    compare = lat.get("compare")
    if compare:
        lines.append(f"  the cache's code against {compare['rev']} ({compare['lookups_per_tier']} lookups per tier, "
                     f"one process, same Redis and pages):")
        for tier, c in compare["tiers"].items():
            ratio = c["this_over_rev"]
            lines.append(f"    {tier}: p50 {c['this']['p50_us']:.1f} us here, {c['rev']['p50_us']:.1f} us there; "
                         f"here / there p50 {ratio['p50_us']:.3f}, mean {ratio['mean_us']:.3f}, "
                         f"p99 {ratio['p99_us']:.3f}")
    lines.append("")
    for key, t in report["targets"].items():
        verdict = "met" if t["met"] else "MISSED"
        lines.append(f"{key:<18}{t['value']:>10.3f} ms   target < {t['target']:g} ms   {verdict}")
    return "\n".join(lines)


# -- main ----------------------------------------------------------------------------------------------------------


def sizes_arg(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated positive integers, not {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"must be comma-separated positive integers, not {text!r}")
    return tuple(sorted(set(values)))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", type=sizes_arg, default=DEFAULT_SIZES,
                        help="L1 sizes in entries, comma-separated (1000,100000,1000000)")
    parser.add_argument("--ops", type=positive_int, default=200_000, help="timed gets and puts per repeat (200000)")
    parser.add_argument("--repeats", type=positive_int, default=5, help="timed repeats, median reported (5)")
    parser.add_argument("--rows", type=positive_int, default=100_000, help="events in the queried table (100000)")
    parser.add_argument("--days", type=positive_int, default=30, help="UTC days before today they span (30)")
    parser.add_argument("--principals", type=positive_int, default=200, help="distinct principals (200)")
    parser.add_argument("--shapes", type=positive_int, default=50, help="distinct queries, one principal each (50)")
    parser.add_argument("--window-days", type=positive_int, default=7, help="days each query covers (7)")
    parser.add_argument("--page-size", type=positive_int, default=50, help="events per page (50)")
    parser.add_argument("--lookups", type=positive_int, default=3000, help="timed lookups per tier (3000)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the key and query order (1)")
    parser.add_argument("--compare-rev", metavar="REV",
                        help="also time the query cache of git revision REV against this checkout's (needs Redis)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help=f"JSON report ({DEFAULT_OUTPUT})")
    args = parser.parse_args(argv)
    if args.window_days > args.days:
        parser.error("--window-days cannot exceed --days")
    check_principals(parser, args.principals)
    return args


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def run(args: argparse.Namespace) -> dict[str, Any]:
    load_before = load_average()
    log(f"L1: sizes {', '.join(map(str, args.sizes))}, {args.ops} ops x {args.repeats}")
    l1 = bench_l1(args.sizes, args.ops, args.repeats, args.seed)
    with common.read_servers(log, durable=False) as servers:
        latency = bench_latency(servers, args)
        env = {**environment(servers, args), "load_average_before": load_before,
               "load_average_after": load_average()}
    checked = targets(latency)
    ratios = {f"l1_{op}_ours_over_cachetools_lru_at_{n}": r[f"{op}_ours_over_cachetools_lru"]
              for n, r in l1["ratios"].items() for op in ("get", "put")}
    ratios.update(latency["ratios"])
    return {"benchmark": "cache", "environment": env, "l1": l1, "latency": latency, "targets": checked,
            "ratios": ratios}


def main(argv: Sequence[str] | None = None) -> int:
    return common.run_main(parse_args(argv), run, format_table, log, check_failure=CheckFailed)


if __name__ == "__main__":
    sys.exit(main())
