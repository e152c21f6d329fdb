"""Load benchmark: many concurrent clients, one ``AuditDatabase``, a mixed dashboard workload, with and without cache.

What is measured
----------------
``--clients`` threads (1000) share ONE ``AuditDatabase`` (pools of ``--pool-size`` connections to the primary and
to each replica, the replicas and Redis of the servers) and run, without think time (each yields the GIL with
``time.sleep(0)`` between operations), for ``--duration`` seconds (30):

- ``--write-share`` (20 %) writes, each of new events marked with this run's unique ``source``:
  ``db.insert(event)`` (one event, event time now) or, for ``--insert-many-share`` (10 %) of the writes,
  ``db.insert_many(batch)`` of 2 to ``--max-batch`` (20) events;
- the rest, dashboard reads with ``consistency="eventual"``: one of ``--shapes`` (500) fixed query shapes, chosen
  Zipf-distributed (exponent ``--zipf``, 1.0; rank 1 the most popular): a page of events per principal, or an
  event count per organization or per action, over the 1, 7 or ``--days`` days before today (closed windows,
  which no write of the run touches), plus four shapes over today (a page for an organization, failures, two
  actions) that every write invalidates. ``--rows`` events over the ``--days`` days before today (and a share of
  today so far) are prepared first, and replayed by every replica.

The baseline, measured in the same run right before, is the same workload with ``use_cache=False`` for
``--baseline-duration`` seconds (10). Before both, every shape is read once uncached (untimed warm-up of
PostgreSQL's buffers and of the pools); the cached phase starts with an empty cache, so its first lookup of each
shape misses.

Reported per phase: operations and events per second (completed operations / seconds from the start signal until
every client has finished its last operation), p50/p95/p99/mean/max latency per operation type (``insert``,
``insert_many``, ``query``, ``count``, and ``read`` / ``write`` overall), errors (count, by type, the first
messages), events acknowledged (returned by ``insert`` / ``insert_many`` without error) against events stored
(``count(*)`` on the primary for the phase's marker after the phase), the cache's hit ratio and stats (cached
phase), where reads went (``db.router.snapshot()["reads"]``: replica-N, primary, failovers), peak RSS. Ratios:
cached / uncached read throughput, uncached / cached read p50 and p99. Target: hit ratio > 0.9 (reported as met
or MISSED). Per pool: connections handed out, callers that queued, mean wait.

A closed loop of 1000 clients keeps the pools saturated by construction: waiting for a connection is queueing,
which the latency figures show. So the benchmark waits up to ``--pool-timeout`` / ``--replica-acquire-timeout``
(60 s) for a connection; with the library's defaults (10 s / 1 s) the same queueing counts as server failures
(the primary's breaker opens, the replica leaves the rotation) and turns into errors and failovers.

Exit status: 2 when any operation failed or acknowledged != stored in any phase (the table and the JSON, with
``checks.passed = false``, are still written) or when the prepared data is wrong; 0 otherwise. Nothing is gated on
absolute times.

Servers: as ``benchmarks/cache.py`` (``AUDIT_BENCH_DATABASE_URL`` + optional ``AUDIT_BENCH_REPLICA_URLS`` and
``AUDIT_BENCH_REDIS_URL``, else a throw-away local primary + replica + Redis; the local primary runs with
``fsync=on`` so commits cost what they cost on a durable server).

Run it from the repository root::

    python benchmarks/load.py                                    # 1000 clients, 30 s + 10 s baseline
    python benchmarks/load.py --clients 50 --duration 5 --baseline-duration 2 --output /tmp/load.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import math
import os
import random
import resource
import secrets
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: make `benchmarks` importable

from benchmarks import common  # noqa: E402
from benchmarks.cache import drop_redis_keys  # noqa: E402
from benchmarks.common import positive_int  # noqa: E402
from benchmarks.read_data import (  # noqa: E402
    ACTIONS, ORGANIZATIONS, CheckFailed, check_principals, count_rows, organization, principal, read_database,
)
from audit_db_core import AuditDatabase, AuditEvent, AuditQuery, AuditSettings  # noqa: E402
from audit_db_core.errors import redact  # noqa: E402

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "load.json"
APPLICATION_NAME = "audit-bench-load"
HIT_RATIO_TARGET = 0.9
PAGE_SIZE = 50
ERROR_SAMPLES = 20
OP_TYPES = ("insert", "insert_many", "query", "count")
#: Where the four "today" shapes sit in the popularity ranking, as fractions of the number of shapes.
TODAY_RANKS = (0.015, 0.05, 0.12, 0.3)


def log(message: str) -> None:
    print(f"[load] {message}", file=sys.stderr, flush=True)


# -- the workload --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    name: str
    kind: str  # "query" (a page) | "count"
    query: AuditQuery
    today: bool = False


def make_shapes(today: dt.datetime, days: int, principals: int, count: int, seed: int) -> list[Shape]:
    """``count`` shapes in popularity order (rank 1 first): closed-window shapes shuffled by ``seed``, with the
    four shapes over today placed at the ranks of ``TODAY_RANKS``."""
    tomorrow = today + dt.timedelta(days=1)
    windows = sorted({1, min(7, days), days})
    closed: list[Shape] = []
    for w in windows:
        since = today - dt.timedelta(days=w)
        for k in range(principals):
            closed.append(Shape(f"principal {principal(k)} {w}d", "query",
                                AuditQuery(principal_id=principal(k), since=since, until=today, limit=PAGE_SIZE)))
        for k in range(ORGANIZATIONS):
            closed.append(Shape(f"organization {organization(k)} {w}d", "count",
                                AuditQuery(organization_id=organization(k), since=since, until=today)))
        for action in ACTIONS:
            closed.append(Shape(f"action {action} {w}d", "count",
                                AuditQuery(action=action, since=since, until=today)))
    today_shapes = [
        Shape("organization org-00 today", "query",
              AuditQuery(organization_id=organization(0), since=today, until=tomorrow, limit=PAGE_SIZE), True),
        Shape("failures today", "count", AuditQuery(status="failure", since=today, until=tomorrow), True),
        Shape("action patient.record.export today", "count",
              AuditQuery(action="patient.record.export", since=today, until=tomorrow), True),
        Shape("action user.login today", "count", AuditQuery(action="user.login", since=today, until=tomorrow), True),
    ]
    random.Random(f"{seed}:shapes").shuffle(closed)
    ranks = sorted({min(count - 1, round(count * f)) for f in TODAY_RANKS})[: min(len(today_shapes), count)]
    shapes = closed[: count - len(ranks)]
    for rank, shape in zip(ranks, today_shapes):
        shapes.insert(rank, shape)
    return shapes[:count]


def zipf_cum_weights(n: int, s: float) -> list[float]:
    return list(itertools.accumulate(1.0 / (rank ** s) for rank in range(1, n + 1)))


_STATUSES = ("success",) * 17 + ("failure", "attempt", "attempt")
_FIELDS = ("allergies", "diagnoses", "labs", "medications", "notes")


def make_event(rng: random.Random, marker: str, principals: int) -> AuditEvent:
    """A new event of now, by a known principal, marked with the phase's ``source``."""
    p = rng.randrange(principals)
    action = rng.choice(ACTIONS)
    patient = action.startswith(("patient.", "lab.", "prescription."))
    return AuditEvent(
        action=action,
        status=rng.choice(_STATUSES),
        principal_id=principal(p),
        organization_id=organization(p % ORGANIZATIONS),
        target_resource_type="Patient" if patient else None,
        target_resource_id=f"patient-{rng.randrange(5000):05d}" if patient else None,
        data_classification="PHI" if patient else "INTERNAL",
        retention_policy="hipaa" if patient else "standard",
        correlation_id=f"req-{rng.getrandbits(32):08x}",
        session_id=f"sess-{rng.randrange(2000):05d}",
        source=marker,
        processing_latency_ms=rng.randrange(1, 250),
        details={"client": {"ip": f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"},
                 "fields": rng.sample(_FIELDS, 2), "reason": rng.choice(("treatment", "operations", "payment"))},
    )


@dataclass
class ClientResult:
    latencies: dict[str, list[float]] = field(default_factory=lambda: {op: [] for op in OP_TYPES})
    errors: list[tuple[str, str, str]] = field(default_factory=list)  # (op, error type, message)
    acknowledged: int = 0
    duplicates: int = 0
    sources: dict[str, int] = field(default_factory=dict)  # pages by page.extra["source"]


@dataclass(frozen=True)
class Workload:
    shapes: Sequence[Shape]
    cum_weights: Sequence[float]
    write_share: float
    insert_many_share: float
    max_batch: int
    principals: int
    pause: float  # longest random pause between a client's operations, seconds (0: a bare yield)


def client(db: AuditDatabase, work: Workload, *, index: int, seed: int, marker: str, use_cache: bool,
           go: threading.Event, deadline: list[float], out: ClientResult) -> None:
    go.wait()
    try:
        run_client(db, work, index=index, seed=seed, marker=marker, use_cache=use_cache, end=deadline[0], out=out)
    except Exception as exc:  # a defect of the benchmark itself: counted as an error, never a silent dead thread
        out.errors.append(("client", type(exc).__name__, redact(str(exc).splitlines()[0][:300]) if str(exc) else ""))


def run_client(db: AuditDatabase, work: Workload, *, index: int, seed: int, marker: str, use_cache: bool,
               end: float, out: ClientResult) -> None:
    rng = random.Random(f"{seed}:{marker}:{index}")
    shape_indexes = range(len(work.shapes))
    while time.perf_counter() < end:
        call: Callable[[], Any]
        if rng.random() < work.write_share:
            if rng.random() < work.insert_many_share:
                op = "insert_many"
                batch = [make_event(rng, marker, work.principals) for _ in range(rng.randint(2, work.max_batch))]
                call = lambda batch=batch: db.insert_many(batch)  # noqa: E731
                events = len(batch)
            else:
                op = "insert"
                event = make_event(rng, marker, work.principals)
                call = lambda event=event: db.insert(event)  # noqa: E731
                events = 1
        else:
            shape = work.shapes[rng.choices(shape_indexes, cum_weights=work.cum_weights)[0]]
            op = shape.kind
            events = 0
            if op == "query":
                call = lambda q=shape.query: db.query(q, consistency="eventual", use_cache=use_cache)  # noqa: E731
            else:
                call = lambda q=shape.query: db.count(q, consistency="eventual", use_cache=use_cache)  # noqa: E731
        started = time.perf_counter()
        try:
            result = call()
        except Exception as exc:  # every failure is counted and reported, none is hidden
            message = redact(str(exc).splitlines()[0][:300]) if str(exc) else ""
            out.errors.append((op, type(exc).__name__, message))
        else:
            out.latencies[op].append(time.perf_counter() - started)
            if op == "insert":
                out.acknowledged += 1
                if result is False:
                    out.duplicates += 1
            elif op == "insert_many":
                out.acknowledged += events
                out.duplicates += events - int(result)
            elif op == "query":
                source = result.extra.get("source", "?")
                out.sources[source] = out.sources.get(source, 0) + 1
        # Yield the GIL between operations: a client whose reads are L1 hits never blocks on I/O otherwise.
        time.sleep(rng.random() * work.pause if work.pause else 0)


# -- phases --------------------------------------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], p: float) -> float:
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def summary_ms(seconds: Sequence[float]) -> dict[str, Any]:
    if not seconds:
        return {"count": 0}
    values = sorted(s * 1000 for s in seconds)
    return {"count": len(values), "p50_ms": round(percentile(values, 50), 3),
            "p95_ms": round(percentile(values, 95), 3), "p99_ms": round(percentile(values, 99), 3),
            "mean_ms": round(statistics.fmean(values), 3), "max_ms": round(values[-1], 3)}


def pool_usage(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per pool, during the phase, from psycopg_pool's counters: ``getconn`` calls, calls that had to queue, their
    mean wait. A replica read makes one call; a primary operation one per 0.25 s slice while it waits (the
    library polls in slices to notice a primary that went down), so there calls outnumber operations."""
    out = {}
    for name, a in after.items():
        b = before.get(name, {})
        requests = a["requests"] - b.get("requests", 0)
        wait_ms = a["requests_wait_ms_total"] - b.get("requests_wait_ms_total", 0)
        out[name] = {"max_size": a["max_size"], "getconn_calls": requests,
                     "queued_calls": a["requests_queued"] - b.get("requests_queued", 0),
                     "mean_wait_ms_per_call": round(wait_ms / requests, 1) if requests else 0.0}
    return out


def stored_events(url: str, marker: str) -> int:
    return count_rows(url, application_name=APPLICATION_NAME,
                      where=sql.SQL("{} = %s").format(sql.Identifier("source")), params=(marker,))


def run_phase(db: AuditDatabase, work: Workload, args: argparse.Namespace, url: str, *, name: str,
              use_cache: bool, duration: float) -> dict[str, Any]:
    marker = f"bench-load-{uuid.uuid4().hex[:12]}-{name}"
    results = [ClientResult() for _ in range(args.clients)]
    go = threading.Event()
    deadline = [0.0]
    threads = [threading.Thread(target=client, name=f"load-client-{i}", daemon=True,
                                kwargs={"db": db, "work": work, "index": i, "seed": args.seed, "marker": marker,
                                        "use_cache": use_cache, "go": go, "deadline": deadline, "out": results[i]})
               for i in range(args.clients)]
    for t in threads:
        t.start()
    db.cache.reset_stats()
    reads_before = db.router.snapshot()["reads"]
    pools_before = db.connections.pool_stats()
    log(f"{name}: {args.clients} clients for {duration:g} s (use_cache={use_cache})")
    started = time.perf_counter()
    deadline[0] = started + duration
    go.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    stats = db.cache.stats()
    reads_after = db.router.snapshot()["reads"]
    pools = pool_usage(pools_before, db.connections.pool_stats())
    stored = stored_events(url, marker)

    latencies = {op: [x for r in results for x in r.latencies[op]] for op in OP_TYPES}
    latency = {op: summary_ms(latencies[op]) for op in OP_TYPES}
    latency["read"] = summary_ms(latencies["query"] + latencies["count"])
    latency["write"] = summary_ms(latencies["insert"] + latencies["insert_many"])
    errors = [e for r in results for e in r.errors]
    by_type: dict[str, int] = {}
    for op, kind, _ in errors:
        by_type[f"{op}: {kind}"] = by_type.get(f"{op}: {kind}", 0) + 1
    sources: dict[str, int] = {}
    for r in results:
        for k, v in r.sources.items():
            sources[k] = sources.get(k, 0) + v
    acknowledged = sum(r.acknowledged for r in results)
    ops = sum(len(v) for v in latencies.values())
    reads = latency["read"]["count"]
    writes = latency["write"]["count"]
    phase = {
        "use_cache": use_cache,
        "marker": marker,
        "clients": args.clients,
        "duration_seconds": duration,
        "elapsed_seconds": round(elapsed, 3),
        "operations": ops,
        "operations_per_second": round(ops / elapsed, 1),
        "reads_per_second": round(reads / elapsed, 1),
        "writes_per_second": round(writes / elapsed, 1),
        "events_written_per_second": round(acknowledged / elapsed, 1),
        "latency": latency,
        "errors": {"count": len(errors), "by_type": by_type,
                   "samples": [{"op": op, "type": kind, "message": msg} for op, kind, msg in errors[:ERROR_SAMPLES]]},
        "events": {"acknowledged": acknowledged, "stored": stored,
                   "duplicates_reported": sum(r.duplicates for r in results)},
        "pages_served_by": dict(sorted(sources.items())),
        "reads_by_server": {k: reads_after.get(k, 0) - reads_before.get(k, 0) for k in reads_after},
        "pools": pools,
        "max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    if use_cache:
        phase["cache"] = stats
        phase["hit_ratio"] = stats["hit_ratio"]
    log(f"{name}: {ops} ops in {elapsed:.1f} s = {ops / elapsed:,.0f} ops/s, {len(errors)} errors, "
        f"{acknowledged} events acknowledged / {stored} stored"
        + (f", hit ratio {stats['hit_ratio']}" if use_cache else ""))
    return phase


def warm_up(db: AuditDatabase, shapes: Sequence[Shape]) -> float:
    """Read every shape once, uncached (untimed): PostgreSQL's buffers and the pools are warm for both phases."""
    started = time.perf_counter()
    for shape in shapes:
        if shape.kind == "query":
            db.query(shape.query, consistency="eventual", use_cache=False)
        else:
            db.count(shape.query, consistency="eventual", use_cache=False)
    return time.perf_counter() - started


def bench_settings(url: str, replica_urls: list[str], redis_url: str | None, prefix: str,
                   args: argparse.Namespace) -> AuditSettings:
    """Settings pinned to what the benchmark assumes, whatever ``AUDIT_*`` variables the environment holds."""
    return AuditSettings(
        database_url=url, replica_urls=replica_urls, redis_url=redis_url, application_name=APPLICATION_NAME,
        pool={"min_size": args.pool_size, "max_size": args.pool_size, "replica_max_size": args.pool_size,
              "timeout_seconds": args.pool_timeout},
        replicas={"acquire_timeout_seconds": args.replica_acquire_timeout},
        cache={"enabled": True, "key_prefix": prefix, "key": secrets.token_hex(32)},  # L2 needs a key of its own
    )


def bench_load(servers: common.ReadServers, args: argparse.Namespace) -> dict[str, Any]:
    now = dt.datetime.now(dt.UTC)
    day_share = (now - now.replace(hour=0, minute=0, second=0, microsecond=0)) / dt.timedelta(days=1)
    today_rows = max(1, round(args.rows / args.days * day_share))
    prefix = f"audit-bench-{uuid.uuid4().hex[:8]}"
    with read_database(servers, "load", rows=args.rows, days=args.days, principals=args.principals,
                       today_rows=today_rows, now=now, application_name=APPLICATION_NAME, log=log) as data:
        shapes = make_shapes(data.today, args.days, args.principals, args.shapes, args.seed)
        work = Workload(shapes, zipf_cum_weights(len(shapes), args.zipf), args.write_share,
                        args.insert_many_share, args.max_batch, args.principals, args.pause_ms / 1000)
        settings = bench_settings(data.url, data.replica_urls, servers.redis_url, prefix, args)
        try:
            with AuditDatabase(settings) as db:
                db.router.wait_measured()
                if servers.redis_url is not None and not db.cache.wait_synced(10):
                    raise CheckFailed("the cache's invalidation channel did not connect to Redis")
                log(f"warm-up: reading each of {len(shapes)} shapes once")
                warm_seconds = warm_up(db, shapes)
                phases = {
                    "uncached": run_phase(db, work, args, data.url, name="uncached", use_cache=False,
                                          duration=args.baseline_duration),
                    "cached": run_phase(db, work, args, data.url, name="cached", use_cache=True,
                                        duration=args.duration),
                }
        finally:
            drop_redis_keys(servers.redis_url, prefix)
    today_share = sum(1 / (r + 1) ** args.zipf for r, s in enumerate(shapes) if s.today) / work.cum_weights[-1]
    return {
        "data": {"rows": args.rows, "days": args.days, "today_rows": today_rows, "principals": args.principals,
                 "fill_seconds": round(data.fill_seconds, 2), "warm_up_seconds": round(warm_seconds, 2)},
        "workload": {
            "shapes": len(shapes),
            "shape_kinds": {k: sum(1 for s in shapes if s.kind == k) for k in ("query", "count")},
            "today_shapes": {s.name: i + 1 for i, s in enumerate(shapes) if s.today},
            "today_share_of_reads": round(today_share, 4),
            "most_popular": [s.name for s in shapes[:5]],
        },
        "phases": phases,
    }


# -- report --------------------------------------------------------------------------------------------------------


def quotient(a: float, b: float) -> float | None:
    return round(a / b, 2) if b else None


def ratios(phases: dict[str, Any]) -> dict[str, float | None]:
    c, u = phases["cached"], phases["uncached"]
    cr, ur = c["latency"]["read"], u["latency"]["read"]
    return {
        "read_throughput_cached_over_uncached": quotient(c["reads_per_second"], u["reads_per_second"]),
        "operations_throughput_cached_over_uncached": quotient(c["operations_per_second"],
                                                               u["operations_per_second"]),
        "read_p50_uncached_over_cached": quotient(ur.get("p50_ms", 0), cr.get("p50_ms", 0)),
        "read_p99_uncached_over_cached": quotient(ur.get("p99_ms", 0), cr.get("p99_ms", 0)),
    }


def checks(phases: dict[str, Any]) -> dict[str, Any]:
    errors = sum(p["errors"]["count"] for p in phases.values())
    acknowledged = sum(p["events"]["acknowledged"] for p in phases.values())
    stored = sum(p["events"]["stored"] for p in phases.values())
    balanced = all(p["events"]["acknowledged"] == p["events"]["stored"] for p in phases.values())
    return {"errors": errors, "acknowledged": acknowledged, "stored": stored,
            "acknowledged_equals_stored": balanced, "passed": errors == 0 and balanced}


#: The server settings its figures depend on, reported with them.
_SERVER_SETTINGS = (
    "fsync", "synchronous_commit", "full_page_writes", "shared_buffers", "max_connections",
)


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def environment(servers: common.ReadServers) -> dict[str, Any]:
    return {**common.read_environment(servers, _SERVER_SETTINGS, application_name=APPLICATION_NAME),
            "gil_switch_interval_seconds": sys.getswitchinterval()}


def format_table(report: dict[str, Any]) -> str:
    env, par, ph = report["environment"], report["parameters"], report["phases"]
    wl = report["workload"]
    lines = [
        *common.report_header("load benchmark", env),
        f"{par['clients']} clients (threads), one AuditDatabase, pools of {par['pool_size']}; "
        f"{par['write_share']:.0%} writes ({par['insert_many_share']:.0%} of them insert_many of 2-{par['max_batch']}),"
        f" reads: {wl['shapes']} shapes, Zipf s={par['zipf']} ({wl['today_share_of_reads']:.1%} of reads over today);"
        f" {report['data']['rows']:,} rows over {report['data']['days']} days",
        "",
        f"{'phase':<10}{'seconds':>9}{'ops/s':>10}{'reads/s':>10}{'writes/s':>10}{'events/s':>10}{'errors':>8}"
        f"{'acked':>9}{'stored':>9}{'hit ratio':>11}",
    ]
    for name, p in ph.items():
        hit = f"{p['hit_ratio']:.4f}" if "hit_ratio" in p else "-"
        lines.append(f"{name:<10}{p['elapsed_seconds']:>9.1f}{p['operations_per_second']:>10,.0f}"
                     f"{p['reads_per_second']:>10,.0f}{p['writes_per_second']:>10,.0f}"
                     f"{p['events_written_per_second']:>10,.0f}{p['errors']['count']:>8}"
                     f"{p['events']['acknowledged']:>9}{p['events']['stored']:>9}{hit:>11}")
    lines += ["", f"{'latency ms':<24}{'count':>8}{'p50':>10}{'p95':>10}{'p99':>10}{'mean':>10}{'max':>10}"]
    for name, p in ph.items():
        for op in ("read", "query", "count", "write", "insert", "insert_many"):
            s = p["latency"][op]
            if not s["count"]:
                continue
            lines.append(f"{name + ' ' + op:<24}{s['count']:>8}{s['p50_ms']:>10.2f}{s['p95_ms']:>10.2f}"
                         f"{s['p99_ms']:>10.2f}{s['mean_ms']:>10.2f}{s['max_ms']:>10.2f}")
    lines.append("")
    for name, p in ph.items():
        reads = ", ".join(f"{k} {v}" for k, v in p["reads_by_server"].items())
        pages = ", ".join(f"{k} {v}" for k, v in p["pages_served_by"].items())
        lines.append(f"{name}: database reads by server: {reads}; pages served by: {pages}")
        pools = "; ".join(f"{k} {v['getconn_calls']} getconn calls, {v['queued_calls']} queued, mean wait "
                          f"{v['mean_wait_ms_per_call']:,.1f} ms" for k, v in p["pools"].items())
        lines.append(f"{name}: pools: {pools}")
    cache = ph["cached"].get("cache", {})
    if cache:
        lines.append(f"cached: cache l1 hits {cache['l1_hits']}, l2 hits {cache['l2_hits']}, l1 misses "
                     f"{cache['l1_misses']}, l2 misses {cache['l2_misses']}, invalidated {cache['invalidated']}, "
                     f"bypassed {cache['bypassed']}, redis errors {cache['redis_errors']}")
    lines.append("")
    lines.append("  ".join(f"{k.replace('_over_', ' / ')} = {v}" for k, v in report["ratios"].items()))
    t = report["targets"]["hit_ratio"]
    lines.append(f"hit ratio {t['value']}   target > {t['target']}   {'met' if t['met'] else 'MISSED'}")
    c = report["checks"]
    lines.append(f"checks: errors {c['errors']}, acknowledged {c['acknowledged']} vs stored {c['stored']}: "
                 f"{'passed' if c['passed'] else 'FAILED'}")
    for name, p in ph.items():
        for sample in p["errors"]["samples"][:5]:
            lines.append(f"  {name} error: {sample['op']}: {sample['type']}: {sample['message']}")
    return "\n".join(lines)


# -- main ----------------------------------------------------------------------------------------------------------


def share(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, not {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text}")
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--clients", type=positive_int, default=1000, help="concurrent client threads (1000)")
    parser.add_argument("--duration", type=positive_float, default=30.0, help="seconds of the cached phase (30)")
    parser.add_argument("--baseline-duration", type=positive_float, default=10.0,
                        help="seconds of the uncached baseline phase (10)")
    parser.add_argument("--write-share", type=share, default=0.2, help="share of operations that write (0.2)")
    parser.add_argument("--insert-many-share", type=share, default=0.1,
                        help="share of the writes that are insert_many batches (0.1)")
    parser.add_argument("--max-batch", type=positive_int, default=20, help="largest insert_many batch (20)")
    parser.add_argument("--shapes", type=positive_int, default=500, help="distinct dashboard query shapes (500)")
    parser.add_argument("--zipf", type=positive_float, default=1.0, help="Zipf exponent of shape popularity (1.0)")
    parser.add_argument("--rows", type=positive_int, default=100_000,
                        help="events over the days before today (100000)")
    parser.add_argument("--days", type=positive_int, default=30, help="UTC days before today they span (30)")
    parser.add_argument("--principals", type=positive_int, default=200, help="distinct principals (200)")
    parser.add_argument("--pool-size", type=positive_int, default=20,
                        help="connections per server: primary and each replica (20)")
    parser.add_argument("--pool-timeout", type=positive_float, default=60.0,
                        help="longest wait for a primary connection, seconds (60; the library's default is 10)")
    parser.add_argument("--replica-acquire-timeout", type=positive_float, default=60.0,
                        help="longest wait for a replica connection before failing over to the primary, seconds "
                             "(60, the most the library allows; its default is 1)")
    parser.add_argument("--pause-ms", type=float, default=0.0,
                        help="longest random pause of a client between operations, ms (0: time.sleep(0), a bare "
                             "yield of the GIL)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the shapes and the clients' choices (1)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help=f"JSON report ({DEFAULT_OUTPUT})")
    args = parser.parse_args(argv)
    check_principals(parser, args.principals)
    if args.max_batch < 2:
        parser.error("--max-batch must be at least 2")
    if args.pause_ms < 0:
        parser.error("--pause-ms cannot be negative")
    if args.replica_acquire_timeout > 60:
        parser.error("--replica-acquire-timeout must be at most 60 (AUDIT_REPLICAS__ACQUIRE_TIMEOUT_SECONDS' bound)")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    load_before = load_average()
    with common.read_servers(log, durable=True) as servers:
        result = bench_load(servers, args)
        env = {**environment(servers), "load_average_before": load_before, "load_average_after": load_average()}
    phases = result["phases"]
    hit = phases["cached"].get("hit_ratio", 0.0)
    params = {k: getattr(args, k) for k in (
        "clients", "duration", "baseline_duration", "write_share", "insert_many_share", "max_batch", "shapes",
        "zipf", "pool_size", "pool_timeout", "replica_acquire_timeout", "pause_ms", "seed")}
    return {
        "benchmark": "load",
        "environment": env,
        "parameters": params,
        **result,
        "ratios": ratios(phases),
        "targets": {"hit_ratio": {"value": hit, "target": HIT_RATIO_TARGET, "met": hit > HIT_RATIO_TARGET}},
        "checks": checks(phases),
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    reports: list[dict[str, Any]] = []

    def run_and_keep(a: argparse.Namespace) -> dict[str, Any]:
        reports.append(run(a))
        return reports[-1]

    code = common.run_main(args, run_and_keep, format_table, log, check_failure=CheckFailed)
    if code == 0 and not reports[-1]["checks"]["passed"]:
        c = reports[-1]["checks"]
        log(f"CHECK FAILED: {c['errors']} errors; {c['acknowledged']} events acknowledged, {c['stored']} stored")
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
