"""Ingest benchmark: how fast ``AuditDatabase.insert_many`` stores events, next to its ceiling and its naive peer.

What is measured
----------------
N realistic audit events are generated once, deterministically from ``--seed`` and the current UTC hour (a mix
of patient-record reads, updates, exports, searches, logins and logouts by ~50 principals of ~10 organizations,
with nested ``details`` and event times spread over the current UTC month and the two before it). The SAME N
events are then written by each method into its own fresh, migrated database whose partitions for those months
already exist (so nothing lands in ``audit_log_default``):

``insert_many``
    ``AuditDatabase.insert_many(events)`` with the events already built as ``AuditEvent`` objects (what an
    application holds). Timed: row rendering (canonical JSON, SHA-256 content hash, details JSON), COPY batches
    of ``--batch-size`` events, one transaction (plus the library's savepoint) per batch.
``insert_many_from_dicts``
    End-to-end ingest from plain dicts: ``AuditDatabase.insert_many(dicts)``, which checks each dict against
    every rule of ``AuditEvent`` and renders and hashes its row (canonical JSON, SHA-256) inside the timing, as
    the batch streams to the server.
``raw_copy``
    The ceiling: raw psycopg ``COPY audit_log (…) FROM STDIN`` of row tuples rendered with ``event.row()`` from
    the same dicts BEFORE the timing (complete rows: ids, UTC times, details JSON, content hash), one
    ``copy.write_row`` per row, batches of the same size, one transaction per batch; no validation, no hashing,
    no savepoint.
``row_by_row``
    The naive peer: one ``INSERT … VALUES (%s, …)`` per event on one plain autocommit psycopg connection (each
    event its own transaction). It gets the pre-rendered rows too, so only the database round trips are timed,
    which favours it. ``--naive-events M`` caps it to the first M events; its rows/s then come from those M.

Every fresh database first gets an untimed warm-up of ``--warmup-events`` other events written by its method on
its connection. The methods then take turns: the events are cut into ``--rounds`` slices, and round by round
each method writes its next slice (the order rotating each round), after a best-effort ``CHECKPOINT``; so a
change in the machine's load meets every method alike. Only the writing is timed (what is untimed: building
``AuditEvent`` objects for ``insert_many``, rendering rows for ``raw_copy`` and ``row_by_row``), and each
method's seconds are summed over its rounds. At the end the script checks ``SELECT count(*) FROM audit_log`` in
each database: it must be exactly the warm-up rows plus the rows that method wrote, and ``audit_log_default``
must be empty; otherwise the script exits with status 2 (a benchmark that silently wrote nothing would be a lie).

Reported: seconds and rows/s per method, the ratios ``insert_many / raw_copy`` (target >= 0.7),
``insert_many_from_dicts / raw_copy`` (target >= 0.6) and ``insert_many / row_by_row`` (target >= 10) with
whether each target was met, and the environment (server version, Python, CPU count, N, batch size, rounds,
UTC date).
Nothing is gated on absolute times: a missed target is printed as MISSED and the exit status stays 0.

Servers: with ``AUDIT_BENCH_DATABASE_URL`` set, that server is used (the script creates and drops its own scratch
databases on it; the role needs CREATEDB). Otherwise a local PostgreSQL (``audit_local.servers.LocalServers``,
no replica, no Redis) is started in a temporary directory and always stopped and removed at the end, Ctrl-C
and SIGTERM included.

Run it from the repository root::

    python benchmarks/ingest.py                                    # 200,000 events, local server
    python benchmarks/ingest.py --events 20000 --naive-events 5000 --output /tmp/ingest.json
    AUDIT_BENCH_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres python benchmarks/ingest.py
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import os
import platform
import random
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: make `benchmarks` importable

from benchmarks import common  # noqa: E402
from benchmarks.common import positive_int, server_url  # noqa: E402
from audit_db_core import AuditDatabase, AuditEvent, AuditSettings
from audit_db_core.config import IngestSettings
from audit_db_core.events import EVENT_COLUMNS
from audit_db_core.migrate import migrate
from audit_db_core.partitions import DEFAULT_PARTITION, PARENT_TABLE, bounds_for

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "ingest.json"
DEFAULT_BATCH_SIZE = IngestSettings().batch_size
WARMUP_SOURCE = "benchmark-warmup"
TARGET_VS_RAW_COPY = 0.7
TARGET_FROM_DICTS_VS_RAW_COPY = 0.6
TARGET_VS_ROW_BY_ROW = 10.0
APPLICATION_NAME = "audit-bench-ingest"

WRITE_COLUMNS: tuple[str, ...] = (*EVENT_COLUMNS, "content_hash")
COPY_STATEMENT = sql.SQL("COPY {} ({}) FROM STDIN").format(
    sql.Identifier(PARENT_TABLE), sql.SQL(", ").join(sql.Identifier(c) for c in WRITE_COLUMNS)
)
INSERT_STATEMENT = sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
    sql.Identifier(PARENT_TABLE),
    sql.SQL(", ").join(sql.Identifier(c) for c in WRITE_COLUMNS),
    sql.SQL(", ").join(sql.Placeholder() * len(WRITE_COLUMNS)),
)
COUNT_STATEMENT = sql.SQL("SELECT count(*), count(*) FILTER (WHERE {} = %s) FROM {}").format(
    sql.Identifier("source"), sql.Identifier(PARENT_TABLE)
)
COUNT_DEFAULT_STATEMENT = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(DEFAULT_PARTITION))

EventSpec = dict[str, Any]
Row = tuple[Any, ...]


def log(message: str) -> None:
    print(f"[ingest] {message}", file=sys.stderr, flush=True)


class CountMismatch(RuntimeError):
    """A method did not leave exactly the rows it was supposed to write."""


# -- event generation ----------------------------------------------------------------------------------------------

_ACTIONS: tuple[tuple[str, int], ...] = (
    ("patient.record.read", 45),
    ("patient.record.update", 15),
    ("patient.record.export", 5),
    ("patient.search", 10),
    ("user.login", 18),
    ("user.logout", 7),
)
_STATUSES: tuple[tuple[str, int], ...] = (("success", 85), ("failure", 7), ("attempt", 8))
_SOURCES = ("ehr-web", "ehr-api", "mobile-app", "reporting", "hl7-gateway")
_FIELDS = ("allergies", "medications", "diagnoses", "lab_results", "vitals", "demographics", "insurance", "notes")
_REASONS = ("treatment", "payment", "operations", "emergency", "research", "patient-request")
_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/131.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_6) Safari/605.1.15",
    "EHR-Mobile/4.12 (iOS 18.1)",
    "python-requests/2.32",
)
_FAILURES = ("permission denied", "record locked by another user", "invalid credentials", "session expired")


@dataclass(frozen=True)
class Population:
    principals: tuple[str, ...]
    organizations: tuple[str, ...]
    patients: tuple[str, ...]


def make_population(rng: random.Random) -> Population:
    roles = ("dr", "nurse", "clerk", "svc")
    principals = tuple(f"{rng.choice(roles)}.{i:03d}" for i in range(50))
    organizations = tuple(f"org-{i:03d}" for i in range(10))
    patients = tuple(f"p-{rng.randrange(10**7):07d}" for _ in range(5000))
    return Population(principals, organizations, patients)


def month_start(ts: dt.datetime, back: int = 0) -> dt.datetime:
    index = ts.year * 12 + ts.month - 1 - back
    return dt.datetime(index // 12, index % 12 + 1, 1, tzinfo=dt.UTC)


def time_window(now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """The current UTC month so far and the two months before it, up to the start of the current hour (so the
    generated events are the same for runs within one hour), and at least one hour into the current month."""
    hour = now.replace(minute=0, second=0, microsecond=0)
    return month_start(now, back=2), max(hour, month_start(now) + dt.timedelta(hours=1))


def uuid7_at(ts: dt.datetime, rng: random.Random) -> uuid.UUID:
    """A UUIDv7 for ``ts`` with random bits from ``rng`` (deterministic, time-ordered like the library's ids)."""
    ms = int(ts.timestamp() * 1000)
    value = (ms << 80) | (0x7 << 76) | (rng.getrandbits(12) << 64) | (0b10 << 62) | rng.getrandbits(62)
    return uuid.UUID(int=value)


def weighted(rng: random.Random, choices: Sequence[tuple[str, int]]) -> str:
    return rng.choices([c for c, _ in choices], weights=[w for _, w in choices])[0]


def client_info(rng: random.Random) -> dict[str, Any]:
    return {"ip": f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}",
            "user_agent": rng.choice(_AGENTS)}


def make_details(rng: random.Random, action: str) -> dict[str, Any]:
    if action == "patient.record.read":
        return {"fields": rng.sample(_FIELDS, rng.randint(1, 4)), "reason": rng.choice(_REASONS),
                "client": client_info(rng)}
    if action == "patient.record.update":
        field = rng.choice(_FIELDS)
        return {"changes": [{"field": field, "op": rng.choice(("replace", "add", "remove")),
                             "old_length": rng.randrange(400), "new_length": rng.randrange(400)}],
                "reason": rng.choice(_REASONS), "client": client_info(rng)}
    if action == "patient.record.export":
        return {"format": rng.choice(("pdf", "ccda", "fhir-json")), "records": rng.randint(1, 200),
                "destination": {"type": rng.choice(("email", "portal", "sftp")), "encrypted": rng.random() < 0.9},
                "size_mb": round(rng.uniform(0.1, 50.0), 2)}
    if action == "patient.search":
        return {"criteria": {"name_prefix": rng.choice("ABCDEFGHJKLMNPRSTW"), "dob_year": rng.randint(1930, 2024)},
                "results": rng.randrange(60), "client": client_info(rng)}
    if action == "user.login":
        return {"method": rng.choice(("password", "sso", "smartcard")), "mfa": rng.random() < 0.8,
                "client": client_info(rng), "risk_score": round(rng.random(), 3)}
    return {"reason": rng.choice(("user", "timeout", "admin")), "session_minutes": rng.randrange(1, 480)}


def make_spec(rng: random.Random, pop: Population, start: dt.datetime, span_s: float, source: str | None) -> EventSpec:
    event_time = start + dt.timedelta(seconds=rng.random() * span_s)
    action = weighted(rng, _ACTIONS)
    status = weighted(rng, _STATUSES)
    patient_action = action.startswith("patient.record")
    principal_index = rng.randrange(len(pop.principals))
    if patient_action:
        classification = "PHI" if rng.random() < 0.9 else "CONFIDENTIAL"
    else:
        classification = "INTERNAL" if rng.random() < 0.95 else "PUBLIC"
    return {
        "event_id": uuid7_at(event_time, rng),
        "event_time": event_time,
        "action": action,
        "status": status,
        "principal_id": pop.principals[principal_index],
        "organization_id": pop.organizations[principal_index % len(pop.organizations)],
        "target_resource_type": "Patient" if patient_action else None,
        "target_resource_id": rng.choice(pop.patients) if patient_action else None,
        "outcome_description": rng.choice(_FAILURES) if status == "failure" else None,
        "data_classification": classification,
        "retention_policy": "hipaa-6y" if classification == "PHI" else "standard",
        "correlation_id": f"{rng.getrandbits(64):016x}",
        "session_id": f"s-{principal_index:03d}-{rng.randrange(1000):03d}",
        "source": source or rng.choice(_SOURCES),
        "event_version": "1",
        "processing_latency_ms": rng.randrange(0, 250),
        "details": make_details(rng, action),
    }


def generate_specs(count: int, seed: str, now: dt.datetime, source: str | None = None) -> list[EventSpec]:
    """``count`` event dicts, the same for a ``seed`` and the hour of ``now``, in event-time order."""
    rng = random.Random(seed)
    pop = make_population(random.Random(f"{seed}-population"))
    start, end = time_window(now)
    span_s = (end - start).total_seconds()
    specs = [make_spec(rng, pop, start, span_s, source) for _ in range(count)]
    specs.sort(key=lambda s: s["event_time"])  # an audit stream arrives roughly in time order
    return specs


def build_events(specs: Sequence[EventSpec]) -> list[AuditEvent]:
    return [AuditEvent(**spec) for spec in specs]


def render_rows(specs: Sequence[EventSpec]) -> list[Row]:
    return [event.row() for event in build_events(specs)]


def batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# -- servers and scratch databases ---------------------------------------------------------------------------------


def connect(url: str, *, autocommit: bool = True) -> psycopg.Connection[Any]:
    return common.connect(url, application_name=APPLICATION_NAME, autocommit=autocommit)


def scratch_database(server: str, label: str) -> contextlib.AbstractContextManager[str]:
    """A uniquely named database on ``server``, dropped afterwards (even on Ctrl-C)."""
    return common.scratch_database(server, label, application_name=APPLICATION_NAME)


def bench_settings(url: str, batch_size: int) -> AuditSettings:
    return AuditSettings(database_url=url, ingest={"batch_size": batch_size}, application_name=APPLICATION_NAME)


def partition_times(specs: Sequence[EventSpec]) -> list[dt.datetime]:
    """One timestamp per UTC day that holds an event (every partition interval is whole, midnight-aligned days)."""
    days = sorted({spec["event_time"].date() for spec in specs})
    return [dt.datetime(d.year, d.month, d.day, tzinfo=dt.UTC) for d in days]


def prepare_database(url: str, specs: Sequence[EventSpec], batch_size: int) -> list[str]:
    """Migrate, then create the partition of every period that holds an event; returns their names."""
    migrate(url)
    settings = bench_settings(url, batch_size)
    starts = sorted({bounds_for(ts, settings.partitions.interval).start for ts in partition_times(specs)})
    with AuditDatabase(settings) as db:
        return [db.partitions.create_partition(start).name for start in starts]


@contextlib.contextmanager
def fresh_database(server: str, label: str, specs: Sequence[EventSpec], batch_size: int) -> Iterator[str]:
    with scratch_database(server, label) as url:
        partitions = prepare_database(url, specs, batch_size)
        log(f"{label}: fresh database with partitions {', '.join(partitions)}")
        yield url


def checkpoint(url: str) -> None:
    """Flush dirty buffers before a timing so no method pays for the previous one's writes (needs privileges)."""
    with contextlib.suppress(psycopg.Error), connect(url) as conn:
        conn.execute("CHECKPOINT")


def check_counts(url: str, label: str, warmup: int, written: int) -> int:
    """Raise :class:`CountMismatch` unless ``audit_log`` holds exactly ``warmup + written`` rows, none in DEFAULT."""
    with connect(url) as conn:
        total, warm = conn.execute(COUNT_STATEMENT, (WARMUP_SOURCE,)).fetchone() or (0, 0)
        in_default = (conn.execute(COUNT_DEFAULT_STATEMENT).fetchone() or (0,))[0]
    if warm != warmup or total - warm != written or in_default:
        raise CountMismatch(
            f"{label}: audit_log holds {total} rows ({warm} warm-up, {total - warm} measured, {in_default} in"
            f" {DEFAULT_PARTITION}); expected {warmup} warm-up + {written} measured, 0 in {DEFAULT_PARTITION}"
        )
    return int(total)


# -- the methods ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    specs: Sequence[EventSpec]  # the measured events, as plain dicts
    naive_specs: Sequence[EventSpec]  # the first of them, for row_by_row
    warmup: Sequence[EventSpec]  # other events, written untimed first
    batch_size: int
    rounds: int


@dataclass(frozen=True)
class Writer:
    """One method on its own database: ``prepare`` (untimed) turns event dicts into what the method is handed —
    ``AuditEvent`` objects, the dicts themselves, rendered rows — and ``write`` (timed) stores that, returning how
    many rows it wrote."""

    prepare: Callable[[Sequence[EventSpec]], Sequence[Any]]
    write: Callable[[Sequence[Any]], int]
    transactions: Callable[[int], int]


def timed(write: Callable[[], int], expected: int, label: str) -> float:
    """Seconds ``write`` takes; it must report ``expected`` rows written."""
    gc.collect()
    started = time.perf_counter()
    written = write()
    seconds = time.perf_counter() - started
    if written != expected:
        raise CountMismatch(f"{label}: the write reported {written} rows, expected {expected}")
    return seconds


def per_batch(batch_size: int) -> Callable[[int], int]:
    return lambda events: -(-events // batch_size)


def open_insert_many(url: str, batch_size: int, stack: contextlib.ExitStack) -> Writer:
    """(a) ``insert_many`` of ready ``AuditEvent`` objects."""
    db = stack.enter_context(AuditDatabase(bench_settings(url, batch_size)))
    return Writer(build_events, db.insert_many, per_batch(batch_size))


def open_insert_many_from_dicts(url: str, batch_size: int, stack: contextlib.ExitStack) -> Writer:
    """(a2) ``insert_many`` of plain dicts: checking and hashing each event is timed too."""
    db = stack.enter_context(AuditDatabase(bench_settings(url, batch_size)))
    return Writer(list, db.insert_many, per_batch(batch_size))


def copy_rows(conn: psycopg.Connection[Any], rows: Sequence[Row], batch_size: int) -> int:
    written = 0
    with conn.cursor() as cur:
        for batch in batches(rows, batch_size):
            with conn.transaction(), cur.copy(COPY_STATEMENT) as copy:
                for row in batch:
                    copy.write_row(row)
            written += len(batch)
    return written


def open_raw_copy(url: str, batch_size: int, stack: contextlib.ExitStack) -> Writer:
    """(b) the ceiling: COPY of pre-rendered rows, no validation, one transaction per batch."""
    conn = stack.enter_context(connect(url))
    return Writer(render_rows, lambda rows: copy_rows(conn, rows, batch_size), per_batch(batch_size))


def insert_rows(conn: psycopg.Connection[Any], rows: Sequence[Row]) -> int:
    written = 0
    with conn.cursor() as cur:
        for row in rows:
            cur.execute(INSERT_STATEMENT, row)
            written += cur.rowcount
    return written


def open_row_by_row(url: str, batch_size: int, stack: contextlib.ExitStack) -> Writer:
    """(c) the naive peer: one autocommit INSERT per event (pre-rendered rows: only the round trips are timed)."""
    conn = stack.enter_context(connect(url))
    return Writer(render_rows, lambda rows: insert_rows(conn, rows), lambda events: events)


@dataclass(frozen=True)
class Method:
    name: str
    description: str
    open: Callable[[str, int, contextlib.ExitStack], Writer]


METHODS: tuple[Method, ...] = (
    Method("insert_many", "AuditDatabase.insert_many(events) of ready AuditEvent objects", open_insert_many),
    Method("insert_many_from_dicts", "AuditDatabase.insert_many(dicts): each event checked and hashed from its dict",
           open_insert_many_from_dicts),
    Method("raw_copy", "psycopg COPY FROM STDIN of pre-rendered event.row() tuples, one transaction per batch",
           open_raw_copy),
    Method("row_by_row", "one INSERT ... VALUES per event, autocommit, one plain connection (pre-rendered rows)",
           open_row_by_row),
)


def rounds_of(items: Sequence[Any], rounds: int) -> list[Sequence[Any]]:
    """``items`` in ``rounds`` consecutive slices of (nearly) equal size."""
    edges = [len(items) * r // rounds for r in range(rounds + 1)]
    return [items[edges[r] : edges[r + 1]] for r in range(rounds)]


def measure_all(server: str, work: Workload) -> dict[str, dict[str, Any]]:
    """Every method on its own fresh database, interleaved: round by round each method writes its next slice of
    the events (the order rotating), so a change in the machine's load reaches every method alike."""
    every_spec = [*work.warmup, *work.specs]
    with contextlib.ExitStack() as stack:
        urls: dict[str, str] = {}
        writers: dict[str, Writer] = {}
        for method in METHODS:
            urls[method.name] = stack.enter_context(fresh_database(server, method.name, every_spec, work.batch_size))
            writers[method.name] = writer = method.open(urls[method.name], work.batch_size, stack)
            writer.write(writer.prepare(work.warmup))
        slices = {m.name: rounds_of(work.naive_specs if m.name == "row_by_row" else work.specs, work.rounds)
                  for m in METHODS}
        seconds = dict.fromkeys(urls, 0.0)
        for r in range(work.rounds):
            for method in METHODS[r % len(METHODS) :] + METHODS[: r % len(METHODS)]:
                chunk = writers[method.name].prepare(slices[method.name][r])
                checkpoint(urls[method.name])
                seconds[method.name] += timed(lambda: writers[method.name].write(chunk), len(chunk), method.name)
            log(f"round {r + 1}/{work.rounds}: " + ", ".join(
                f"{name} {sum(len(c) for c in slices[name][: r + 1]) / s:,.0f} rows/s" for name, s in seconds.items()))
        results: dict[str, dict[str, Any]] = {}
        for method in METHODS:
            events = sum(len(c) for c in slices[method.name])
            rows_in_table = check_counts(urls[method.name], method.name, len(work.warmup), events)
            took = seconds[method.name]
            rate = events / took if took > 0 else float("inf")
            log(f"{method.name}: {events} events in {took:.3f} s = {rate:,.0f} rows/s (count checked)")
            results[method.name] = {
                "description": method.description,
                "events": events,
                "seconds": round(took, 4),
                "rows_per_second": round(rate, 1),
                "transactions": sum(writers[method.name].transactions(len(c)) for c in slices[method.name]),
                "rows_in_table": rows_in_table,
                "warmup_rows": len(work.warmup),
            }
        return results


# -- report --------------------------------------------------------------------------------------------------------


#: The server settings its figures depend on, reported with them.
_SERVER_SETTINGS = (
    "fsync", "synchronous_commit", "shared_buffers", "max_wal_size", "full_page_writes",
)


def ratio(numerator: dict[str, Any], denominator: dict[str, Any]) -> float:
    return round(numerator["rows_per_second"] / denominator["rows_per_second"], 3)


def targets(methods: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for method, peer, minimum in (
        ("insert_many", "raw_copy", TARGET_VS_RAW_COPY),
        ("insert_many_from_dicts", "raw_copy", TARGET_FROM_DICTS_VS_RAW_COPY),
        ("insert_many", "row_by_row", TARGET_VS_ROW_BY_ROW),
    ):
        key = f"{method}_over_{peer}"
        value = ratio(methods[method], methods[peer])
        out[key] = {"value": value, "target": minimum, "met": value >= minimum}
    return out


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages (other work on the machine skews every method; this records it)."""
    return [round(x, 2) for x in os.getloadavg()]


def environment(server: str, server_description: str, args: argparse.Namespace) -> dict[str, Any]:
    return {
        "date_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "python_version": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "psycopg_version": psycopg.__version__,
        "psycopg_impl": psycopg.pq.__impl__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "load_average_after": load_average(),
        "server": server_description,
        **common.server_facts(server, _SERVER_SETTINGS, application_name=APPLICATION_NAME),
        "events": args.events,
        "batch_size": args.batch_size,
        "warmup_events": args.warmup_events,
        "naive_events": args.naive_events if args.naive_events is not None else args.events,
        "seed": args.seed,
        "rounds": args.rounds,
    }


def format_table(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [
        f"ingest benchmark  {env['date_utc']}  PostgreSQL {env['server_version']}  Python {env['python_version']}"
        f"  cpus {env['cpu_count']}  N={env['events']}  batch={env['batch_size']}  seed={env['seed']}",
        f"server: {env['server']}",
        f"load average (1/5/15 min) before {env['load_average_before']}, after {env['load_average_after']}",
        "",
        f"{'method':<24}{'events':>10}{'seconds':>11}{'rows/s':>12}",
    ]
    for name, m in report["methods"].items():
        lines.append(f"{name:<24}{m['events']:>10}{m['seconds']:>11.3f}{m['rows_per_second']:>12,.0f}")
    lines.append("")
    for key, t in report["targets"].items():
        verdict = "met" if t["met"] else "MISSED"
        lines.append(f"{key.replace('_over_', ' / '):<36}{t['value']:>8.3f}   target >= {t['target']:<5} {verdict}")
    return "\n".join(lines)


# -- main ----------------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=positive_int, default=200_000, help="N, events per method (200000)")
    parser.add_argument("--batch-size", type=positive_int, default=DEFAULT_BATCH_SIZE,
                        help=f"events per COPY batch / transaction (the library default, {DEFAULT_BATCH_SIZE})")
    parser.add_argument("--naive-events", type=positive_int, default=None,
                        help="cap row_by_row to the first M events (default: all N)")
    parser.add_argument("--warmup-events", type=int, default=2000, help="untimed warm-up events per database")
    parser.add_argument("--rounds", type=positive_int, default=5,
                        help="slices each method writes in turn, interleaved with the other methods (5)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the generated events (1)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help=f"JSON report ({DEFAULT_OUTPUT})")
    args = parser.parse_args(argv)
    if args.naive_events is not None and args.naive_events > args.events:
        parser.error("--naive-events cannot exceed --events")
    if args.warmup_events < 0:
        parser.error("--warmup-events cannot be negative")
    if args.rounds > min(args.events, args.naive_events or args.events):
        parser.error("--rounds cannot exceed the events (or --naive-events) it slices")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    now = dt.datetime.now(dt.UTC)
    load_before = load_average()
    log(f"generating {args.events} events (seed {args.seed}) + {args.warmup_events} warm-up events")
    specs = generate_specs(args.events, str(args.seed), now)
    warmup = generate_specs(args.warmup_events, f"{args.seed}-warmup", now, source=WARMUP_SOURCE)
    naive_count = args.naive_events if args.naive_events is not None else args.events
    work = Workload(specs, specs[:naive_count], warmup, args.batch_size, args.rounds)
    with server_url(log, durable=True) as (server, description):
        methods = measure_all(server, work)
        env = {**environment(server, description, args), "load_average_before": load_before}
    checked = targets(methods)
    return {"benchmark": "ingest", "environment": env, "methods": methods, "targets": checked,
            "ratios": {key: t["value"] for key, t in checked.items()}}


def main(argv: Sequence[str] | None = None) -> int:
    return common.run_main(parse_args(argv), run, format_table, log, check_failure=CountMismatch)


if __name__ == "__main__":
    sys.exit(main())
