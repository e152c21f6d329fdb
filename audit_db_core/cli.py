"""``audit-platform``: the command line.

    audit-platform dev [--port N] [--dir PATH] [--host H] [--demo-events N]
                                                        local servers + migrations + demo data + Dagster UI,
                                                        until Ctrl-C ('platform' extra, audit_platform.launcher)
    audit-platform local up|down|status [--dir PATH]    local PostgreSQL primary + replica + Redis
                                                        ('local' extra, audit_local.cli)
    audit-platform migrate                              apply migrations (settings from AUDIT_* variables)
    audit-platform demo [--events N]                    write sample events (audit_local.cli)
    audit-platform health [--json]                      exit 1 when unhealthy
    audit-platform report access|activity|disclosures|summary --since D --until D --output PATH [--format F] …
                                                        HIPAA reports to CSV / JSON / Parquet (exit 2 on bad input)
    audit-platform verify [--from D] [--to D] [--json]   check the signed digest chain against rows and archives
                                                        (exit 1 problems, 2 bad input, 3 incomplete)
    audit-platform integrity seal|head|prove|check-proof|keygen
                                                        signed digests and inclusion proofs
    audit-platform partitions plan|list|create|rescue|archive|purge|optimize|hold|restore [PERIOD…] [--json]
                                                        (purge is a dry run unless --execute)
    audit-platform subject export|erase (--value V | --value - | --subject-id ID) [--field F …] [--output PATH] [--yes]
                                                        GDPR subject access export and erasure (exit 3: no such
                                                        subject, 2 bad input)

``dev``, ``local`` and ``demo`` come from the entry points of group ``audit_platform.commands``: the core never
imports the packages that define them, and a sub-command whose extra is missing says which one to install (exit 2).

``eval "$(audit-platform local up)"`` exports ``AUDIT_DATABASE_URL``, ``AUDIT_REPLICA_URLS`` and
``AUDIT_REDIS_URL`` for the other commands.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from audit_db_core.errors import AuditError, ConfigurationError
from audit_db_core.interfaces import PartitionLifecycle
from audit_db_core.private_files import make_private_dirs, write_private

if TYPE_CHECKING:
    from audit_db_core.config import AuditSettings
    from audit_db_core.database import AuditDatabase

DEFAULT_DIR = ".audit-platform"
logger = logging.getLogger("audit_db_core.cli")


def print_err(message: str) -> None:
    print(f"audit-platform: {message}", file=sys.stderr)



class MissingExtraError(Exception):
    """A sub-command needs an extra that is not installed (``pip install "audit-platform[EXTRA]"``)."""

    def __init__(self, extra: str, command: str, missing: Sequence[str]) -> None:
        self.extra, self.command, self.missing = extra, command, list(missing)
        super().__init__(f"{command} needs the '{extra}' extra ({', '.join(self.missing)} not installed): "
                         f"pip install \"audit-platform[{extra}]\"")


def require_extra(extra: str, command: str, *modules: str) -> None:
    """Raise :class:`MissingExtraError` unless every one of ``modules`` can be imported (nothing is imported).

    Example::

        require_extra("platform", "dev", "dagster", "dagster_webserver")
    """
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingExtraError(extra, command, missing)


#: What a missing or empty AUDIT_DATABASE_URL is told.
DATABASE_URL_HINT = ("is not set: export the primary's URL (postgresql://user@host:5432/dbname, with the password "
                     "after the user as user:password@ where one is needed), or start local servers and set "
                     "everything with: eval \"$(audit-platform local up)\"")


def settings_from_env() -> AuditSettings:
    """``AuditSettings()`` from the ``AUDIT_*`` variables (imported when a command runs, not at start); without
    ``AUDIT_DATABASE_URL`` the error says how to get one."""
    from audit_db_core.config import AuditSettings

    try:
        return AuditSettings()
    except ConfigurationError as exc:
        unset = ("Field required", "must not be empty")
        if not any(p.field == "AUDIT_DATABASE_URL" and p.reason in unset for p in exc.problems):
            raise
        raise ConfigurationError(exc.subject, [
            (p.field, DATABASE_URL_HINT if p.field == "AUDIT_DATABASE_URL" else p.reason) for p in exc.problems
        ]) from None


#: Where the failures of a command's database operations are logged: quiet unless --verbose, since the command
#: prints the error that ends it (one line) and a log line would say it a second time.
FAILURES_LOGGER = "audit_db_core.cli.failures"


def command_database(settings: AuditSettings | None = None) -> AuditDatabase:
    """The :class:`~audit_db_core.database.AuditDatabase` a command works on (settings from the environment unless
    given), with the settings' retry policy and its failures logged to :data:`FAILURES_LOGGER`."""
    from audit_db_core.breakers import ErrorPolicy, RetryPolicy
    from audit_db_core.database import AuditDatabase

    settings = settings_from_env() if settings is None else settings
    r = settings.retry
    policy = ErrorPolicy(RetryPolicy(r.max_attempts, r.base_delay_seconds, r.max_delay_seconds),
                         log=logging.getLogger(FAILURES_LOGGER))
    return AuditDatabase(settings, errors=policy)


def require_archive_root(settings: AuditSettings, command: str) -> None:
    """Refuse ``command`` before it touches the database when ``AUDIT_ARCHIVE__ROOT_URI`` is unset (exit 2)."""
    if not settings.archive.root_uri:
        raise ConfigurationError("settings", [(
            "AUDIT_ARCHIVE__ROOT_URI",
            f"is not set, and {command} needs the archive root: export it (a directory as file:///path, or "
            "s3://bucket/prefix), or set everything for local servers with: eval \"$(audit-platform local up)\"",
        )])


# -- database commands ---------------------------------------------------------------------------------------------


def cmd_migrate(args: argparse.Namespace) -> int:
    with command_database() as db:
        result = db.migrate()
        parts = db.partitions.list_partitions()
    for label in result.applied:
        print(f"applied  {label}")
    print(f"schema version {result.schema_version}; {len(result.applied)} applied now, "
          f"{len(result.already_applied)} already; {len(parts)} partitions")
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    db = command_database()
    try:
        db.open()
    except ConfigurationError:
        raise  # a setting the server refuses (exit 2); a server that does not answer is what health reports
    except AuditError as exc:
        from audit_db_core.health import PRIMARY_DOWN

        report: dict[str, Any] = {"status": "unhealthy", "components": {"primary": {
            "healthy": False, "error": str(exc), "action": PRIMARY_DOWN}}, "recommendations": {"primary": PRIMARY_DOWN}}
    else:
        with db:
            report = db.health().to_dict()
        primary_error = report["components"]["primary"].get("error") or ""
        if primary_error.startswith(NOT_PERMITTED):  # the role cannot read what health reads: a setting, exit 2
            print_err(f"AUDIT_DATABASE_URL: {ROLE_LACKS_PRIVILEGE}: {primary_error.removesuffix(' [health]')}")
            return 2
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print(f"status: {report['status']}")
        for name, comp in report["components"].items():
            mark = "ok  " if comp["healthy"] else "FAIL" if comp.get("critical", True) else "WARN"
            print(f"  {mark} {name} {comp.get('error') or ''}".rstrip())
            if not comp["healthy"] and comp.get("action"):
                print(f"       fix: {comp['action']}")
    return 1 if report["status"] == "unhealthy" else 0  # degraded: the library works around it


# -- partitions ----------------------------------------------------------------------------------------------------


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A plain fixed-width table (the CLI's human-readable output)."""
    cells = [[("" if r.get(c) is None else str(r.get(c))) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]

    def line(values: list[str]) -> str:
        return "  ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)).rstrip()

    return "\n".join([line(columns), line(["-" * w for w in widths])] + [line(r) for r in cells])


def _emit(args: argparse.Namespace, data: Any, rows: list[dict[str, Any]], columns: list[str]) -> None:
    if args.json:
        print(json.dumps(data, indent=2, default=str))
    elif rows:
        print(_table(rows, columns))
    else:
        print("(nothing)")


def _when(text: str | None) -> Any:
    import datetime as dt

    if text is None:
        return None
    value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        raise ConfigurationError("arguments", [("--now", "must be timezone-aware, e.g. 2026-11-29T00:00:00Z")])
    return value


def cmd_partitions(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    settings = settings_from_env()
    if args.action in ("archive", "purge", "restore"):
        require_archive_root(settings, f"partitions {args.action}")
    with command_database(settings) as db:
        pm: PartitionLifecycle = db.partitions
        run_id = args.run_id
        if args.action == "list":
            parts = [p.to_dict() for p in pm.list_partitions(args.state)]
            _emit(args, parts, parts, ["name", "start", "end", "state", "row_count", "bytes", "legal_hold", "archive_uri"])
        elif args.action == "plan":
            plan = pm.plan(_when(args.now))
            actions = [a.to_dict() for a in plan.actions]
            _emit(args, plan.to_dict(), actions, ["kind", "partition", "start", "end", "rows", "reason"])
        elif args.action == "create":
            results = [pm.create_partition(p, run_id=run_id) for p in args.period] if args.period else \
                pm.premake(args.premake, run_id=run_id)
            rows = [{"name": r.name, "created": r.created, "rescued_rows": r.rescued_rows,
                     "duration_ms": r.duration_ms} for r in results]
            _emit(args, rows, rows, ["name", "created", "rescued_rows", "duration_ms"])
        elif args.action == "archive":
            periods = args.period or [a.start for a in pm.plan(_when(args.now)).of("archive")]
            rows = []
            for period in periods:
                rows.append(asdict(_archive_with_progress(pm, period, args, run_id)))
            _emit(args, rows, rows, ["partition", "status", "rows", "files", "archive_bytes", "duration_ms", "archive_uri"])
        elif args.action == "purge":
            dry_run = not args.execute  # destroying data takes an explicit --execute
            report = pm.purge(_when(args.now), dry_run=dry_run, run_id=run_id)
            decisions = [d.to_dict() for d in report.decisions]
            _emit(args, report.to_dict(), decisions, ["partition", "action", "retained_until", "rows", "reason"])
            if not args.json:
                verb = "would purge" if dry_run else "purged"
                print(f"{verb} {len(report.of('purge'))} partitions; "
                      f"{'would delete' if dry_run else 'deleted'} {len(report.of('delete_archive'))} archives"
                      + ("  (dry run: add --execute to purge)" if dry_run else ""))
        elif args.action == "maintain":
            result = pm.run_maintenance(run_id=run_id)
            rows = [{"name": r.name, "created": r.created, "rescued_rows": r.rescued_rows}
                    for r in (*result.window, *result.rescued)]
            _emit(args, result.to_dict(), rows, ["name", "created", "rescued_rows"])
            if not args.json:
                print("nothing to do" if result.nothing_to_do else
                      f"created {len(result.created)} partitions; {result.rescued_rows} rows rescued from DEFAULT")
        elif args.action == "rescue":
            results = pm.rescue_default(run_id=run_id)
            rows = [{"name": r.name, "created": r.created, "rescued_rows": r.rescued_rows} for r in results]
            _emit(args, rows, rows, ["name", "created", "rescued_rows"])
        elif args.action == "optimize":
            report = pm.optimize(run_id=run_id)
            steps = [asdict(s) for s in report.steps]
            _emit(args, report.to_dict(), steps, ["partition", "action", "target", "duration_ms", "detail"])
            if not args.json:
                print(f"bloat check: {report.bloat_check}")
        elif args.action == "hold":
            if not args.period or len(args.period) != 1 or not args.reason:
                raise ConfigurationError("arguments", [("hold", "give exactly one PERIOD and --reason")])
            info = (pm.release if args.release else pm.hold)(args.period[0], args.reason, run_id=run_id)
            _emit(args, info.to_dict(), [info.to_dict()], ["name", "state", "legal_hold", "legal_hold_reason"])
        elif args.action == "restore":
            if not args.period or len(args.period) != 1:
                raise ConfigurationError("arguments", [("restore", "give exactly one PERIOD")])
            result = pm.restore(args.period[0], table=args.table, run_id=run_id)
            _emit(args, asdict(result), [asdict(result)], ["partition", "table", "rows", "status"])
    return 0


def _archive_with_progress(pm: PartitionLifecycle, period: Any, args: argparse.Namespace, run_id: str | None) -> Any:
    """A progress bar on a terminal (tqdm where installed, e.g. with the 'platform' extra; else one line)."""
    show = not args.json and sys.stderr.isatty()
    try:
        from tqdm import tqdm
    except ImportError:
        def line(done: int) -> None:
            print(f"\rarchiving {period}: {done} rows", end="", file=sys.stderr, flush=True)

        try:
            return pm.archive(period, now=_when(args.now), run_id=run_id, progress=line if show else None)
        finally:
            if show:
                print(file=sys.stderr)
    with tqdm(desc=f"archiving {period}", unit=" rows", disable=not show, file=sys.stderr) as bar:
        def progress(done: int) -> None:
            bar.update(done - bar.n)

        return pm.archive(period, now=_when(args.now), run_id=run_id, progress=progress)


# -- reports -------------------------------------------------------------------------------------------------------

#: Report arguments as the library names them -> the option that sets them (errors name the option).
_REPORT_OPTIONS = {
    "organization_id": "--org", "target_resource_id": "--target-id", "target_resource_type": "--target-type",
    "principal_id": "--principal", "since": "--since", "until": "--until", "format": "--format", "path": "--output",
}
#: Options each report takes besides the period and the output; the first ones listed are required.
_REPORT_ARGUMENTS = {
    "access": (("--org", "--target-id"), ("--target-type",)),
    "activity": (("--org", "--principal"), ()),
    "disclosures": (("--org",), ("--target-id",)),
    "summary": ((), ()),
}


def cmd_report(args: argparse.Namespace) -> int:
    """Make one report and write it to ``--output``, recorded in the lifecycle ledger. Bad input: exit 2, naming
    the option and the reason."""
    from audit_db_core.errors import AuditValidationError

    require_extra("reports", "report", "pandas")
    given = {"--org": args.org, "--target-id": args.target_id, "--target-type": args.target_type,
             "--principal": args.principal}
    required, optional = _REPORT_ARGUMENTS[args.kind]
    problems = [(o, f"is required for the {args.kind} report") for o in required if given[o] is None]
    problems += [(o, f"is not an option of the {args.kind} report") for o, v in given.items()
                 if v is not None and o not in required + optional]
    if problems:
        raise ConfigurationError("report arguments", problems)
    try:
        with command_database() as db:
            reports = db.reports
            if args.kind == "access":
                report = reports.access_report(args.org, args.target_id, args.since, args.until,
                                               target_resource_type=args.target_type)
            elif args.kind == "activity":
                report = reports.activity_report(args.org, args.principal, args.since, args.until)
            elif args.kind == "disclosures":
                report = reports.disclosures(args.org, args.since, args.until, target_resource_id=args.target_id)
            else:
                report = reports.compliance_summary(args.since, args.until)
            result = reports.write(report, args.output, args.format, requested_by=args.requested_by,
                                   run_id=args.run_id)
    except ConfigurationError:
        raise
    except AuditValidationError as exc:
        print_err("invalid report arguments: " + "; ".join(
            f"{_REPORT_OPTIONS.get(p.field, p.field)}: {p.reason}" for p in exc.problems))
        return 2
    noun = "row" if result.rows == 1 else "rows"
    print(f"wrote {result.rows} {noun} to {result.path} ({result.format}, {result.bytes} bytes, "
          f"sha256 {result.sha256}); recorded in the lifecycle ledger")
    return 0


# -- integrity -----------------------------------------------------------------------------------------------------


def _instant(text: str | None, option: str) -> Any:
    """A date (midnight UTC) or an ISO 8601 time with a zone, for --from / --to / --until; exit 2 otherwise."""
    import datetime as dt

    if text is None:
        return None
    try:
        if len(text.strip()) == 10:
            d = dt.date.fromisoformat(text.strip())
            return dt.datetime(d.year, d.month, d.day, tzinfo=dt.UTC)
        value = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ConfigurationError("arguments", [(option, "must be a date (2026-11-01) or a time with a zone "
                                                "(2026-11-01T08:00:00Z)")]) from None
    if value.tzinfo is None:
        raise ConfigurationError("arguments", [(option, "must carry a time zone, e.g. 2026-11-01T08:00:00Z")])
    return value


#: verify's exit codes: verified, failed (tampering or damage found), bad input, incomplete (not all checkable).
VERIFY_EXIT = {"verified": 0, "failed": 1, "incomplete": 3}


def cmd_verify(args: argparse.Namespace) -> int:
    """Verify the digest chain and the rows (and archives) of [--from, --to) against it. Exit 0 verified, 1 any
    problem, 2 bad input, 3 incomplete (nothing wrong, but part of the range is not sealed or not readable)."""
    from audit_db_core.errors import AuditValidationError

    since, until = _instant(args.since, "--from"), _instant(args.until, "--to")
    try:
        with command_database() as db:
            report = db.integrity.verify(since, until, rows=not args.chain_only, anchors=args.anchor or (),
                                         run_id=args.run_id)
    except ConfigurationError:
        raise
    except AuditValidationError as exc:
        print_err("invalid arguments: " + "; ".join(f"{p.field}: {p.reason}" for p in exc.problems))
        return 2
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        print(report.summary())
        if report.problems:
            rows = [p.to_dict() for p in report.problems]
            print(_table(rows, ["kind", "window_start", "event_time", "event_id", "chain_seq", "source", "detail"]))
    return VERIFY_EXIT[report.status]


def cmd_integrity(args: argparse.Namespace) -> int:
    from audit_db_core import integrity

    if args.action == "keygen":
        private, public = integrity.generate_key_pair()
        # The private key goes to stdout only: redirect it into a secret store, never into a log.
        print(f"AUDIT_INTEGRITY__SIGNING_KEY={private}")
        print(f"AUDIT_INTEGRITY__PUBLIC_KEYS={public}")
        print(f"# key id {integrity.key_id_of(public)}: keep the signing key secret; give auditors the public key",
              file=sys.stderr)
        return 0
    if args.action == "check-proof":
        return _check_proof(args, integrity)

    from audit_db_core.errors import AuditValidationError

    try:
        with command_database() as db:
            if args.action == "seal":
                result = db.integrity.seal(until=_instant(args.until, "--until"), run_id=args.run_id)
                if args.json:
                    print(json.dumps(result.to_dict(), indent=2, default=str))
                else:
                    rows = [d.to_dict() for d in result.digests]
                    if rows:
                        print(_table(rows, ["chain_seq", "window_start", "seq", "event_count", "digest_hash"]))
                    print(f"{result.status}: {len(rows)} digest(s), {result.events} event(s), "
                          f"{result.supplements} supplement(s)" + (f"; {result.reason}" if result.reason else ""))
                return 0
            if args.action == "head":
                head = db.integrity.head()
                doc = head.to_dict() if head else None
                print(json.dumps(doc, indent=2) if args.json or doc is None else
                      f"#{head.chain_seq} {head.digest_hash.hex()} window {doc['window_start']} "  # type: ignore[union-attr]
                      f"seq {doc['seq']} key {doc['key_id']}")
                return 0
            # prove
            if not args.event or len(args.event) != 2:
                raise ConfigurationError("arguments", [("prove", "give EVENT_TIME and EVENT_ID")])
            proof = db.integrity.prove(_instant(args.event[0], "EVENT_TIME"), args.event[1])
    except ConfigurationError:
        raise
    except AuditValidationError as exc:
        print_err("; ".join(f"{p.field}: {p.reason}" for p in exc.problems))
        return 2
    text = proof.to_json()
    if args.output:
        make_private_dirs(Path(args.output).parent)
        write_private(args.output, (text + "\n").encode())  # names an event of the log: owner-only
        print(f"proof of {args.event[1]} written to {args.output} (digest #{proof.digest.chain_seq})")
    else:
        print(text)
    return 0


def _check_proof(args: argparse.Namespace, integrity: Any) -> int:
    """Check an inclusion proof file with public keys only: no database, no settings but the keys."""
    from audit_db_core.errors import AuditValidationError

    keys = list(args.public_key or [])
    if not keys:
        keys = [k.strip() for k in os.environ.get("AUDIT_INTEGRITY__PUBLIC_KEYS", "").split(",") if k.strip()]
    if not keys:
        raise ConfigurationError("arguments", [("--public-key", "is required (or AUDIT_INTEGRITY__PUBLIC_KEYS)")])
    if not args.event or len(args.event) != 1:
        raise ConfigurationError("arguments", [("check-proof", "give the proof file (or - for stdin)")])
    try:
        data = sys.stdin.read() if args.event[0] == "-" else Path(args.event[0]).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError("arguments", [("PROOF_FILE", f"cannot be read ({exc.strerror})")]) from None
    try:
        check = integrity.verify_proof(data, keys, digest_hash=args.digest_hash)
    except AuditValidationError as exc:
        print_err("; ".join(f"{p.field}: {p.reason}" for p in exc.problems))
        return 2
    if args.json:
        print(json.dumps({"ok": check.ok, "problems": list(check.problems), "key_id": check.key_id,
                          "digest_hash": check.digest_hash}, indent=2))
    else:
        print("proof verified" if check.ok else "proof REJECTED: " + "; ".join(check.problems))
    return 0 if check.ok else 1


def _add_integrity_parsers(sub: Any) -> None:
    verify = sub.add_parser(
        "verify", help="verify the signed digest chain against the rows and archives; exit 1 on any problem",
        description="Check the digest chain (hashes, links, signatures), every row of the sealed windows in "
        "[--from, --to) against its digest, and the archives of those periods. Exit 0 verified, 1 problems found, "
        "2 bad input, 3 incomplete (part of the range is not sealed yet or could not be read).",
    )
    verify.add_argument("--from", dest="since", help="start: a date (midnight UTC) or a time with a zone")
    verify.add_argument("--to", dest="until", help="end (exclusive); default: the end of the last sealed window")
    verify.add_argument("--json", action="store_true", help="the full report as JSON")
    verify.add_argument("--chain-only", action="store_true", help="check digests, signatures and copies, not rows")
    verify.add_argument("--anchor", action="append", metavar="SEQ:HASH",
                        help="a published digest (chain_seq:digest_hash) that must still be in the chain")
    verify.add_argument("--run-id", help="recorded with the ledger entry")
    verify.set_defaults(func=cmd_verify)

    integ = sub.add_parser("integrity", help="signed digests: seal, head, prove, check-proof, keygen")
    integ.add_argument("action", choices=["seal", "head", "prove", "check-proof", "keygen"])
    integ.add_argument("event", nargs="*", help="prove: EVENT_TIME EVENT_ID; check-proof: PROOF_FILE (- for stdin)")
    integ.add_argument("--until", help="seal: only windows that end by then")
    integ.add_argument("--output", help="prove: write the proof to this file")
    integ.add_argument("--public-key", action="append", help="check-proof: a trusted public key (base64); repeatable")
    integ.add_argument("--digest-hash", help="check-proof: the proof's digest must be this (anchored) one")
    integ.add_argument("--json", action="store_true")
    integ.add_argument("--run-id", help="seal: recorded with the ledger entry")
    integ.set_defaults(func=cmd_integrity)


# -- GDPR subject requests ------------------------------------------------------------------------------------------


#: subject's exit codes: done, bad input, no such subject.
SUBJECT_NOT_FOUND_EXIT = 3


def cmd_subject(args: argparse.Namespace) -> int:
    """Export everything the log holds about a data subject (JSON, to --output or stdout), or erase the subject.
    Both are recorded in the lifecycle ledger. The identifier is never printed except inside the export itself."""
    from audit_db_core.errors import AuditValidationError

    value = args.value
    if value == "-":  # from stdin: keeps the identifier out of the shell history and the process list
        value = sys.stdin.readline().rstrip("\r\n")
    if args.action == "erase" and not args.yes:
        if not sys.stdin.isatty():
            raise ConfigurationError("arguments", [("--yes", "is required to erase without a terminal to confirm on "
                                                    "(erasure cannot be undone)")])
        answer = input("Erasure cannot be undone: the subject's events stay, but nothing will link them to the "
                       "person again. Type 'erase' to continue: ")
        if answer.strip() != "erase":
            print_err("nothing erased")
            return 1
    try:
        with command_database() as db:
            request = {"value": value, "subject_id": args.subject_id, "fields": args.field or None,
                       "run_id": args.run_id, "requested_by": args.requested_by}
            if args.action == "export":
                export = db.privacy.export_subject(**request)
            else:
                result = db.privacy.erase_subject(**request)
    except ConfigurationError:
        raise
    except AuditValidationError as exc:
        options = {"value": "--value", "subject_id": "--subject-id", "fields": "--field"}
        print_err("invalid arguments: " + "; ".join(f"{options.get(p.field, p.field)}: {p.reason}"
                                                   for p in exc.problems))
        return 2
    if args.action == "export":
        if args.output:
            path, size, digest = export.write(args.output)
            print(f"wrote {len(export.events)} event(s) of {len(export.subjects)} subject(s) "
                  f"({export.events_from_archives} from archives) to {path} ({size} bytes, sha256 {digest}); "
                  "recorded in the lifecycle ledger")
        else:
            print(export.to_json())
        for problem in export.unreadable:
            print_err(f"incomplete: {problem}")
        return 0 if export.found else SUBJECT_NOT_FOUND_EXIT
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    elif result.found:
        print(f"erased {len(result.subject_ids)} subject(s) ({', '.join(result.subject_ids)}): "
              f"{result.events_unlinked} event(s) no longer linked to the person; recorded in the lifecycle ledger")
    else:
        print(result.reason)
    if result.events_in_clear:
        print_err(f"{result.events_in_clear} event(s) hold the identifier in clear (written before the field was "
                   "pseudonymized): erasure cannot change them")
    return 0 if result.found else SUBJECT_NOT_FOUND_EXIT


def _add_subject_parsers(sub: Any) -> None:
    subject = sub.add_parser(
        "subject", help="GDPR: export everything the log holds about a data subject, or erase the subject",
        description="export: every event naming the subject (hot partitions and archives), the identifier put "
        "back, as JSON. erase: delete the subject's pseudonym mapping (irreversible; the log and its digests stay "
        "valid). Both are recorded in the lifecycle ledger. Exit 0 done, 2 bad input, 3 no such subject.",
    )
    subject.add_argument("action", choices=["export", "erase"])
    who = subject.add_mutually_exclusive_group(required=True)
    who.add_argument("--value", help="the identifier (e.g. a patient id); '-' reads it from stdin")
    who.add_argument("--subject-id", help="the subject id from an earlier export")
    subject.add_argument("--field", action="append",
                         help="principal_id, target_resource_id or details.<key>; repeatable (default: every "
                         "field in AUDIT_PRIVACY__PSEUDONYMIZE)")
    subject.add_argument("--output", help="export: write the JSON here (default: stdout)")
    subject.add_argument("--yes", action="store_true", help="erase: do not ask for confirmation")
    subject.add_argument("--json", action="store_true", help="erase: the result as JSON")
    subject.add_argument("--requested-by", help="recorded in the ledger (default: the OS user)")
    subject.add_argument("--run-id", help="recorded with the ledger entry (e.g. the request's ticket)")
    subject.set_defaults(func=cmd_subject)


# -- entry point ---------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="audit-platform", description="Audit-log platform on PostgreSQL.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_plugin_parsers(sub)

    mig = sub.add_parser("migrate", help="apply migrations and premake partitions (settings from AUDIT_*)")
    mig.set_defaults(func=cmd_migrate)

    parts = sub.add_parser("partitions", help="partition lifecycle: plan, list, create, archive, purge, …")
    parts.add_argument(
        "action",
        choices=["plan", "list", "maintain", "create", "rescue", "archive", "purge", "optimize", "hold", "restore"],
    )
    parts.add_argument("period", nargs="*", help="period key(s): 2026-11, 2026-Q4, 2026, 2026-11-23 or a partition name")
    parts.add_argument("--json", action="store_true", help="JSON output for scripts")
    purge_mode = parts.add_mutually_exclusive_group()
    purge_mode.add_argument("--dry-run", action="store_true", help="purge: only list what would go and why (default)")
    purge_mode.add_argument("--execute", action="store_true", help="purge: really drop partitions and delete archives")
    parts.add_argument("--now", help="plan/archive/purge as of this time (ISO 8601, with zone)")
    parts.add_argument("--state", choices=["active", "archived", "purged"], help="list: only this state")
    parts.add_argument("--premake", type=int, default=None, help="create without PERIOD: this and N next periods")
    parts.add_argument("--reason", help="hold: the legal hold's reason (case, requester)")
    parts.add_argument("--release", action="store_true", help="hold: release the hold instead")
    parts.add_argument("--table", help="restore: target table (default audit_restore_<partition>)")
    parts.add_argument("--run-id", help="recorded with each ledger entry (e.g. an orchestrator's run id)")
    parts.set_defaults(func=cmd_partitions)

    health = sub.add_parser("health", help="health report; exit code 1 when unhealthy")
    health.add_argument("--json", action="store_true")
    health.set_defaults(func=cmd_health)

    report = sub.add_parser(
        "report", help="HIPAA reports (access, activity, disclosures, summary) to CSV / JSON / Parquet",
        description="Write one report for the period [--since, --until) to --output; every export is recorded in "
        "the lifecycle ledger. Dates (2026-01-01) mean midnight UTC; times need a zone (2026-01-01T08:00Z).",
    )
    report.add_argument("kind", choices=list(_REPORT_ARGUMENTS),
                        help="access: one target resource; activity: one principal; disclosures; summary: per "
                        "organization counts")
    report.add_argument("--org", help="organization_id (access, activity, disclosures)")
    report.add_argument("--target-id", help="target_resource_id, e.g. a patient id (access; optional for disclosures)")
    report.add_argument("--target-type", help="target_resource_type, e.g. Patient (access, optional)")
    report.add_argument("--principal", help="principal_id, the user (activity)")
    report.add_argument("--since", required=True, help="start of the period, inclusive (ISO 8601)")
    report.add_argument("--until", required=True, help="end of the period, exclusive (ISO 8601)")
    report.add_argument("--format", choices=["csv", "json", "parquet"], help="default: from the --output suffix")
    report.add_argument("--output", required=True, help="file to write (its directory is created)")
    report.add_argument("--requested-by", help="recorded in the ledger (default: the OS user)")
    report.add_argument("--run-id", help="recorded with the ledger entry (e.g. a ticket or an orchestrator's run id)")
    report.set_defaults(func=cmd_report)
    _add_integrity_parsers(sub)
    _add_subject_parsers(sub)
    return parser


#: Entry-point group through which the other packages of the distribution add sub-commands (``dev`` from the
#: Dagster platform, ``local`` and ``demo`` from the local servers): the core never imports them.
COMMANDS_GROUP = "audit_platform.commands"


def _add_plugin_parsers(sub: Any) -> None:
    first = {"dev": 0, "local": 1, "demo": 2}  # the commands a newcomer runs first
    for entry in sorted(importlib.metadata.entry_points(group=COMMANDS_GROUP), key=lambda e: (first.get(e.name, 9), e.name)):
        entry.load()(sub)


#: SQLSTATE of "permission denied" (insufficient_privilege), and how errors.classify's message for it begins.
_INSUFFICIENT_PRIVILEGE = "42501"
NOT_PERMITTED = "not permitted"
ROLE_LACKS_PRIVILEGE = "the database role it names is not allowed to do this"


def _setting_problem(exc: AuditError) -> str | None:
    """The one line to show when ``exc`` means a setting is wrong (exit 2), else ``None``: an invalid or missing
    setting; a server that the first connection could not reach or that refused it; a database role, named in
    ``AUDIT_DATABASE_URL``, that lacks a privilege the command needs."""
    if isinstance(exc, ConfigurationError) or exc.context.get("setting"):
        return exc.message  # without the operation's "[connect]": the message names the setting
    if exc.context.get("sqlstate") == _INSUFFICIENT_PRIVILEGE:
        return f"AUDIT_DATABASE_URL: {ROLE_LACKS_PRIVILEGE}: {exc.message}"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        logging.getLogger(FAILURES_LOGGER).setLevel(logging.ERROR)
    try:
        return int(args.func(args) or 0)
    except MissingExtraError as exc:
        print_err(str(exc))
        return 2
    except AuditError as exc:
        setting_problem = _setting_problem(exc)
        if setting_problem is not None:
            print_err(setting_problem)
            return 2
        print_err(f"{type(exc).__name__}: {exc}")
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
