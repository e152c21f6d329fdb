"""Read-path benchmark: an uncached ``AuditDatabase.query`` against raw psycopg running the same SQL, and the cache
tiers, with the network round trips of each.

What is measured
----------------
A month of events (the calendar month before the current one, generated in SQL with genuine content hashes, plus
the days of this month until today) in a scratch database; ``--shapes`` queries, each one principal over that whole
month, ``limit=--page-size`` (100): every page is full and has a next page. Four ways of getting a page, interleaved
lookup by lookup (the order rotates from one lookup to the next), garbage collector off while timed:

``raw``
    Raw psycopg: ``conn.execute(sql, params).fetchall()`` on a plain autocommit connection to the primary (opened
    with the library's connection options), the very SQL text and parameters the library sends
    (``select_statement(query, limit)``, rendered once per shape) — tuples, no events, no pool. The baseline.
``query``
    ``db.query(q, use_cache=False)`` (``consistency="strong"``: the primary): pool checkout, breaker, routing, SQL,
    round trips, ``StoredAuditEvent`` objects and the ``QueryPage``.
``l2``
    ``db.query(q, consistency="eventual")`` answered by Redis: ``db.cache.l1.clear()`` (untimed) before each lookup.
    Whatever the cache's current encoding costs (Redis round trip, open the sealed value, decompress, decode, rebuild
    the page).
``l1``
    The same query answered by the in-process cache (an untimed lookup first puts the page back in L1, which an
    ``l2`` lookup of another shape may have emptied).

Also timed, for transparency, outside the table: ``raw_tuned``, raw psycopg on a connection set up as the library
sets up its pooled connections (``configure_connection``: ``json``/``jsonb`` through ``load_json``) and asking for
binary results as the library does — ``query`` over it is what the library costs beyond its connection set-up.

Every lookup checks where it was served (``page.extra["source"]``) and that its events are raw's rows (same event
ids, same order); the first page of each shape is also checked for genuine content hashes (``hash_matches``) and
tz-aware UTC times. A failed check exits with status 2 and writes no report. Before timing, each method runs every
shape ``--warmup`` times (PostgreSQL's buffers, the pools, psycopg's prepared statements — it prepares a statement
on its 5th execution on a connection, for raw and the library alike — and the caches).

Round trips are counted, not timed, through :class:`benchmarks.roundtrips.RoundTripProxy` (a TCP relay that counts
how often the client waited for the server), on an ``AuditDatabase`` of their own without cache, after a warm-up,
``--count-queries`` queries each: ``raw`` and ``query`` as above, and with a replica ``query`` with
``consistency="eventual"`` (served by the replica) and with ``after_lsn`` (the replica must have replayed a
position: its replay position is read before the query).

The L2 encodings (:mod:`benchmarks.cache_codecs`: stdlib JSON, orjson, msgspec JSON, msgspec MessagePack, each
plain, zlib and LZ4) are compared on the first shape's page, ``--codec-repeats`` times each (``l2_codecs``).

Targets (issue #13; printed met / MISSED, never an exit status): ``query`` p50 <= 1.25 x raw, p99 <= 1.5 x raw,
1 round trip per uncached query; an L2 hit p50 <= 0.7 x raw.

Servers: with ``AUDIT_BENCH_DATABASE_URL`` set (plus optional ``AUDIT_BENCH_REPLICA_URLS`` and
``AUDIT_BENCH_REDIS_URL``) those servers are used (a scratch database of its own, Redis keys under a prefix of the
run, deleted at the end); otherwise a local primary + streaming replica + Redis (``audit_local``) is started in a
temporary directory and always stopped and removed. Without Redis the ``l2`` row is not measured.

Run it from the repository root::

    python benchmarks/read_path.py                      # 60,000 rows, 20 shapes, 2,000 lookups per method
    python benchmarks/read_path.py --rows 6000 --principals 20 --lookups 200 --output /tmp/read_path.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import random
import secrets
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: make `benchmarks` importable

from benchmarks import cache_codecs, common  # noqa: E402
from benchmarks.cache import drop_redis_keys, load_average, quotient, summary_ms  # noqa: E402
from benchmarks.common import positive_int  # noqa: E402
from benchmarks.read_data import (  # noqa: E402
    CheckFailed,
    check_principals,
    principal,
    read_database,
    utc_midnight,
    wait_replayed,
)
from benchmarks.roundtrips import RoundTripProxy  # noqa: E402
from audit_db_core import AuditDatabase, AuditQuery, AuditSettings  # noqa: E402
from audit_db_core.cache import CacheSeal, read_scope  # noqa: E402
from audit_db_core.connections import configure_connection, connect_kwargs  # noqa: E402
from audit_db_core.query import select_statement  # noqa: E402

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "read_path.json"
APPLICATION_NAME = "audit-bench-read-path"
METHODS = ("raw", "query", "l2", "l1")
QUERY_P50_TARGET = 1.25
QUERY_P99_TARGET = 1.5
ROUND_TRIPS_TARGET = 1
L2_P50_TARGET = 0.7
CODEC_STORED = "msgspec_msgpack+lz4"  # what the cache writes (audit_db_core.cache_codec)
CODEC_BASELINE = "msgspec_json+zlib"  # what it wrote before (cache format 3)
_SERVER_SETTINGS = ("fsync", "shared_buffers", "plan_cache_mode", "TimeZone", "jit")


def log(message: str) -> None:
    print(f"[read_path] {message}", file=sys.stderr, flush=True)


def check(ok: bool, message: str) -> None:
    if not ok:
        raise CheckFailed(message)


def month_before(today: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """The calendar month before ``today``'s, as [first day, first day of the next month) in UTC."""
    end = today.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return (end - dt.timedelta(days=1)).replace(day=1), end


class Shape:
    """One query and what raw psycopg sends for it (rendered once: what a hand-written query would be)."""

    def __init__(self, query: AuditQuery, limit: int, raw_conn: psycopg.Connection[Any]) -> None:
        self.query = query
        self.limit = limit
        stmt, self.params = select_statement(query, limit)
        self.sql = stmt.as_bytes(raw_conn)
        self.ids: list[uuid.UUID] = []


def ids(page: Any) -> list[uuid.UUID]:
    return [e.event_id for e in page.events]


def check_page(shape: Shape, page: Any, method: str, source: str) -> None:
    check(page.extra.get("source") == source,
          f"{method}: {shape.query.principal_id} was served by {page.extra.get('source')}, expected {source}")
    check(ids(page) == shape.ids, f"{method}: {shape.query.principal_id}: events differ from raw psycopg's rows")
    check(page.next_cursor is not None, f"{method}: {shape.query.principal_id}: a full page without a next cursor")


def check_events(shape: Shape, page: Any) -> None:
    """What every read guarantees, checked on one page: stored hashes that match the fields, aware UTC times."""
    for e in page.events:
        check(e.hash_matches, f"{shape.query.principal_id}: event {e.event_id} read back with a different hash")
        check(e.event_time.utcoffset() == dt.timedelta(0), f"event {e.event_id}: event_time is not UTC")
        check(e.ingested_at is None or e.ingested_at.utcoffset() is not None, f"event {e.event_id}: naive ingested_at")


def lookup_functions(db: AuditDatabase, raw_conn: psycopg.Connection[Any], tuned_conn: psycopg.Connection[Any],
                     has_l2: bool) -> dict[str, Callable[[Shape], Any]]:
    def raw(shape: Shape) -> Any:
        return raw_conn.execute(shape.sql, shape.params).fetchall()

    def raw_tuned(shape: Shape) -> Any:
        return tuned_conn.execute(shape.sql, shape.params, binary=True).fetchall()

    def query(shape: Shape) -> Any:
        return db.query(shape.query, use_cache=False)

    def cached(shape: Shape) -> Any:
        return db.query(shape.query, consistency="eventual")

    out: dict[str, Callable[[Shape], Any]] = {"raw": raw, "query": query}
    if has_l2:
        out["l2"] = cached
    out["l1"] = cached
    out["raw_tuned"] = raw_tuned
    return out


def check_result(method: str, shape: Shape, result: Any) -> None:
    if method.startswith("raw"):
        check([r[0] for r in result[: shape.limit]] == shape.ids and len(result) == shape.limit + 1,
              f"raw: {shape.query.principal_id}: rows changed between lookups")
    else:
        check_page(shape, result, method, {"query": "primary", "l2": "cache-l2", "l1": "cache-l1"}[method])


def measure(db: AuditDatabase, raw_conn: psycopg.Connection[Any], tuned_conn: psycopg.Connection[Any],
            shapes: list[Shape], args: argparse.Namespace, *, has_l2: bool) -> dict[str, Any]:
    functions = lookup_functions(db, raw_conn, tuned_conn, has_l2)
    methods = list(functions)
    if has_l2:
        check(db.cache.wait_synced(10), "the cache's invalidation channel did not connect to Redis")
    for shape in shapes:  # the expected answer, and the guarantees on it (untimed)
        rows = functions["raw"](shape)
        shape.ids = [r[0] for r in rows[: shape.limit]]
        check(len(rows) == shape.limit + 1,
              f"{shape.query.principal_id} has {len(rows)} rows in the month; every shape needs more than a page")
        check_events(shape, db.query(shape.query, use_cache=False))
        first = db.query(shape.query, consistency="eventual")  # a miss: fills L1 and L2
        check(ids(first) == shape.ids, f"{shape.query.principal_id}: the first cached read differs from raw's rows")
    for _ in range(args.warmup):  # warm-up (untimed): buffers, pools, prepared statements, L1 and L2
        for shape in shapes:
            for method in methods:
                if method == "l2":
                    db.cache.l1.clear()
                check_result(method, shape, functions[method](shape))
    db.cache.reset_stats()
    samples: dict[str, list[float]] = {m: [] for m in methods}
    sources: dict[str, dict[str, int]] = {m: {} for m in methods}
    rng = random.Random(args.seed)
    order = list(range(len(shapes)))
    perf = time.perf_counter
    i = 0
    gc.collect()
    gc.disable()
    try:
        while i < args.lookups:
            rng.shuffle(order)
            for k in order:
                if i >= args.lookups:
                    break
                shape = shapes[k]
                start = i % len(methods)
                for method in methods[start:] + methods[:start]:  # the order rotates lookup by lookup
                    fn = functions[method]
                    if method == "l2":
                        db.cache.l1.clear()
                    elif method == "l1":
                        fn(shape)  # untimed: back in L1 if an l2 lookup just emptied it
                    started = perf()
                    result = fn(shape)
                    samples[method].append(perf() - started)
                    check_result(method, shape, result)
                    if not method.startswith("raw"):
                        source = result.extra["source"]
                        sources[method][source] = sources[method].get(source, 0) + 1
                    del result  # untimed: freeing one method's rows must not be timed as the next one's
                i += 1
                if i % 200 == 0:
                    gc.enable()  # untimed: between lookups
                    gc.collect()
                    gc.disable()
    finally:
        gc.enable()
    results = {m: {**summary_ms(samples[m]), **({} if m.startswith("raw") else {"served_by": sources[m]})}
               for m in methods}
    raw_s = results["raw"]
    for m in methods:
        results[m]["over_raw_p50"] = quotient(results[m]["p50_ms"], raw_s["p50_ms"])
        results[m]["over_raw_p99"] = quotient(results[m]["p99_ms"], raw_s["p99_ms"])
        log(f"{m}: p50 {results[m]['p50_ms']:.3f} ms, p99 {results[m]['p99_ms']:.3f} ms "
            f"({results[m]['over_raw_p50']} x raw at p50)")
    tuned = results["raw_tuned"]
    return {"lookups_per_method": args.lookups, "methods": results, "l2_measured": has_l2,
            "query_over_raw_tuned": {p: quotient(results["query"][f"{p}_ms"], tuned[f"{p}_ms"]) for p in ("p50", "p99")},
            "cache_stats": db.cache.stats()}


def compare_codecs(db: AuditDatabase, shape: Shape, redis_url: str | None, prefix: str,
                   args: argparse.Namespace) -> dict[str, Any] | None:
    """The L2 encodings of :mod:`benchmarks.cache_codecs` on the first shape's page, as the database returns it
    (needs Redis: each candidate's sealed value is also fetched with a ``GET``)."""
    if redis_url is None:
        return None
    import redis

    page = db.query(shape.query, use_cache=False)
    assert shape.query.since is not None and shape.query.until is not None
    seal = CacheSeal(db.settings.cache.key_bytes)  # type: ignore[arg-type]
    client = redis.Redis.from_url(redis_url)
    try:
        out = cache_codecs.compare(page, read_scope(shape.query.since, shape.query.until), seal, client, prefix,
                                   repeats=args.codec_repeats)
    finally:
        client.close()
    base = out["candidates"][CODEC_BASELINE]["hit_us"]
    for c in out["candidates"].values():
        c["hit_over_baseline"] = quotient(c["hit_us"], base)
    out["stored"], out["baseline"] = CODEC_STORED, CODEC_BASELINE
    log(f"L2 encodings compared on one page ({args.codec_repeats} repeats)")
    return out


# -- round trips -----------------------------------------------------------------------------------------------------


def per_query(proxies: Sequence[RoundTripProxy], n: int, run: Callable[[], None]) -> float:
    before = sum(p.round_trips for p in proxies)
    for _ in range(n):
        run()
    return round((sum(p.round_trips for p in proxies) - before) / n, 3)


def count_round_trips(url: str, replica_urls: list[str], shapes: list[Shape],
                      args: argparse.Namespace) -> dict[str, Any]:
    """Round trips per query, through relays in front of the primary and the first replica (no cache; the replica
    monitor measures once, at the start, then waits longer than the counting takes)."""
    n = args.count_queries
    warm = max(args.warmup, 6)  # past psycopg's prepare threshold (5) on every connection
    primary = RoundTripProxy(url)
    replicas = [RoundTripProxy(replica_urls[0])] if replica_urls else []
    proxies = [primary, *replicas]
    for p in proxies:
        p.__enter__()
    try:
        settings = AuditSettings(
            database_url=primary.url, replica_urls=[r.url for r in replicas], application_name=APPLICATION_NAME,
            cache={"enabled": False}, replicas={"monitor_interval_seconds": 300},
        )
        out: dict[str, Any] = {"queries_counted": n}
        with psycopg.connect(primary.url, autocommit=True, **connect_kwargs(settings)) as raw_conn:
            for _ in range(warm):
                for s in shapes:
                    raw_conn.execute(s.sql, s.params).fetchall()
            out["raw"] = per_query(proxies, n, lambda: raw_conn.execute(shapes[0].sql, shapes[0].params).fetchall())
            with AuditDatabase(settings) as db:
                db.router.wait_measured()
                variants: dict[str, tuple[dict[str, Any], str]] = {"query": ({}, "primary")}
                if replicas:
                    lsn = (raw_conn.execute("SELECT pg_current_wal_lsn()::text").fetchone() or ("0/0",))[0]
                    wait_replayed(url, replica_urls[:1], application_name=APPLICATION_NAME)  # no fallbacks
                    variants["query_eventual"] = ({"consistency": "eventual"}, "replica-0")
                    variants["query_after_lsn"] = ({"consistency": "eventual", "after_lsn": lsn}, "replica-0")
                for name, (options, source) in variants.items():
                    def run(options: dict[str, Any] = options, source: str = source) -> None:
                        page = db.query(shapes[0].query, use_cache=False, **options)
                        check(page.extra["source"] == source and ids(page) == shapes[0].ids,
                              f"round trips of {name}: served by {page.extra['source']}, expected {source}")
                    for _ in range(warm):
                        run()
                    out[name] = per_query(proxies, n, run)
                    log(f"round trips per query, {name}: {out[name]}")
        log(f"round trips per query, raw: {out['raw']}")
        return out
    finally:
        for p in proxies:
            p.__exit__(None, None, None)


# -- report ----------------------------------------------------------------------------------------------------------


def targets(timing: dict[str, Any], trips: dict[str, Any]) -> dict[str, dict[str, Any]]:
    m = timing["methods"]
    out = {
        "query_p50_over_raw": {"value": m["query"]["over_raw_p50"], "target": QUERY_P50_TARGET},
        "query_p99_over_raw": {"value": m["query"]["over_raw_p99"], "target": QUERY_P99_TARGET},
        "query_round_trips": {"value": trips["query"], "target": ROUND_TRIPS_TARGET},
    }
    if "l2" in m:
        out["l2_p50_over_raw"] = {"value": m["l2"]["over_raw_p50"], "target": L2_P50_TARGET}
    for t in out.values():
        t["met"] = t["value"] <= t["target"]
    return out


def environment(servers: common.ReadServers, args: argparse.Namespace) -> dict[str, Any]:
    return {**common.read_environment(servers, _SERVER_SETTINGS, application_name=APPLICATION_NAME),
            "rows": args.rows, "principals": args.principals, "seed": args.seed}


def format_table(report: dict[str, Any]) -> str:
    env, timing, trips = report["environment"], report["timing"], report["round_trips"]
    q = report["query"]
    lines = [
        *common.report_header("read-path benchmark", env),
        f"{q['shapes']} shapes: one principal over {q['month']}, limit {q['page_size']} "
        f"({q['rows_in_month']:,} rows in the month); {timing['lookups_per_method']} lookups per method, interleaved",
        "",
        f"  {'method':<8}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'mean ms':>9}{'/raw p50':>10}{'/raw p99':>10}"
        f"{'round trips':>13}",
    ]
    for name, s in timing["methods"].items():
        if name not in METHODS:
            continue
        rt = trips.get(name)
        lines.append(f"  {name:<8}{s['p50_ms']:>9.3f}{s['p95_ms']:>9.3f}{s['p99_ms']:>9.3f}{s['mean_ms']:>9.3f}"
                     f"{s['over_raw_p50']:>10.2f}{s['over_raw_p99']:>10.2f}{'' if rt is None else rt:>13}")
    if not timing["l2_measured"]:
        lines.append("  l2: not measured (no Redis configured)")
    tuned = timing["methods"]["raw_tuned"]
    lines.append(f"  raw psycopg on a connection set up as the library's (binary results, load_json): p50 "
                 f"{tuned['p50_ms']:.3f} ms, p99 {tuned['p99_ms']:.3f} ms; query / it: "
                 f"{timing['query_over_raw_tuned']['p50']:.2f} at p50, {timing['query_over_raw_tuned']['p99']:.2f} at p99")
    extra = {k: v for k, v in trips.items() if k.startswith("query_")}
    if extra:
        lines.append("  round trips, on the replica: " + ", ".join(f"{k} {v}" for k, v in extra.items()))
    codecs = report.get("l2_codecs")
    if codecs:
        lines += ["", f"L2 encodings of one {q['page_size']}-event page, median of {codecs['repeats']} "
                  f"(hit = open + decode + GET; {codecs['stored']} is what the cache stores, {codecs['baseline']} "
                  "what it stored before)",
                  f"  {'encoding':<22}{'bytes':>8}{'sealed':>8}{'encode us':>11}{'decode us':>11}{'GET us':>9}"
                  f"{'hit us':>9}{'/before':>9}"]
        for name, c in sorted(codecs["candidates"].items(), key=lambda kv: kv[1]["hit_us"]):
            lines.append(f"  {name:<22}{c['plain_bytes']:>8,}{c['sealed_bytes']:>8,}{c['encode_and_seal_us']:>11.1f}"
                         f"{c['open_and_decode_us']:>11.1f}{c['redis_get_us']:>9.1f}{c['hit_us']:>9.1f}"
                         f"{c['hit_over_baseline']:>9.2f}")
    lines.append("")
    for key, t in report["targets"].items():
        verdict = "met" if t["met"] else "MISSED"
        lines.append(f"{key:<20}{t['value']:>8}   target <= {t['target']:g}   {verdict}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    load_before = load_average()
    today = utc_midnight(dt.datetime.now(dt.UTC))
    since, until = month_before(today)
    days = (today - since).days
    prefix = f"audit-bench-{uuid.uuid4().hex[:8]}"
    with common.read_servers(log, durable=False) as servers:
        with read_database(servers, "read_path", rows=args.rows, days=days, principals=args.principals,
                           application_name=APPLICATION_NAME, log=log) as data:
            settings = AuditSettings(
                database_url=data.url, replica_urls=data.replica_urls, redis_url=servers.redis_url,
                application_name=APPLICATION_NAME,
                cache={"enabled": True, "key_prefix": prefix, "l1_max_entries": 10_000, "l1_max_bytes": 64 << 20,
                       "key": secrets.token_hex(32)},
            )
            queries = [AuditQuery(principal_id=principal(k), since=since, until=until, limit=args.page_size)
                       for k in range(min(args.shapes, args.principals))]
            try:
                with psycopg.connect(data.url, autocommit=True, **connect_kwargs(settings)) as raw_conn, \
                        psycopg.connect(data.url, autocommit=True, **connect_kwargs(settings)) as tuned_conn, \
                        AuditDatabase(settings) as db:
                    configure_connection(tuned_conn)  # what the library's pools do to each connection
                    shapes = [Shape(q, args.page_size, raw_conn) for q in queries]
                    db.router.wait_measured()
                    timing = measure(db, raw_conn, tuned_conn, shapes, args, has_l2=servers.redis_url is not None)
                    codecs = compare_codecs(db, shapes[0], servers.redis_url, prefix, args)
                    in_month = raw_conn.execute("SELECT count(*) FROM audit_log WHERE event_time >= %s "
                                                "AND event_time < %s", (since, until)).fetchone()
            finally:
                drop_redis_keys(servers.redis_url, prefix)
            trips = count_round_trips(data.url, data.replica_urls, shapes, args)
        env = {**environment(servers, args), "load_average_before": load_before, "load_average_after": load_average()}
    checked = targets(timing, trips)
    return {
        "benchmark": "read_path",
        "environment": env,
        "query": {"month": f"[{since.date()}, {until.date()})", "page_size": args.page_size, "shapes": len(shapes),
                  "rows_in_month": int(in_month[0]) if in_month else 0, "consistency": "strong (primary)"},
        "timing": timing,
        "l2_codecs": codecs,
        "round_trips": trips,
        "targets": checked,
        "ratios": {f"{m}_over_raw_{p}": s[f"over_raw_{p}"] for m, s in timing["methods"].items() if m != "raw"
                   for p in ("p50", "p99")},
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=positive_int, default=60_000,
                        help="events from the first day of last month until today (60000)")
    parser.add_argument("--principals", type=positive_int, default=100, help="distinct principals (100)")
    parser.add_argument("--shapes", type=positive_int, default=20, help="queries, one principal each (20)")
    parser.add_argument("--page-size", type=positive_int, default=100, help="events per page (100)")
    parser.add_argument("--lookups", type=positive_int, default=2000, help="timed lookups per method (2000)")
    parser.add_argument("--warmup", type=positive_int, default=6, help="untimed runs of each shape per method (6)")
    parser.add_argument("--count-queries", type=positive_int, default=100,
                        help="queries per variant whose round trips are counted (100)")
    parser.add_argument("--codec-repeats", type=positive_int, default=300,
                        help="repeats of each L2 encoding compared on one page (300)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the lookup order (1)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help=f"JSON report ({DEFAULT_OUTPUT})")
    args = parser.parse_args(argv)
    check_principals(parser, args.principals)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    return common.run_main(parse_args(argv), run, format_table, log, check_failure=CheckFailed)


if __name__ == "__main__":
    sys.exit(main())
