"""Replication benchmark: what synchronous replication (``AUDIT_INGEST__SYNCHRONOUS_COMMIT``) costs on ingest.

What is measured
----------------
One primary with one streaming replica that is a *synchronous standby* (``synchronous_standby_names`` names its
``application_name``). The same kind of events are written through ``AuditDatabase`` under each
``synchronous_commit`` mode, one ``AuditDatabase`` per mode (``AUDIT_INGEST__SYNCHRONOUS_COMMIT``):

``local``
    The baseline: a commit returns once the primary has flushed it, without waiting for the standby — what an
    asynchronous replica gives (the server's default ``on`` with no synchronous standby behaves the same).
``on``
    A commit returns once the standby has *flushed* it too: an acknowledged write survives the loss of the primary.
``remote_apply``
    A commit returns once the standby has *applied* it: it survives the primary's loss and is visible on the
    standby at once (reads on that replica see it).

Workloads, each timed per mode:

``insert``
    One thread, ``insert()`` of one event per call: one commit, so one wait for the standby, per event.
``insert_threads``
    ``--threads`` threads, ``insert()`` each: concurrent commits share the standby's round trips.
``insert_many``
    ``insert_many()`` in batches of ``--batch-size`` events: one commit (and one wait) per batch.

The modes take turns: each workload's events are cut into ``--rounds`` slices, and round by round every mode
writes its next slice (the order rotating), so a change in the machine's load meets every mode alike. Events are
built before the timing. Checks (exit status 2 when one fails): the standby is ``sync`` in ``pg_stat_replication``
before and after; after each ``remote_apply`` slice the replica holds every row of that mode at once (read without
waiting); at the end the primary holds exactly the rows each mode wrote.

Reported: seconds and events/s per mode and workload, and each mode's ratio to ``local`` (events/s; below 1 is
the cost). Nothing is gated on absolute times.

Servers: with ``AUDIT_BENCH_DATABASE_URL`` and ``AUDIT_BENCH_REPLICA_URLS`` set, those (the primary must already
name that replica in ``synchronous_standby_names``; the role needs CREATEDB); otherwise a local primary and
replica (``audit_local``), fsync on for both, the replica made synchronous, stopped and removed at the end.

Run it from the repository root::

    python benchmarks/replication.py                       # 2,000 single inserts, 100,000 batched events
    python benchmarks/replication.py --events 500 --batch-events 10000 --output /tmp/replication.json
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: make `benchmarks` importable

from benchmarks import common  # noqa: E402
from benchmarks.common import positive_int  # noqa: E402
from audit_db_core import AuditDatabase, AuditEvent, AuditSettings
from audit_db_core.migrate import migrate

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "replication.json"
APPLICATION_NAME = "audit-bench-replication"
MODES = ("local", "on", "remote_apply")
BASELINE = "local"
WORKLOADS = ("insert", "insert_threads", "insert_many")
_SERVER_SETTINGS = ("fsync", "synchronous_commit", "synchronous_standby_names", "wal_level", "commit_delay")

log = common.stderr_logger("replication")


class ReplicationCheckFailed(RuntimeError):
    """The standby was not synchronous, or did not hold what a mode promises."""


def events_for(mode: str, workload: str, count: int) -> list[AuditEvent]:
    """``count`` events tagged with their mode (``source``) and workload (``action``), built before any timing."""
    return [AuditEvent(action=f"bench.{workload}", status="success", principal_id=f"p-{i % 50}",
                       organization_id=f"org-{i % 10}", source=f"bench-{mode}",
                       details={"i": i, "workload": workload, "note": "synchronous replication benchmark"})
            for i in range(count)]


def write(db: AuditDatabase, workload: str, events: list[AuditEvent], threads: int) -> float:
    """Write ``events`` by ``workload``; seconds taken."""
    started = time.perf_counter()
    if workload == "insert":
        for event in events:
            db.insert(event)
    elif workload == "insert_many":
        db.insert_many(events)
    else:
        shares = [events[i::threads] for i in range(threads)]
        errors: list[BaseException] = []

        def run(share: list[AuditEvent]) -> None:
            try:
                for event in share:
                    db.insert(event)
            except BaseException as exc:  # noqa: BLE001 - re-raised below, in the caller
                errors.append(exc)

        workers = [threading.Thread(target=run, args=(share,)) for share in shares]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        if errors:
            raise errors[0]
    return time.perf_counter() - started


def count_rows(url: str, mode: str) -> int:
    with common.connect(url, application_name=APPLICATION_NAME) as conn:
        row = conn.execute("SELECT count(*) FROM audit_log WHERE source = %s", (f"bench-{mode}",)).fetchone()
    return int(row[0]) if row else 0


def sync_state(primary: str) -> str | None:
    with common.connect(primary, application_name=APPLICATION_NAME) as conn:
        row = conn.execute("SELECT sync_state FROM pg_stat_replication WHERE sync_state IN ('sync', 'quorum')"
                           " LIMIT 1").fetchone()
    return row[0] if row else None


def slices(total: int, rounds: int) -> list[int]:
    return [total // rounds + (1 if r < total % rounds else 0) for r in range(rounds)]


def measure(primary: str, replica: str, args: argparse.Namespace) -> dict[str, dict[str, dict[str, Any]]]:
    sizes = {"insert": args.events, "insert_threads": args.events, "insert_many": args.batch_events}
    results = {m: {w: {"events": 0, "seconds": 0.0} for w in WORKLOADS} for m in MODES}
    databases = {}
    for mode in MODES:
        settings = AuditSettings(database_url=primary, cache={"enabled": False},
                                 pool={"max_size": max(args.threads, 2)},
                                 ingest={"synchronous_commit": mode, "batch_size": args.batch_size})
        databases[mode] = AuditDatabase(settings).open()
    try:
        for mode, db in databases.items():  # untimed warm-up: pools filled, plans cached
            write(db, "insert", events_for(mode, "warmup", 20), 1)
        for r in range(args.rounds):
            order = MODES[r % len(MODES):] + MODES[:r % len(MODES)]
            for workload in WORKLOADS:
                size = slices(sizes[workload], args.rounds)[r]
                for mode in order:
                    batch = events_for(mode, workload, size)
                    seconds = write(databases[mode], workload, batch, args.threads)
                    results[mode][workload]["events"] += size
                    results[mode][workload]["seconds"] += seconds
                    if mode == "remote_apply":
                        on_primary, on_replica = count_rows(primary, mode), count_rows(replica, mode)
                        if on_replica != on_primary:
                            raise ReplicationCheckFailed(
                                f"remote_apply: the replica holds {on_replica} rows right after the write, the "
                                f"primary {on_primary}: the standby is not synchronous")
            log(f"round {r + 1}/{args.rounds} done")
    finally:
        for db in databases.values():
            db.close()
    for mode in MODES:
        expected = 20 + sum(results[mode][w]["events"] for w in WORKLOADS)
        stored = count_rows(primary, mode)
        if stored != expected:
            raise ReplicationCheckFailed(f"{mode}: {stored} rows on the primary, {expected} written")
        for figures in results[mode].values():
            figures["seconds"] = round(figures["seconds"], 4)
            figures["events_per_second"] = round(figures["events"] / figures["seconds"], 1)
    return results


def ratios(results: dict[str, dict[str, dict[str, Any]]]) -> dict[str, dict[str, float]]:
    """Per mode and workload: events/s relative to the baseline (``local``) in the same run."""
    return {mode: {w: round(results[mode][w]["events_per_second"] / results[BASELINE][w]["events_per_second"], 3)
                   for w in WORKLOADS}
            for mode in MODES if mode != BASELINE}


def environment(servers: common.ReadServers, args: argparse.Namespace) -> dict[str, Any]:
    return {
        **common.read_environment(servers, _SERVER_SETTINGS, application_name=APPLICATION_NAME),
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        **{name: value for name, value in vars(args).items() if name != "output"},  # events, batch_events, …
    }


def format_table(report: dict[str, Any]) -> str:
    env, results, rel = report["environment"], report["modes"], report["ratios"]
    lines = [
        *common.report_header("replication benchmark", env),
        f"insert N={env['events']}  insert_many N={env['batch_events']} (batches of {env['batch_size']})"
        f"  threads={env['threads']}  rounds={env['rounds']}",
        "",
        f"{'workload':<16}{'synchronous_commit':<20}{'events':>8}{'seconds':>10}{'events/s':>12}{'vs local':>10}",
    ]
    for workload in WORKLOADS:
        for mode in MODES:
            m = results[mode][workload]
            ratio = "1.000" if mode == BASELINE else f"{rel[mode][workload]:.3f}"
            lines.append(f"{workload:<16}{mode:<20}{m['events']:>8}{m['seconds']:>10.3f}"
                         f"{m['events_per_second']:>12,.0f}{ratio:>10}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=positive_int, default=2000,
                        help="events per mode for each single-insert workload (2000)")
    parser.add_argument("--batch-events", type=positive_int, default=100_000,
                        help="events per mode for insert_many (100000)")
    parser.add_argument("--batch-size", type=positive_int, default=5000, help="events per insert_many batch (5000)")
    parser.add_argument("--threads", type=positive_int, default=8, help="writer threads of insert_threads (8)")
    parser.add_argument("--rounds", type=positive_int, default=5, help="slices each mode writes in turn (5)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help=f"JSON report ({DEFAULT_OUTPUT})")
    args = parser.parse_args(argv)
    if args.rounds > min(args.events, args.batch_events):
        parser.error("--rounds cannot exceed the events it slices")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    load_before = [round(x, 2) for x in os.getloadavg()]
    with common.read_servers(log, durable=True, synchronous=True) as servers:
        if not servers.replica_urls:
            raise ReplicationCheckFailed(f"no replica: set {common.ENV_REPLICAS} with {common.ENV_SERVER}")
        if sync_state(servers.database_url) is None:
            raise ReplicationCheckFailed("no synchronous standby in pg_stat_replication: set "
                                         "synchronous_standby_names on the primary to the replica's application_name")

        def prepare(url: str) -> None:
            migrate(url)
            with AuditDatabase(AuditSettings(database_url=url, cache={"enabled": False})) as db:
                db.partitions.premake()

        with common.scratch_database(servers.database_url, "replication", application_name=APPLICATION_NAME,
                                     prepare=prepare) as url:
            replica = common.with_dbname(servers.replica_urls[0], url.rsplit("/", 1)[-1])
            results = measure(url, replica, args)
        if sync_state(servers.database_url) is None:
            raise ReplicationCheckFailed("the standby was no longer synchronous at the end of the run")
        env = {**environment(servers, args), "load_average_before": load_before}
    return {"benchmark": "replication", "environment": env, "modes": results, "ratios": ratios(results)}


def main(argv: Sequence[str] | None = None) -> int:
    return common.run_main(parse_args(argv), run, format_table, log, check_failure=ReplicationCheckFailed)


if __name__ == "__main__":
    sys.exit(main())
