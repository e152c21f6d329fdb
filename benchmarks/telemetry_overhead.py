"""Telemetry overhead benchmark: what the library's OpenTelemetry recording costs on ``insert_many`` and on an L1
hit, with no SDK and with one, against telemetry turned off — all three in the same run, interleaved.

What is measured
----------------
Three variants of the same calls on the same servers and data:

``off``
    An ``AuditDatabase`` with ``AUDIT_TELEMETRY__ENABLED=false``: no clock read, no check, no span for telemetry.
    The baseline.
``api``
    A database with telemetry on and no SDK configured (``telemetry.configure()``: the API's proxies, as in an
    application that never sets a provider) — the library's default.
``sdk``
    The same database with the real SDK configured (``telemetry.configure``): a ``MeterProvider`` with an
    ``InMemoryMetricReader`` (delta temporality: each collection holds one block's figures, checked after the
    block) and a ``TracerProvider`` with a ``BatchSpanProcessor`` into an in-memory exporter, both for the whole
    run and first used in the warm-up, as in an application.

Three operations (the first two have targets; ``query`` is shown for transparency):

``insert_many``
    ``db.insert_many(events)`` of ``--events`` new ``AuditEvent`` objects built before the timing (into today's
    partition; the queries below read closed days, which these writes do not invalidate).
``l1_hit``
    ``db.query(q, consistency="eventual")`` answered by the in-process cache, ``--lookups`` of them over
    ``--shapes`` queries put in L1 beforehand; every one is checked to have been served by ``cache-l1``.
``query``
    ``db.query(q)`` on the primary (``strong``: no cache), ``--queries`` per block.

A block is one variant doing one operation ``N`` times, timed as a whole with the garbage collector off (a full
collection, untimed, starts each round): its figures are the block's time per call on the clock (``operations``)
and the CPU time of the calling thread per call (``cpu``: the work telemetry adds inline; the SDK's spans are
exported after the block, untimed) and, for transparency, of the whole process (``cpu_process``: also the
background threads of the caches and the router, busy by their own clocks, which makes it noisier). Blocks are
short (milliseconds) and many: each of ``--rounds`` rounds runs a block of every operation for every variant, back
to back, the variants' order rotating round by round, so the machine's load (shared: other test suites and
benchmarks run beside, and it changes by the second) meets every variant alike. Reported per operation and
variant, for both clocks: the median, mean and minimum of the blocks' figures (µs per call); ``ratio`` = median of
the variant / median of ``off``; ``paired_ratio`` = median over the rounds of (variant's block / ``off``'s block of
the same round), with its quartiles; ``added_us`` (``+µs``) = median over the rounds of (variant's block - ``off``'s),
per call: what telemetry adds to one call, whatever its size.

The targets are judged on the ``cpu`` ``paired_ratio``. What telemetry adds is work of the calling thread; the
server's time and the waits are the same in every variant, so that thread's CPU time is the smallest denominator
there is (a CPU ratio within a target bounds the clock's ratio within it too) and the figure least disturbed by the
other processes of a shared machine: the clock's ratios of ``insert_many`` spread over ±20 % from block to block
there (quartiles), the CPU ratios over about ±8 %.

Checks (a failure exits 2 and writes no report): every ``insert_many`` wrote all its events; every L1 lookup was
served by ``cache-l1``; after each ``sdk`` block its meter provider holds exactly the block's operations
(``db.client.operation.duration`` of ``insert_many`` / ``query``, ``audit.events.written``,
``audit.query.duration``), no query duration of an L1 hit, and the spans exported are the block's.

Targets (issue #14; printed met / MISSED, never an exit status): ``api / off`` <= 1.01 and ``sdk / off`` <= 1.05
(CPU ``paired_ratio``) for ``insert_many`` and ``l1_hit``.

Servers: with ``AUDIT_BENCH_DATABASE_URL`` set (plus optional ``AUDIT_BENCH_REPLICA_URLS`` and
``AUDIT_BENCH_REDIS_URL``) those; otherwise a throw-away local primary + streaming replica + Redis (``audit_local``),
always stopped and removed. A scratch database of its own and Redis keys under a prefix of the run, both removed.

Run it from the repository root::

    python benchmarks/telemetry_overhead.py                     # 201 rounds: about 4 minutes
    python benchmarks/telemetry_overhead.py --rounds 21 --events 200 --output /tmp/telemetry.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import importlib.metadata
import secrets
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: make `benchmarks` importable

from benchmarks import common  # noqa: E402
from benchmarks.cache import drop_redis_keys, load_average  # noqa: E402
from benchmarks.common import positive_int  # noqa: E402
from benchmarks.read_data import CheckFailed, check_principals, principal, read_database  # noqa: E402
from audit_db_core import AuditDatabase, AuditEvent, AuditQuery, AuditSettings, telemetry  # noqa: E402

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "telemetry_overhead.json"
APPLICATION_NAME = "audit-bench-telemetry"
VARIANTS = ("off", "api", "sdk")
OPERATIONS = ("insert_many", "l1_hit", "query")
#: variant → the most it may cost over ``off`` (ratio of medians), for the operations in TARGETED.
TARGETS = {"api": 1.01, "sdk": 1.05}
TARGETED = ("insert_many", "l1_hit")
_SERVER_SETTINGS = ("fsync", "shared_buffers", "synchronous_commit")


def log(message: str) -> None:
    print(f"[telemetry_overhead] {message}", file=sys.stderr, flush=True)


def check(ok: bool, message: str) -> None:
    if not ok:
        raise CheckFailed(message)


class Sdk:
    """The real SDK for the ``sdk`` variant, one provider of each for the whole run, as in an application (an SDK
    instrument's first measurement of an attribute set costs tens of microseconds; later ones do not). The metric
    reader asks for delta temporality: each collection holds what was recorded since the one before, i.e. the
    block's figures."""

    def __init__(self) -> None:
        from opentelemetry.sdk.metrics import Counter, Histogram, MeterProvider
        from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        self.exporter = InMemorySpanExporter()
        self.tracers = TracerProvider()
        self.tracers.add_span_processor(BatchSpanProcessor(self.exporter))
        delta = AggregationTemporality.DELTA
        self.reader = InMemoryMetricReader(preferred_temporality={Counter: delta, Histogram: delta})
        self.meters = MeterProvider(metric_readers=[self.reader])

    def configure(self) -> None:
        telemetry.configure(meter_provider=self.meters, tracer_provider=self.tracers)

    def collected(self) -> tuple[dict[str, list[tuple[dict[str, Any], Any]]], list[Any]]:
        """What was recorded (name → [(attributes, point)]) and the spans exported since the last call (untimed:
        the spans are flushed to the in-memory exporter here, not in the next variant's block)."""
        self.tracers.force_flush()
        out: dict[str, list[tuple[dict[str, Any], Any]]] = {}
        data = self.reader.get_metrics_data()
        for rm in data.resource_metrics if data else []:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    out.setdefault(metric.name, []).extend(
                        (dict(p.attributes or {}), p) for p in metric.data.data_points)
        spans = list(self.exporter.get_finished_spans())
        self.exporter.clear()
        return out, spans

    def close(self) -> None:
        telemetry.configure()
        self.meters.shutdown()
        self.tracers.shutdown()


def _recorded(got: dict[str, list[tuple[dict[str, Any], Any]]], name: str, **attributes: Any) -> float:
    """Histogram points (their count) or counter values recorded under ``attributes``."""
    total = 0.0
    for attrs, point in got.get(name, []):
        if all(attrs.get(k) == v for k, v in attributes.items()):
            total += point.count if hasattr(point, "bucket_counts") else point.value
    return total


def check_sdk_block(operation: str, n: int, got: dict[str, Any], spans: list[Any]) -> dict[str, Any]:
    """The SDK holds exactly what the block did: its figures, for the report."""
    op = "db.client.operation.duration"
    if operation == "insert_many":
        calls = _recorded(got, op, **{"db.operation.name": "insert_many"})
        written = _recorded(got, "audit.events.written", **{"db.operation.name": "insert_many",
                                                            "audit.outcome": "written"})
        check(calls == 1 and written == n, f"sdk insert_many block: {calls} operations and {written} events "
                                            f"recorded, expected 1 and {n}")
        check([s.name for s in spans] == ["insert_many audit_log"], f"sdk insert_many block: spans {spans}")
        return {"operations": calls, "events_written": written, "spans": len(spans)}
    if operation == "l1_hit":
        timed = _recorded(got, "audit.query.duration") + _recorded(got, op)
        check(timed == 0 and not spans, f"sdk l1_hit block: {timed} durations and {len(spans)} spans recorded for "
                                        "L1 hits, expected none (they are counted by the cache)")
        return {"durations": timed, "spans": len(spans)}
    queries = _recorded(got, "audit.query.duration", **{"audit.query.source": "primary", "audit.consistency": "strong"})
    check(queries == n and len(spans) == n, f"sdk query block: {queries} query durations and {len(spans)} spans, "
                                            f"expected {n} each")
    return {"query_durations": queries, "spans": len(spans)}


def measure(quiet: AuditDatabase, observed: AuditDatabase, queries: list[AuditQuery], args: argparse.Namespace,
            today: dt.datetime) -> dict[str, Any]:
    sdk = Sdk()
    databases = {"off": quiet, "api": observed, "sdk": observed}
    sizes = {"insert_many": args.events, "l1_hit": args.lookups, "query": args.queries}
    counter = iter(range(10**9))
    span = max(dt.datetime.now(dt.UTC) - today, dt.timedelta(seconds=1))

    def new_events(n: int) -> list[AuditEvent]:
        return [AuditEvent(action="patient.record.read", status="success", principal_id=principal(i % 50),
                           target_resource_type="patient", target_resource_id=f"p-{next(counter)}",
                           event_time=today + span * (i / n)) for i in range(n)]

    def block(variant: str, operation: str) -> tuple[float, float, float]:
        """(seconds per call on the clock, CPU seconds of this thread, of the whole process, per call) — only the
        calls are timed."""
        db, n = databases[variant], sizes[operation]
        if operation == "insert_many":
            events = new_events(n)
            call: Callable[[], Any] = lambda: db.insert_many(events)  # noqa: E731
            calls = 1
        elif operation == "l1_hit":
            picks = [queries[i % len(queries)] for i in range(n)]
            out: list[Any] = []
            call = lambda: [out.append(db.query(q, consistency="eventual").extra["source"])  # noqa: E731
                            for q in picks]
            calls = n
        else:
            picks = [queries[i % len(queries)] for i in range(n)]
            call = lambda: [db.query(q).extra["source"] for q in picks]  # noqa: E731
            calls = n
        gc.disable()
        try:
            process_started, cpu_started, started = time.process_time(), time.thread_time(), time.perf_counter()
            result = call()
            seconds, cpu = time.perf_counter() - started, time.thread_time() - cpu_started
            process = time.process_time() - process_started
        finally:
            gc.enable()
        if operation == "insert_many":
            check(result == n, f"{variant} insert_many wrote {result} events, expected {n}")
        elif operation == "l1_hit":
            check(set(out) == {"cache-l1"} and len(out) == n, f"{variant} l1_hit: served by {set(out)}")
        else:
            check(set(result) == {"primary"}, f"{variant} query: served by {set(result)}")
        return seconds / calls, cpu / calls, process / calls

    samples: dict[str, dict[str, list[float]]] = {op: {v: [] for v in VARIANTS} for op in OPERATIONS}
    cpu_samples: dict[str, dict[str, list[float]]] = {op: {v: [] for v in VARIANTS} for op in OPERATIONS}
    process_samples: dict[str, dict[str, list[float]]] = {op: {v: [] for v in VARIANTS} for op in OPERATIONS}
    sdk_checks: dict[str, list[dict[str, Any]]] = {op: [] for op in OPERATIONS}
    try:
        sdk.configure()  # the SDK's first measurements of each attribute set are made in the warm-up
        for db in (quiet, observed):  # warm-up (untimed): pools, prepared statements, L1
            for q in queries:
                for _ in range(6):
                    db.query(q)
                first, again = (db.query(q, consistency="eventual").extra["source"] for _ in range(2))
                check(first != "cache-l1" and again == "cache-l1", f"L1 before and after a read: {first}, {again}")
            db.insert_many(new_events(args.events))
        sdk.collected()
        telemetry.configure()
        for r in range(args.rounds):
            gc.collect()  # untimed, once a round; the blocks run with the collector off
            for operation in OPERATIONS:
                order = VARIANTS[r % 3:] + VARIANTS[:r % 3]
                for variant in order:
                    if variant == "sdk":
                        sdk.configure()
                    else:
                        telemetry.configure()
                    per_call, cpu_per_call, process_per_call = block(variant, operation)
                    if variant == "sdk":
                        got, spans = sdk.collected()
                        telemetry.configure()
                        sdk_checks[operation].append(check_sdk_block(operation, sizes[operation], got, spans))
                    samples[operation][variant].append(per_call)
                    cpu_samples[operation][variant].append(cpu_per_call)
                    process_samples[operation][variant].append(process_per_call)
            if (r + 1) % 50 == 0 or r + 1 == args.rounds:
                log(f"round {r + 1} of {args.rounds}")
    finally:
        sdk.close()
    return {"sizes": sizes, "rounds": args.rounds, "operations": {op: summarise(samples[op]) for op in OPERATIONS},
            "cpu": {op: summarise(cpu_samples[op]) for op in OPERATIONS},
            "cpu_process": {op: summarise(process_samples[op]) for op in OPERATIONS},
            "sdk_checks": {op: sdk_checks[op][0] if sdk_checks[op] else None for op in OPERATIONS},
            "sdk_blocks_checked": sum(len(c) for c in sdk_checks.values())}


def summarise(by_variant: dict[str, list[float]]) -> dict[str, Any]:
    base = by_variant["off"]
    out: dict[str, Any] = {}
    for variant, values in by_variant.items():
        paired = [v / b for v, b in zip(values, base, strict=True)]
        added = statistics.median(v - b for v, b in zip(values, base, strict=True))
        quartiles = statistics.quantiles(paired, n=4) if len(paired) > 1 else [paired[0]] * 3
        out[variant] = {
            "blocks": len(values),
            "median_us": round(statistics.median(values) * 1e6, 3),
            "mean_us": round(statistics.fmean(values) * 1e6, 3),
            "min_us": round(min(values) * 1e6, 3),
            "ratio": round(statistics.median(values) / statistics.median(base), 4),
            "paired_ratio": round(statistics.median(paired), 4),
            "paired_ratio_quartiles": [round(quartiles[0], 4), round(quartiles[2], 4)],
            "added_us": round(added * 1e6, 3),  # median over the rounds of (variant's block - off's), per call
        }
    return out


def targets(timing: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out = {}
    for operation in TARGETED:
        for variant, limit in TARGETS.items():
            ratio = timing["cpu"][operation][variant]["paired_ratio"]
            out[f"{operation}_{variant}_over_off"] = {"value": ratio, "target": limit, "met": ratio <= limit}
    return out


def environment(servers: common.ReadServers, args: argparse.Namespace) -> dict[str, Any]:
    versions = {p: importlib.metadata.version(p) for p in ("opentelemetry-api", "opentelemetry-sdk")}
    return {**common.read_environment(servers, _SERVER_SETTINGS, application_name=APPLICATION_NAME),
            "rows": args.rows, "days": args.days, "principals": args.principals, **versions}


def format_table(report: dict[str, Any]) -> str:
    env, timing = report["environment"], report["timing"]
    s = timing["sizes"]
    lines = [
        *common.report_header("telemetry overhead benchmark", env),
        f"opentelemetry-api {env['opentelemetry-api']}, -sdk {env['opentelemetry-sdk']}; {timing['rounds']} rounds, "
        f"variants interleaved; a block = insert_many of {s['insert_many']} events | {s['l1_hit']} L1 hits | "
        f"{s['query']} primary queries",
        "",
        f"  {'':<22}{'clock':-^45}  {'CPU of the calling thread':-^45}",
        f"  {'operation':<13}{'variant':<9}" + f"{'median µs':>11}{'+µs':>9}{'paired':>8}{'p25-p75':>17}  " * 2,
    ]
    for operation, variants in timing["operations"].items():
        for variant, m in variants.items():
            c = timing["cpu"][operation][variant]
            lines.append(f"  {operation:<13}{variant:<9}" + "".join(
                f"{x['median_us']:>11.2f}{x['added_us']:>9.2f}{x['paired_ratio']:>8.4f}"
                f"{x['paired_ratio_quartiles'][0]:>9.4f}-{x['paired_ratio_quartiles'][1]:.4f}  " for x in (m, c)))
    lines.append("  CPU of the whole process, paired (p25-p75): " + "; ".join(
        f"{op} {v} {m['paired_ratio']:.4f} ({m['paired_ratio_quartiles'][0]:.4f}-{m['paired_ratio_quartiles'][1]:.4f})"
        for op, variants in timing["cpu_process"].items() for v, m in variants.items() if v != "off"))
    lines.append("")
    for key, t in report["targets"].items():
        verdict = "met" if t["met"] else "MISSED"
        lines.append(f"{key:<28}{t['value']:>8}   target <= {t['target']:g} (CPU, paired)   {verdict}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    load_before = load_average()
    prefix = f"audit-bench-{uuid.uuid4().hex[:8]}"
    with common.read_servers(log, durable=False) as servers:
        with read_database(servers, "telemetry", rows=args.rows, days=args.days, principals=args.principals,
                           application_name=APPLICATION_NAME, log=log) as data:
            def settings(enabled: bool) -> AuditSettings:
                return AuditSettings(
                    database_url=data.url, replica_urls=data.replica_urls, redis_url=servers.redis_url,
                    application_name=APPLICATION_NAME,
                    # the queried figures (health, partitions) once only: no background queries between blocks
                    telemetry={"enabled": enabled, "inspect_interval_seconds": 86_400},
                    cache={"enabled": True, "key_prefix": prefix, "key": key, "l1_max_entries": 10_000},
                )

            key = secrets.token_hex(32)
            since = data.today - dt.timedelta(days=args.days)
            queries = [AuditQuery(principal_id=principal(k), since=since, until=data.today - dt.timedelta(days=1))
                       for k in range(min(args.shapes, args.principals))]
            try:
                with AuditDatabase(settings(False)) as quiet, AuditDatabase(settings(True)) as observed:
                    for db in (quiet, observed):
                        if servers.redis_url:
                            check(db.cache.wait_synced(10), "the cache's invalidation channel did not connect")
                    timing = measure(quiet, observed, queries, args, data.today)
            finally:
                drop_redis_keys(servers.redis_url, prefix)
        env = {**environment(servers, args), "load_average_before": load_before, "load_average_after": load_average()}
    return {
        "benchmark": "telemetry_overhead",
        "environment": env,
        "timing": timing,
        "targets": targets(timing),
        "ratios": {f"{op}_{v}_over_off_{clock}": timing[key][op][v]["paired_ratio"]
                   for op in OPERATIONS for v in VARIANTS if v != "off"
                   for clock, key in (("cpu", "cpu"), ("clock", "operations"))},
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=positive_int, default=20_000, help="events over the days before today (20000)")
    parser.add_argument("--days", type=positive_int, default=7, help="days of history (7)")
    parser.add_argument("--principals", type=positive_int, default=50, help="distinct principals (50)")
    parser.add_argument("--shapes", type=positive_int, default=20, help="queries kept in L1, one principal each (20)")
    parser.add_argument("--rounds", type=positive_int, default=201,
                        help="rounds: each runs a block of every operation for every variant (201)")
    parser.add_argument("--events", type=positive_int, default=5000,
                        help="events per insert_many block: one call, one COPY batch at the default batch size (5000)")
    parser.add_argument("--lookups", type=positive_int, default=200, help="L1 hits per block (200)")
    parser.add_argument("--queries", type=positive_int, default=10, help="primary queries per block (10)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help=f"JSON report ({DEFAULT_OUTPUT})")
    args = parser.parse_args(argv)
    check_principals(parser, args.principals)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    return common.run_main(parse_args(argv), run, format_table, log, check_failure=CheckFailed)


if __name__ == "__main__":
    sys.exit(main())
