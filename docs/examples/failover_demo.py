"""Failover of reads: an ``eventual`` read served by the replica; the replica stops; reads go on, served by the
primary, and none fails; the replica starts again and rejoins the rotation.

It works on the local servers of ``audit-platform local up`` (a PostgreSQL primary with a streaming replica),
because it stops and restarts the replica itself; the URLs come from the environment that command exports::

    eval "$(.venv/bin/audit-platform local up)"       # servers in ./.audit-platform
    .venv/bin/python docs/examples/failover_demo.py   # --dir DIR for servers started with --dir DIR

The replica is running again when the script ends, whatever happened. Exits 0 when every read succeeded and each
was served where it should be, 1 otherwise, 2 when the environment names no replica.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from audit_db_core import AuditDatabase, AuditEvent, AuditQuery, AuditSettings
from audit_local.servers import LocalServers


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path(".audit-platform"),
                        help="the directory of the local servers (default: that of `audit-platform local up`)")
    args = parser.parse_args()

    # The replica is measured every 0.2 s, so leaving and rejoining the rotation shows within a second or two.
    settings = AuditSettings().with_overrides(replicas={"monitor_interval_seconds": 0.2})
    if not settings.replica_urls:
        print("AUDIT_REPLICA_URLS is not set: run `eval \"$(audit-platform local up)\"` first", file=sys.stderr)
        return 2
    servers = LocalServers(args.dir)
    marker = f"failover-{uuid.uuid4().hex[:8]}"
    query = AuditQuery(principal_id=marker)
    checks: dict[str, bool] = {}
    with AuditDatabase(settings) as db:
        db.migrate()
        db.insert(AuditEvent(action="patient.record.read", status="success", principal_id=marker))

        def read() -> str:
            """One eventual read, never from the cache (this demo is about servers): who served it. With
            read_your_writes, a replica serves it only once it has replayed the insert (else the primary does):
            a plain eventual read may go to a replica a few milliseconds behind and find nothing yet."""
            page = db.query(query, consistency="eventual", read_your_writes=True, use_cache=False)
            if len(page) != 1:
                raise AssertionError(f"the read found {len(page)} events, not 1")
            return str(page.extra["source"])

        # Once the replica has replayed the insert, eventual reads go to it.
        checks["an eventual read is served by the replica"] = wait_for(lambda: read() == "replica-0")
        print(f"before: served by {read()}")

        try:
            servers.stop("replica")
            print("replica stopped")
            sources = [read() for _ in range(20)]  # every one must succeed
            print(f"after:  served by {', '.join(dict.fromkeys(sources))}; failovers so far: "
                  f"{db.router.snapshot()['reads'].get('failovers', 0)}")
            checks["reads go on, served by the primary"] = sources[-1] == "primary"
            checks["the replica left the rotation"] = wait_for(
                lambda: not db.router.snapshot()["replicas"]["replica-0"]["in_rotation"])
        finally:
            servers.start("replica")  # as found, whatever happened
            print("replica started")
        checks["the replica rejoins the rotation"] = wait_for(lambda: read() == "replica-0")
        print(f"again:  served by {read()}")

    for name, passed in checks.items():
        print(f"{'ok' if passed else 'FAILED'}: {name}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
