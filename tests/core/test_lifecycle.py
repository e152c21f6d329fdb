"""Archival, retention purge, legal holds and restore, end to end through PartitionManager and the CLI."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from audit_db_core import (
    AuditDatabase,
    AuditEvent,
    AuditQuery,
    AuditSettings,
    ComplianceError,
    ConfigurationError,
    PartitionError,
    PartitionManager,
)
from audit_db_core.archive import ArchiveManifest, ArchiveStore
from audit_local.demo import demo_events
from audit_db_core.errors import ArchiveError
from audit_db_core.ledger import entries
from audit_db_core.partitions import PartitionBounds
from tests.conftest import archive_dir

UTC = dt.UTC


@pytest.fixture
def archive_root(tmp_path: Path) -> Path:
    return tmp_path / "archive"


@pytest.fixture
def ldb(settings: AuditSettings, archive_root: Path) -> Iterator[AuditDatabase]:
    """A database with an archive root and a one-year retention, holding Jan–Mar 2020 (long past)."""
    tuned = settings.with_overrides(archive={"root_uri": archive_root.as_uri(), "batch_rows": 500},
                                    retention={"default": "1 year"})
    with AuditDatabase(tuned) as db:
        for month in ("2020-01", "2020-02", "2020-03"):
            db.partitions.create_partition(month)
        db.insert_many(demo_events(3000, now=dt.datetime(2020, 4, 1, tzinfo=UTC), span=dt.timedelta(days=91)))
        yield db


def _count(url: str, table: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute(psycopg.sql.SQL("SELECT count(*) FROM {}").format(psycopg.sql.Identifier(table))).fetchone()[0]  # type: ignore[index]


def test_archive_exports_verifies_and_makes_read_only(ldb: AuditDatabase, fresh_database: str, archive_root: Path) -> None:
    rows = _count(fresh_database, "audit_log_p2020_01")
    result = ldb.partitions.archive("2020-01", run_id="arch-1")
    assert result.status == "archived" and result.rows == rows and result.files >= 1
    manifest = ArchiveManifest.from_json((archive_dir(archive_root, "audit_log_p2020_01") / "manifest.json").read_bytes())
    assert manifest.row_count == rows and manifest.content_digest == result.content_digest
    info = ldb.partitions.get("2020-01")
    assert info.state == "archived" and info.archive_checksum == manifest.content_digest
    assert info.archive_manifest_sha256 == manifest.sha256 and info.retention_classes
    # Rows stay queryable; a late event for the archived month is refused loudly, not dropped silently.
    assert ldb.count(AuditQuery(until=dt.datetime(2020, 2, 1, tzinfo=UTC))) == rows
    late = AuditEvent(action="late.event", status="success", principal_id="u", event_time=dt.datetime(2020, 1, 9, tzinfo=UTC))
    with pytest.raises(ComplianceError, match="archived and read-only") as refused:
        ldb.insert(late)
    assert "late.event" not in str(refused.value)  # the server's DETAIL (row values) stays out of the message
    # Re-running is a no-op.
    again = ldb.partitions.archive("2020-01")
    assert again.status == "already_archived"
    with psycopg.connect(fresh_database) as conn:
        archived = [e for e in entries(conn, partition="audit_log_p2020_01") if e.operation == "archive"]
    assert len(archived) == 1 and archived[0].run_id == "arch-1" and archived[0].checksum == manifest.content_digest


def test_on_archived_runs_inside_the_archive_transaction(ldb: AuditDatabase, fresh_database: str,
                                                          archive_root: Path) -> None:
    """The hook sees the partition already archived in the open transaction; when it fails, the archival is rolled
    back and ledgered as failed; when it succeeds, what it wrote sits next to the archive."""
    seen: list[tuple[str, str | None, str]] = []

    def failing(conn: psycopg.Connection, bounds: PartitionBounds, store: ArchiveStore, *,
                run_id: str | None = None) -> None:
        (state,) = conn.execute("SELECT state FROM audit_partitions WHERE partition_name = %s",
                                (bounds.name,)).fetchone()  # type: ignore[misc]
        seen.append((bounds.name, run_id, state))
        raise ArchiveError("the companion file could not be written", operation="archive")

    with pytest.raises(ArchiveError, match="companion"):
        PartitionManager(ldb.connections, ldb.settings, on_archived=failing).archive("2020-01", run_id="hook-1")
    assert seen == [("audit_log_p2020_01", "hook-1", "archived")]
    assert ldb.partitions.get("2020-01").state == "active"
    with psycopg.connect(fresh_database) as conn:
        outcomes = [(e.operation, e.outcome) for e in entries(conn, partition="audit_log_p2020_01")
                    if e.operation == "archive"]
    assert outcomes == [("archive", "failed")]

    def companion(conn: psycopg.Connection, bounds: PartitionBounds, store: ArchiveStore, *,
                  run_id: str | None = None) -> None:
        store.write_sidecar(bounds.name, "companion.txt", run_id.encode() if run_id else b"")

    pm = PartitionManager(ldb.connections, ldb.settings, on_archived=companion)
    assert pm.archive("2020-01", run_id="hook-2").status == "archived"
    assert (archive_dir(archive_root, "audit_log_p2020_01") / "companion.txt").read_bytes() == b"hook-2"


def test_archive_inside_the_active_window_is_refused(ldb: AuditDatabase) -> None:
    current = ldb.partitions.find_partition(dt.datetime.now(UTC))
    assert current is not None
    with pytest.raises(PartitionError, match="inside the active window"):
        ldb.partitions.archive(current.start)
    assert ldb.partitions.get(current.start).state == "active"


def test_archive_needs_a_writable_root(settings: AuditSettings, tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("not a directory")
    with AuditDatabase(settings) as db:
        db.partitions.create_partition("2020-05")
        with pytest.raises(ConfigurationError, match="AUDIT_ARCHIVE__ROOT_URI"):
            db.partitions.archive("2020-05")
    bad = settings.with_overrides(archive={"root_uri": (tmp_path / "afile" / "sub").as_uri()})
    with AuditDatabase(bad) as db:
        with pytest.raises(ArchiveError, match="not writable"):
            db.partitions.archive("2020-05")
        assert db.partitions.get("2020-05").state == "active"


def test_detach_mode(ldb: AuditDatabase, fresh_database: str) -> None:
    with AuditDatabase(ldb.settings.with_overrides(archive={"mode": "detach"})) as db:
        result = db.partitions.archive("2020-02")
    assert result.detached and ldb.partitions.get("2020-02").detached
    with psycopg.connect(fresh_database) as conn:
        attached = conn.execute(
            "SELECT count(*) FROM pg_inherits WHERE inhrelid = 'audit_log_p2020_02'::regclass").fetchone()
    assert attached == (0,)


def test_purge_respects_retention_holds_and_verification(ldb: AuditDatabase, fresh_database: str, archive_root: Path) -> None:
    pm = ldb.partitions
    jan_rows = _count(fresh_database, "audit_log_p2020_01")
    for month in ("2020-01", "2020-02", "2020-03"):
        pm.archive(month)
    pm.hold("2020-02", "litigation hold #42")
    # Break the March archive: a purge must not drop a partition whose archive no longer verifies.
    data = next((archive_dir(archive_root, "audit_log_p2020_03")).glob("*.parquet"))
    blob = bytearray(data.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    data.write_bytes(bytes(blob))

    dry = pm.purge(dry_run=True)
    by = {d.partition: d for d in dry.decisions}
    assert by["audit_log_p2020_01"].action == "purge"
    assert by["audit_log_p2020_02"].action == "keep" and "legal hold" in by["audit_log_p2020_02"].reason
    assert by["audit_log_p2020_03"].action == "keep" and "does not verify" in by["audit_log_p2020_03"].reason
    current = pm.find_partition(dt.datetime.now(UTC))
    assert current is not None and by[current.name].action == "keep"
    assert _count(fresh_database, "audit_log_p2020_01") == jan_rows  # a dry run changes nothing

    real = pm.purge(dry_run=False, run_id="purge-1")
    assert real.purged == ["audit_log_p2020_01"]
    with psycopg.connect(fresh_database) as conn:
        assert conn.execute("SELECT to_regclass('audit_log_p2020_01')").fetchone() == (None,)
        purges = entries(conn, operation="purge")
    assert [(e.partition_name, e.run_id, e.row_count) for e in purges] == [("audit_log_p2020_01", "purge-1", jan_rows)]
    assert pm.get("2020-01").state == "purged" and pm.get("2020-02").state == "archived"
    with pytest.raises(ComplianceError, match="legal hold"):
        pm.drop_partition("2020-02")

    # The archive outlives the partition; a restore brings the month back for an investigation.
    restored = pm.restore("2020-01")
    assert restored.rows == jan_rows and _count(fresh_database, restored.table) == jan_rows
    assert pm.restore("2020-01").status == "already_restored"

    # A purge that changes data may not look ahead: a future "now" would let retention pass early.
    with pytest.raises(PartitionError, match="in the future"):
        pm.purge(dt.datetime(2040, 1, 1, tzinfo=UTC), dry_run=False)
    assert pm.purge(dt.datetime(2040, 1, 1, tzinfo=UTC), dry_run=True).of("delete_archive")  # a dry run may

    # Past the archive retention (and with the hold released), archives go too. Time passes: the purge is
    # back-dated eight years in the registry, as if it had happened then.
    with psycopg.connect(fresh_database) as conn:
        conn.execute("UPDATE audit_partitions SET purged_at = purged_at - interval '8 years'"
                     " WHERE partition_name = 'audit_log_p2020_01'")
    pm.release("2020-02", "case closed")
    later = pm.purge(dry_run=False)
    assert later.archives_deleted == ["audit_log_p2020_01"] and later.purged == ["audit_log_p2020_02"]
    assert not (archive_dir(archive_root, "audit_log_p2020_01")).exists()
    assert (archive_dir(archive_root, "audit_log_p2020_02") / "manifest.json").exists()  # kept for its own archive retention


def test_purge_needs_the_archive_root_to_verify(ldb: AuditDatabase) -> None:
    ldb.partitions.archive("2020-01")
    with AuditDatabase(ldb.settings.with_overrides(archive={"root_uri": None})) as db:
        with pytest.raises(ConfigurationError, match="AUDIT_ARCHIVE__ROOT_URI"):
            db.partitions.purge(dry_run=False)
        assert db.partitions.get("2020-01").state == "archived"


def test_a_policy_may_shorten_retention(ldb: AuditDatabase) -> None:
    ldb.partitions.archive("2020-01")
    shorter = ldb.settings.with_overrides(retention={"default": "10 years",
                                                     "policies": {"hipaa": "2 years", "standard": "2 years"}})
    with AuditDatabase(shorter) as db:
        decision = {d.partition: d for d in db.partitions.purge(dry_run=True).decisions}["audit_log_p2020_01"]
    assert decision.action == "purge" and decision.retained_until == dt.datetime(2022, 2, 1, tzinfo=UTC)


def test_retention_shorter_than_the_active_window_is_refused(ldb: AuditDatabase) -> None:
    with AuditDatabase(ldb.settings.with_overrides(retention={"policies": {"PHI": "30 days"}})) as db:
        with pytest.raises(ConfigurationError, match="shorter than the active window"):
            db.partitions.purge(dry_run=True)


def test_longest_retention_in_a_partition_wins(ldb: AuditDatabase) -> None:
    pm = ldb.partitions
    pm.archive("2020-01")
    with AuditDatabase(ldb.settings.with_overrides(retention={"policies": {"hipaa": "10 years"}})) as db:
        decision = {d.partition: d for d in db.partitions.purge(dry_run=True).decisions}["audit_log_p2020_01"]
    assert decision.action == "keep" and decision.retained_until == dt.datetime(2030, 2, 1, tzinfo=UTC)


CRASH_SCRIPT = """
import sys, time
from audit_db_core import AuditDatabase, AuditSettings
def progress(rows):
    open(sys.argv[1], "a").write(f"{rows}\\n")
    time.sleep(0.2)
with AuditDatabase(AuditSettings()) as db:
    db.partitions.archive("2020-03", progress=progress)
"""


def test_killed_export_leaves_a_consistent_state_and_a_rerun_completes(
    ldb: AuditDatabase, fresh_database: str, archive_root: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "progress.txt"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDIT_")}
    env.update(AUDIT_DATABASE_URL=fresh_database, AUDIT_ARCHIVE__ROOT_URI=archive_root.as_uri(),
               AUDIT_ARCHIVE__BATCH_ROWS="100")
    proc = subprocess.Popen([sys.executable, "-c", CRASH_SCRIPT, str(marker)], env=env)
    try:
        deadline = time.monotonic() + 60
        while not (marker.exists() and len(marker.read_text().split()) >= 2):
            assert proc.poll() is None, "the archiver ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(30)
    pm = ldb.partitions
    assert pm.get("2020-03").state == "active"  # the registry claims nothing
    assert not (archive_dir(archive_root, "audit_log_p2020_03") / "manifest.json").exists()
    # The partition is writable again once the dead session's lock is gone (the server notices the closed socket).
    deadline = time.monotonic() + 30
    while True:
        try:
            ldb.insert(AuditEvent(action="after.crash", status="success", principal_id="u",
                                  event_time=dt.datetime(2020, 3, 30, tzinfo=UTC)))
            break
        except Exception:
            assert time.monotonic() < deadline
            time.sleep(0.5)
    result = pm.archive("2020-03")
    assert result.status == "archived" and result.rows == _count(fresh_database, "audit_log_p2020_03")
    assert pm.get("2020-03").state == "archived"


def test_cli_partitions(ldb: AuditDatabase, fresh_database: str, archive_root: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDIT_")}
    env.update(AUDIT_DATABASE_URL=fresh_database, AUDIT_ARCHIVE__ROOT_URI=archive_root.as_uri(),
               AUDIT_RETENTION__DEFAULT="1 year")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "audit_db_core.cli", "partitions", *args], env=env,
                              capture_output=True, text=True, timeout=120)

    listed = cli("list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert {"audit_log_p2020_01", "audit_log_p2020_02"} <= {p["name"] for p in json.loads(listed.stdout)}
    plan = cli("plan")
    assert plan.returncode == 0 and "archive" in plan.stdout and "audit_log_p2020_01" in plan.stdout
    archived = cli("archive", "2020-01", "--json")
    assert archived.returncode == 0, archived.stderr
    assert json.loads(archived.stdout)[0]["status"] == "archived"
    dry = cli("purge", "--dry-run")
    assert dry.returncode == 0 and "would purge 1 partitions" in dry.stdout
    default = cli("purge")  # without --execute a purge only reports
    assert default.returncode == 0 and "add --execute" in default.stdout
    assert ldb.partitions.get("2020-01").state == "archived"
    held = cli("hold", "2020-01", "--reason", "audit request 7")
    assert held.returncode == 0 and "audit request 7" in held.stdout
    bad = cli("create", "2020-01-15")
    assert bad.returncode == 1 and "not aligned" in bad.stderr
    missing = cli("hold", "2020-01")
    assert missing.returncode == 2 and "--reason" in missing.stderr
    opt = cli("optimize")
    assert opt.returncode == 0 and "bloat check" in opt.stdout
    rescue = cli("rescue", "--json")
    assert rescue.returncode == 0 and json.loads(rescue.stdout) == []
    executed = cli("purge", "--execute", "--json")
    assert executed.returncode == 0 and json.loads(executed.stdout)["purged"] == []  # 2020-01 is on hold
