"""Failover benchmark: a real 3-node Patroni cluster, client traffic through ``AuditDatabase``, faults injected.

What is measured
----------------
A Patroni cluster on loopback (``audit_local.cluster``: etcd, three Patroni nodes with PostgreSQL, tuned timings,
``synchronous_mode`` unless ``--asynchronous``) serves one migrated database. One ``AuditDatabase`` reaches it the
way an application would: the primary through a libpq multi-host URL with ``target_session_attrs=read-write``
listing every node, replicas as one URL per node (the library keeps in rotation the ones that are standbys). Then,
one after the other (the cluster made healthy again between them):

- ``leader_crash``: ``--writers`` threads (8) write events (``db.insert``) and ``--readers`` (4) read uncached
  ``eventual`` pages; after ``--settle`` seconds the leader's postmaster is SIGKILLed (its Patroni lives on and,
  with ``primary_start_timeout`` 0, hands the leader key to the synchronous standby).
- ``leader_lost``: the same, but the leader's Patroni is SIGKILLed with its PostgreSQL, as when its machine is
  lost: nobody hands the key over; it expires after Patroni's ``ttl`` (20 s, its minimum).
- ``replica_lost``: readers (and writers) while a replica's Patroni and PostgreSQL are SIGKILLed, kept down
  ``--down`` seconds, started again and rejoined.
- ``switchover``: a planned switchover through Patroni's REST API (``POST /switchover``) under the same traffic.

Per drill: write unavailability (fault → the first write acknowledged after it; the target is < 15 s, the seed's
< 30 s), Patroni's own promotion time (fault → a new leader accepts writes), writes and reads that failed, events
acknowledged and how many of them are missing from the new leader or stored twice (target 0 in synchronous mode),
where the reads went. A drill ends once writes have resumed for ``--after`` seconds (or after ``--deadline``).

Exit status: 2 when an acknowledged event is missing or duplicated in synchronous mode, or writes never resumed;
0 otherwise (missed time targets print ``MISSED``). Nothing is gated on absolute times.

Run it from the repository root (needs the HA lane's packages: see ``audit_local.cluster``)::

    python benchmarks/failover.py                         # every drill, about 2.5 minutes
    python benchmarks/failover.py --drills leader_crash --output /tmp/failover.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: make `benchmarks` importable

from benchmarks import common  # noqa: E402
from benchmarks.common import positive_int  # noqa: E402
from audit_db_core import AuditDatabase, AuditEvent, AuditQuery, AuditSettings  # noqa: E402
from audit_db_core.errors import redact  # noqa: E402
from audit_db_core.migrate import migrate  # noqa: E402

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "failover.json"
APPLICATION_NAME = "audit-bench-failover"
DRILLS = ("leader_crash", "leader_lost", "replica_lost", "switchover")
#: Targets of issue #15 (seconds, events, reads).
WRITE_UNAVAILABILITY_TARGET = 15.0
SEED_RECOVERY_TARGET = 30.0
ERROR_SAMPLES = 5
#: The baseline writer's table (plain psycopg, no library): what the cluster and libpq allow by themselves.
PROBE_TABLE = "failover_probe"

log = common.stderr_logger("failover")


class CheckFailed(Exception):
    """An acknowledged event is missing or stored twice, or writes never resumed."""


def drill_settings(cluster: Any, dbname: str, **overrides: Any) -> AuditSettings:
    """The library's settings for the cluster: the primary by a multi-host URL, every node as a replica URL, no
    cache (every read reaches a server)."""
    return AuditSettings(
        database_url=cluster.primary_url(dbname),
        replica_urls=cluster.replica_urls(dbname),
        redis_url=None,
        application_name=APPLICATION_NAME,
        cache={"enabled": False},
        replicas={"monitor_interval_seconds": 0.5},
        **overrides,
    )


def prepare_database(cluster: Any, dbname: str) -> str:
    """Create and migrate ``dbname`` on the leader (with the baseline's :data:`PROBE_TABLE`); return its multi-host
    URL."""
    with psycopg.connect(cluster.primary_url(), autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    url = cluster.primary_url(dbname)
    migrate(url)
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql.SQL("CREATE TABLE {} (id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())")
                     .format(sql.Identifier(PROBE_TABLE)))
    return url


# --------------------------------------------------------------------------------------------------------------
# Traffic: writer and reader threads through one AuditDatabase
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Traffic:
    """``writers`` threads inserting events and ``readers`` threads reading uncached ``eventual`` pages through
    ``db``, each recording what succeeded and what failed (with monotonic times) until :meth:`stop`; and the
    baseline: one thread inserting into :data:`PROBE_TABLE` with plain psycopg through the same multi-host ``url``,
    connecting again at once after any error."""

    db: AuditDatabase
    url: str
    writers: int
    readers: int
    marker: str
    acknowledged: list[tuple[float, Any, dt.datetime]] = field(default_factory=list)
    baseline_acknowledged: list[float] = field(default_factory=list)
    write_failures: list[tuple[float, str]] = field(default_factory=list)
    reads: list[tuple[float, str]] = field(default_factory=list)
    read_failures: list[tuple[float, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        for i in range(self.writers):
            self._threads.append(threading.Thread(target=self._write, args=(i,), name=f"writer-{i}", daemon=True))
        for i in range(self.readers):
            self._threads.append(threading.Thread(target=self._read, args=(i,), name=f"reader-{i}", daemon=True))
        self._threads.append(threading.Thread(target=self._write_baseline, name="baseline-writer", daemon=True))
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def _write(self, i: int) -> None:
        for n in itertools.count():
            if self._stop.is_set():
                return
            event = AuditEvent(action="ha.drill.write", status="success", principal_id=f"writer-{i}",
                               source=self.marker, details={"n": n})
            try:
                self.db.insert(event)
            except Exception as exc:
                with self._lock:
                    self.write_failures.append((time.monotonic(), _describe(exc)))
                self._stop.wait(0.05)
                continue
            with self._lock:
                self.acknowledged.append((time.monotonic(), event.event_id, event.event_time))
            self._stop.wait(0.005)

    def _write_baseline(self) -> None:
        conn: psycopg.Connection[Any] | None = None
        insert = sql.SQL("INSERT INTO {} DEFAULT VALUES").format(sql.Identifier(PROBE_TABLE))
        try:
            while not self._stop.is_set():
                try:
                    if conn is None:
                        conn = psycopg.connect(self.url, autocommit=True, connect_timeout=2)
                    conn.execute(insert)
                except psycopg.Error:
                    if conn is not None:
                        conn.close()
                    conn = None
                    self._stop.wait(0.05)
                    continue
                with self._lock:
                    self.baseline_acknowledged.append(time.monotonic())
                self._stop.wait(0.005)
        finally:
            if conn is not None:
                conn.close()

    def _read(self, i: int) -> None:
        since = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
        while not self._stop.is_set():
            query = AuditQuery(principal_id=f"writer-{i % max(self.writers, 1)}", since=since, limit=20)
            try:
                page = self.db.query(query, consistency="eventual", use_cache=False)
            except Exception as exc:
                with self._lock:
                    self.read_failures.append((time.monotonic(), _describe(exc)))
            else:
                with self._lock:
                    self.reads.append((time.monotonic(), str(page.extra.get("source", "?"))))
            self._stop.wait(0.01)

    def outage(self, fault: float, *, baseline: bool = False) -> tuple[float, float] | None:
        """The longest stretch without an acknowledged write that ends after ``fault``: (last ack before it, first
        ack after it); None while no write has been acknowledged after the fault's failures. ``baseline``: of the
        plain psycopg writer.

        Writes in flight at the fault may still be acknowledged a moment after it; the outage is the gap that
        follows them, so its end is the first write the new leader took."""
        with self._lock:
            times = sorted(self.baseline_acknowledged if baseline else (t for t, _, _ in self.acknowledged))
            failed_after = [] if baseline else [t for t, _ in self.write_failures if t > fault]
        if not times or times[-1] <= fault:
            return None
        if failed_after and times[-1] < failed_after[0]:
            return None  # nothing acknowledged since the failures began
        gaps = [(b - a, a, b) for a, b in zip(times, times[1:], strict=False) if b > fault]
        if not gaps:
            return None
        _, start, end = max(gaps)
        return start, end


def _describe(exc: BaseException) -> str:
    first = str(exc).splitlines()[0] if str(exc) else ""
    return redact(f"{type(exc).__name__}: {first}")[:200]


def check_stored(url: str, acknowledged: Sequence[tuple[float, Any, dt.datetime]]) -> dict[str, int]:
    """How many acknowledged events the leader has, misses, or holds more than once."""
    ids = [event_id for _, event_id, _ in acknowledged]
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        rows = conn.execute(
            "SELECT event_id, count(*) FROM audit_log WHERE event_id = ANY(%s) GROUP BY event_id", (ids,)
        ).fetchall()
    counts = {event_id: n for event_id, n in rows}
    return {
        "acknowledged": len(ids),
        "present": sum(1 for event_id in ids if event_id in counts),
        "missing": sum(1 for event_id in ids if event_id not in counts),
        "duplicated": sum(1 for n in counts.values() if n > 1),
    }


# --------------------------------------------------------------------------------------------------------------
# Drills
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DrillOptions:
    writers: int = 8
    readers: int = 4
    settle: float = 2.0
    after: float = 2.0
    deadline: float = 90.0
    down: float = 5.0


def run_drill(cluster: Any, dbname: str, drill: str, options: DrillOptions) -> dict[str, Any]:
    """Run one drill on a healthy cluster; return its figures (see the module docstring)."""
    if drill not in DRILLS:
        raise ValueError(f"unknown drill {drill!r}; expected one of {', '.join(DRILLS)}")
    cluster.ensure_healthy()
    members_before = {m.name: m.role for m in cluster.members()}
    leader = cluster.leader()
    url = cluster.primary_url(dbname)
    marker = f"drill-{drill}-{int(time.time())}"
    with AuditDatabase(drill_settings(cluster, dbname)) as db:
        db.router.wait_measured(10)
        traffic = Traffic(db, url, options.writers, options.readers, marker)
        traffic.start()
        try:
            time.sleep(options.settle)
            victim, promoted_after = leader, None
            fault = time.monotonic()
            if drill == "leader_crash":
                cluster.kill_postgres(leader)
            elif drill == "leader_lost":
                cluster.kill_node(leader)
            elif drill == "replica_lost":
                victim = next(name for name, role in members_before.items() if role == "replica") \
                    if "replica" in members_before.values() else \
                    next(name for name, role in members_before.items() if role != "leader")
                cluster.kill_node(victim)
            if drill == "switchover":
                new_leader = cluster.switchover(timeout=options.deadline)
                promoted_after = time.monotonic() - fault
            elif drill != "replica_lost":
                new_leader = cluster.wait_for_leader(other_than=leader, timeout=options.deadline)
                promoted_after = time.monotonic() - fault
            else:
                time.sleep(options.down)
                cluster.start_node(victim, timeout=options.deadline)
                new_leader = leader
            resumed = _wait_resumed(traffic, fault, options)
        finally:
            traffic.stop()
        reads_by_server = dict(db.router.snapshot()["reads"])
    outage = traffic.outage(fault)
    baseline = traffic.outage(fault, baseline=True)
    stored = check_stored(url, traffic.acknowledged)
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        port = conn.execute("SELECT inet_server_port()").fetchone()
    writes_on = next((m.name for m in cluster.members() if port and m.port == port[0]), None)
    return {
        "drill": drill,
        "victim": victim,
        "leader_before": leader,
        "leader_after": new_leader,
        "writes_now_reach": writes_on,
        "resumed": resumed,
        "promotion_seconds": round(promoted_after, 3) if promoted_after is not None else None,
        # The longest time without an acknowledged write, and from the fault to the first write after it.
        "write_unavailability_seconds": round(outage[1] - outage[0], 3) if outage else None,
        "fault_to_first_write_seconds": round(outage[1] - fault, 3) if outage else None,
        # The same for plain psycopg through the same URL, reconnecting at once: what the cluster allows.
        "baseline_write_unavailability_seconds": round(baseline[1] - baseline[0], 3) if baseline else None,
        "writes": {"failed": len(traffic.write_failures),
                   "failed_samples": _samples(traffic.write_failures),
                   "acknowledged_after_fault": sum(1 for t, _, _ in traffic.acknowledged if t > fault)},
        "events": stored,
        "reads": {"ok": len(traffic.reads), "failed": len(traffic.read_failures),
                  "failed_samples": _samples(traffic.read_failures),
                  "failed_after_fault": sum(1 for t, _ in traffic.read_failures if t > fault),
                  "by_server": reads_by_server},
    }


def _wait_resumed(traffic: Traffic, fault: float, options: DrillOptions) -> bool:
    """Wait for the first write acknowledged after ``fault``, then ``options.after`` seconds more."""
    deadline = fault + options.deadline
    while time.monotonic() < deadline:
        outage = traffic.outage(fault) if traffic.writers else (fault, fault)
        if outage is not None and time.monotonic() >= max(outage[1], fault) + options.after:
            return True
        time.sleep(0.1)
    return False


def _samples(failures: Sequence[tuple[float, str]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for _, what in failures:
        what = re.sub(r"\d+(\.\d+)?", "N", what)  # "retry in 29.8 s", ports: one kind of error, one line
        counts[what] = counts.get(what, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1])[:ERROR_SAMPLES])


# --------------------------------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    from audit_local.cluster import FAST_FAILOVER, missing_requirements, patroni_cluster

    missing = missing_requirements()
    if missing:
        raise CheckFailed("cannot run a Patroni cluster here: " + "; ".join(missing))
    options = DrillOptions(args.writers, args.readers, args.settle, args.after, args.deadline, args.down)
    load_before = os.getloadavg()
    started = time.monotonic()
    with common.uninterruptible():
        directory = tempfile.mkdtemp(prefix="audit-bench-ha-")
    try:
        log(f"starting a 3-node Patroni cluster in {directory}")
        with patroni_cluster(directory, synchronous=not args.asynchronous) as cluster:
            up_seconds = time.monotonic() - started
            prepare_database(cluster, "audit_failover")
            facts = common.server_facts(cluster.primary_url(), ["synchronous_commit", "synchronous_standby_names",
                                                                  "fsync"], application_name=APPLICATION_NAME)
            drills = {}
            for drill in args.drills:
                log(f"drill {drill}")
                drills[drill] = run_drill(cluster, "audit_failover", drill, options)
                log(f"  {_one_line(drills[drill])}")
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    report = {
        "benchmark": "failover",
        "environment": {
            "date_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "python_version": platform.python_version(),
            "psycopg_version": psycopg.__version__,
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            **facts,
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "cluster_up_seconds": round(up_seconds, 1),
        },
        "parameters": {"synchronous_mode": not args.asynchronous, "patroni": dict(FAST_FAILOVER),
                       "writers": args.writers, "readers": args.readers, "settle": args.settle,
                       "after": args.after, "deadline": args.deadline, "down": args.down},
        "drills": drills,
        "targets": _targets(drills, synchronous=not args.asynchronous),
    }
    return report


def _targets(drills: dict[str, Any], *, synchronous: bool) -> dict[str, Any]:
    targets: dict[str, Any] = {}
    for name, d in drills.items():
        if name in ("leader_crash", "switchover", "leader_lost"):
            value = d["write_unavailability_seconds"]
            limit = WRITE_UNAVAILABILITY_TARGET if name != "leader_lost" else SEED_RECOVERY_TARGET
            targets[f"{name}_write_unavailability_s"] = {"value": value, "target": f"< {limit:g}",
                                                          "met": value is not None and value < limit}
        if synchronous:
            lost = d["events"]["missing"] + d["events"]["duplicated"]
            targets[f"{name}_acknowledged_lost_or_doubled"] = {"value": lost, "target": "0", "met": lost == 0}
        if name in ("replica_lost", "switchover"):
            failed = d["reads"]["failed"]
            targets[f"{name}_failed_reads"] = {"value": failed, "target": "0", "met": failed == 0}
    return targets


def _one_line(d: dict[str, Any]) -> str:
    return (f"victim {d['victim']}, leader {d['leader_before']} -> {d['leader_after']}, promotion "
            f"{d['promotion_seconds']} s, no writes for {d['write_unavailability_seconds']} s, failed writes "
            f"{d['writes']['failed']}, failed reads {d['reads']['failed']}, acked {d['events']['acknowledged']}, "
            f"missing {d['events']['missing']}, doubled {d['events']['duplicated']}")


def format_table(report: dict[str, Any]) -> str:
    env, par = report["environment"], report["parameters"]
    mode = "synchronous_mode" if par["synchronous_mode"] else "asynchronous"
    lines = [
        f"failover benchmark  {env['date_utc']}  PostgreSQL {env['server_version']}  Python {env['python_version']}"
        f"  psycopg {env['psycopg_version']}  cpus {env['cpu_count']}",
        f"3-node Patroni cluster on loopback (etcd), {mode}, ttl {par['patroni']['ttl']} s, loop_wait "
        f"{par['patroni']['loop_wait']} s, retry_timeout {par['patroni']['retry_timeout']} s, primary_start_timeout "
        f"{par['patroni']['primary_start_timeout']}; up in {env['cluster_up_seconds']} s",
        f"{par['writers']} writer + {par['readers']} reader threads through one AuditDatabase (multi-host URL); "
        "baseline: one plain psycopg writer on the same URL, reconnecting at once",
        f"load average (1/5/15 min) before {env['load_average_before']}, after {env['load_average_after']}",
        "",
        f"{'drill':<14}{'victim':>8}{'promoted s':>12}{'no writes s':>13}{'first write s':>15}"
        f"{'plain psycopg s':>17}{'failed writes':>15}{'acked':>8}{'lost':>6}{'doubled':>9}{'reads':>8}"
        f"{'failed reads':>14}",
    ]
    for name, d in report["drills"].items():
        promoted = f"{d['promotion_seconds']:.1f}" if d["promotion_seconds"] is not None else "-"
        gap = d["write_unavailability_seconds"]
        first = d["fault_to_first_write_seconds"]
        plain = _seconds(d["baseline_write_unavailability_seconds"])
        lines.append(f"{name:<14}{d['victim']:>8}{promoted:>12}{_seconds(gap):>13}{_seconds(first):>15}{plain:>17}"
                     f"{d['writes']['failed']:>15}{d['events']['acknowledged']:>8}{d['events']['missing']:>6}"
                     f"{d['events']['duplicated']:>9}{d['reads']['ok']:>8}{d['reads']['failed']:>14}")
    lines.append("")
    for name, d in report["drills"].items():
        if d["writes"]["failed_samples"] or d["reads"]["failed_samples"]:
            lines.append(f"{name}: write errors {d['writes']['failed_samples']}; read errors "
                         f"{d['reads']['failed_samples']}")
    lines.append("")
    for name, t in report["targets"].items():
        lines.append(f"{name:<48}{t['value']!s:>10}  target {t['target']:<6} {'met' if t['met'] else 'MISSED'}")
    return "\n".join(lines)


def _seconds(value: float | None) -> str:
    return f"{value:.1f}" if value is not None else "never"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--drills", nargs="+", choices=DRILLS, default=list(DRILLS), help="which drills (all)")
    parser.add_argument("--writers", type=positive_int, default=8, help="writer threads (8)")
    parser.add_argument("--readers", type=positive_int, default=4, help="reader threads (4)")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds of traffic before the fault (2)")
    parser.add_argument("--after", type=float, default=2.0, help="seconds of traffic once writes resumed (2)")
    parser.add_argument("--deadline", type=float, default=90.0, help="give up on a drill after (90 s)")
    parser.add_argument("--down", type=float, default=5.0, help="seconds a killed replica stays down (5)")
    parser.add_argument("--asynchronous", action="store_true", help="without Patroni's synchronous_mode")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help=f"JSON report ({DEFAULT_OUTPUT})")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    code = common.run_main(args, run, format_table, log, check_failure=CheckFailed)
    if code != 0:
        return code
    report = json.loads(args.output.read_text())
    failed = [name for name, d in report["drills"].items() if not d["resumed"]]
    if not args.asynchronous:
        failed += [name for name, d in report["drills"].items()
                   if d["events"]["missing"] or d["events"]["duplicated"]]
    if failed:
        log(f"CHECK FAILED: writes never resumed or acknowledged events lost/doubled in {', '.join(failed)}")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
