"""First-contact benchmark: how long ``audit-platform migrate`` takes to answer a configuration mistake, against the
time the same command takes to refuse a URL it cannot even parse (measured in the same run).

What is measured
----------------
Each case runs ``audit-platform migrate`` as a subprocess ``--runs`` times, interleaved case by case, and takes the
median wall time from start to exit. The baseline, ``unparseable URL``, never connects: its time is the price of
starting the interpreter and reading the settings. ``over baseline`` is what the first contact itself cost.

Cases: an unknown host (``.invalid``), a refused port, a missing database, a bad ``sslmode``, an unknown role and a
role that may not connect, and a missing ``AUDIT_DATABASE_URL``. The issue's target: every answer within 3 s (the
pools used to retry for ``AUDIT_POOL__TIMEOUT_SECONDS``, 10 s, before answering). Correctness checks (exit 2, no
report): every case exits 2 with exactly one line on stderr naming ``AUDIT_DATABASE_URL`` and no password.

Servers: ``AUDIT_BENCH_DATABASE_URL`` or a throw-away local PostgreSQL, as in ``benchmarks/common.py``; the
server's role needs ``CREATEROLE`` and ``CREATEDB`` (a scratch database and role are made and dropped).

Run it from the repository root::

    python benchmarks/first_contact.py
    python benchmarks/first_contact.py --runs 3 --output /tmp/first_contact.json
"""

from __future__ import annotations

import argparse
import os
import platform
import secrets
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: make `benchmarks` importable

from benchmarks import common  # noqa: E402
from benchmarks.common import positive_int, server_url, with_dbname  # noqa: E402

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "first_contact.json"
APPLICATION_NAME = "audit-bench-first-contact"
TARGET_SECONDS = 3.0
SECRET = "bench-" + secrets.token_hex(6)
CLI = [sys.executable, "-m", "audit_db_core.cli", "migrate"]
BASELINE = "unparseable URL"

log = common.stderr_logger("first_contact")


class CheckFailed(Exception):
    """An answer was not one line naming the setting, exit 2, without the password."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def with_user(url: str, user: str) -> str:
    """``url``'s server and database as ``user`` with the benchmark's password."""
    params = conninfo_to_dict(url)
    host, port, dbname = params.get("host", "127.0.0.1"), params.get("port", "5432"), params.get("dbname", "postgres")
    return f"postgresql://{user}:{SECRET}@{host}:{port}/{dbname}"


def cases(server: str, scratch_url: str, locked_role: str) -> dict[str, dict[str, str]]:
    return {
        BASELINE: {"AUDIT_DATABASE_URL": f"postgresql://app:{SECRET}@127.0.0.1:abc/audit"},
        "unknown host": {"AUDIT_DATABASE_URL": f"postgresql://app:{SECRET}@no-such-host.invalid:5432/audit"},
        "refused port": {"AUDIT_DATABASE_URL": f"postgresql://app:{SECRET}@127.0.0.1:{free_port()}/audit"},
        "missing database": {"AUDIT_DATABASE_URL": with_user(with_dbname(server, "no_such_database_here"),
                                                             str(conninfo_to_dict(server).get("user", "postgres")))},
        "bad sslmode": {"AUDIT_DATABASE_URL": with_user(server, str(conninfo_to_dict(server).get("user", "postgres")))
                        + "?sslmode=sometimes"},
        "unknown role": {"AUDIT_DATABASE_URL": with_user(server, "no_such_role_here")},
        "role may not connect": {"AUDIT_DATABASE_URL": with_user(scratch_url, locked_role)},
        "missing URL": {},
    }


def answer(env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("AUDIT_")}
    started = time.perf_counter()
    out = subprocess.run(CLI, env={**base, **env}, capture_output=True, text=True, timeout=120)
    return time.perf_counter() - started, out


def check(name: str, out: subprocess.CompletedProcess[str]) -> str:
    lines = out.stderr.splitlines()
    if out.returncode != 2 or len(lines) != 1 or "AUDIT_DATABASE_URL" not in lines[0] or SECRET in out.stderr:
        raise CheckFailed(f"{name}: exit {out.returncode}, stderr {out.stderr!r}")
    return lines[0]


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    with server_url(log, durable=False) as (server, description), common.scratch_database(
        server, "fc", application_name=APPLICATION_NAME
    ) as scratch:
        role = f"audit_bench_locked_{secrets.token_hex(4)}"
        with common.connect(server, application_name=APPLICATION_NAME) as conn:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(SECRET)))
            conn.execute(sql.SQL("REVOKE CONNECT ON DATABASE {} FROM PUBLIC").format(
                sql.Identifier(str(conninfo_to_dict(scratch)["dbname"]))))
        try:
            plan = cases(server, scratch, role)
            seconds: dict[str, list[float]] = {name: [] for name in plan}
            said: dict[str, str] = {}
            for i in range(args.runs):
                log(f"run {i + 1} of {args.runs}")
                for name, env in plan.items():
                    elapsed, out = answer(env)
                    said[name] = check(name, out)
                    seconds[name].append(elapsed)
        finally:
            with common.uninterruptible(), common.connect(server, application_name=APPLICATION_NAME) as conn:
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
    baseline = statistics.median(seconds[BASELINE])
    results = {}
    for name, times in seconds.items():
        median = statistics.median(times)
        results[name] = {"median_seconds": round(median, 3), "max_seconds": round(max(times), 3),
                         "over_baseline_seconds": round(median - baseline, 3),
                         "met": max(times) <= TARGET_SECONDS, "answer": said[name]}
    return {
        "benchmark": "first_contact",
        "environment": {"server": description, "python": platform.python_version(), "cpus": os.cpu_count(),
                        "loadavg": [round(x, 2) for x in os.getloadavg()]},
        "parameters": {"runs": args.runs, "target_seconds": TARGET_SECONDS},
        "cases": results,
        "elapsed_seconds": round(time.perf_counter() - started, 1),
        "notes": ["Each time is a whole `audit-platform migrate` process, interpreter start included; the baseline "
                  "case never connects. Single machine, other work may run on it: read over_baseline."],
    }


def format_table(report: dict[str, Any]) -> str:
    lines = [f"{'case':<24}{'median s':>10}{'max s':>8}{'over baseline':>15}  target ≤ {TARGET_SECONDS:.0f} s",
             "-" * 70]
    for name, case in report["cases"].items():
        lines.append(f"{name:<24}{case['median_seconds']:>10.2f}{case['max_seconds']:>8.2f}"
                     f"{case['over_baseline_seconds']:>15.2f}  {'met' if case['met'] else 'MISSED'}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=positive_int, default=5, help="runs of each case (5)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help=f"JSON report ({DEFAULT_OUTPUT})")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    return common.run_main(parse_args(argv), run, format_table, log, check_failure=CheckFailed)


if __name__ == "__main__":
    sys.exit(main())
