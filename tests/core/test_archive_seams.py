"""The archive at its seams: credentials of the archive root never stored or printed, archive files owner-only,
and archive files removed only once the registry change has committed."""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from audit_db_core import AuditDatabase, AuditSettings, ConfigurationError
from audit_db_core.archive import ArchiveManifest, ArchiveStore, public_uri
from audit_db_core.errors import ArchiveError
from audit_db_core.migrate import migrate
from audit_local.demo import demo_events
from tests.conftest import TestServers as Servers
from tests.conftest import scratch_database
from tests.conftest import archive_dir

UTC = dt.UTC
SECRET = "Zq9-archive-secret-0042"


def test_public_uri_drops_user_info_and_query() -> None:
    assert public_uri(f"s3://AKIAEXAMPLE:{SECRET}@bucket/audit?region=eu-west-1&secret_key={SECRET}") == \
        "s3://bucket/audit"
    assert public_uri(f"abfs://account@store.dfs.core.windows.net/c?sig={SECRET}") == \
        "abfs://store.dfs.core.windows.net/c"
    assert public_uri("file:///var/lib/audit%20archive") == "file:///var/lib/audit%20archive"
    assert public_uri(f"s3://k:{SECRET}@[::1]:9000/b") == "s3://[::1]:9000/b"
    assert SECRET not in public_uri(f"s3://k:{SECRET}@[::1/b")  # does not parse: nothing of it is echoed
    store = ArchiveStore(f"s3://AKIAEXAMPLE:{SECRET}@bucket/audit?secret_key={SECRET}")  # opened lazily: no network
    assert SECRET not in repr(store) + store.display_root + store.manifest_uri("audit_log_p2020_01")
    assert "AKIAEXAMPLE" not in store.manifest_uri("audit_log_p2020_01")
    with pytest.raises(ArchiveError) as bad:
        ArchiveStore(f"relative/{SECRET}?token={SECRET}x")
    assert f"token={SECRET}x" not in str(bad.value)


@pytest.fixture
def credentialed(fresh_database: str, tmp_path: Path) -> Iterator[tuple[AuditDatabase, Path]]:
    """A database whose archive root URI carries a credential in its query (pyarrow's local filesystem ignores
    it, as an object store would use it), January 2020 ready to archive."""
    root = tmp_path / "archive"
    settings = AuditSettings(database_url=fresh_database,
                             archive={"root_uri": f"{root.as_uri()}?secret_key={SECRET}", "batch_rows": 500},
                             retention={"default": "1 year"})
    with AuditDatabase(settings) as db:
        db.partitions.create_partition("2020-01")
        db.insert_many(demo_events(300, now=dt.datetime(2020, 2, 1, tzinfo=UTC), span=dt.timedelta(days=30)))
        yield db, root


def _everything_stored(url: str, root: Path) -> str:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT string_agg(t, E'\\n') FROM (SELECT p::text AS t FROM audit_partitions p"
                            " UNION ALL SELECT g::text FROM audit_lifecycle_ledger g) x").fetchone()
    files = "\n".join(p.read_text(errors="replace") for p in root.rglob("*.json"))
    return (rows[0] or "") + files


def test_credentials_in_the_archive_root_are_never_stored_or_printed(
        credentialed: tuple[AuditDatabase, Path], fresh_database: str, caplog: pytest.LogCaptureFixture) -> None:
    db, root = credentialed
    with caplog.at_level("DEBUG"):
        result = db.partitions.archive("2020-01", run_id="arch-secret")
    assert result.status == "archived" and SECRET not in result.archive_uri
    info = db.partitions.get("2020-01")
    assert info.archive_uri == f"{root.as_uri()}/{db.deployment_id}/audit_log_p2020_01/manifest.json"
    assert SECRET not in _everything_stored(fresh_database, root)
    assert SECRET not in caplog.text
    # The CLI, as an operator runs it.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDIT_")}
    env.update(AUDIT_DATABASE_URL=fresh_database, AUDIT_ARCHIVE__ROOT_URI=f"{root.as_uri()}?secret_key={SECRET}")
    for args in (["partitions", "list", "--json"], ["partitions", "list"], ["partitions", "archive", "2020-01"]):
        out = subprocess.run([sys.executable, "-m", "audit_db_core.cli", *args], capture_output=True, text=True,
                             env=env, timeout=120)
        assert out.returncode == 0, out.stderr
        assert SECRET not in out.stdout + out.stderr
    listed = json.loads(subprocess.run([sys.executable, "-m", "audit_db_core.cli", "partitions", "list", "--json"],
                                       capture_output=True, text=True, env=env, timeout=120).stdout)
    assert any(p["archive_uri"] and p["archive_uri"].startswith(root.as_uri()) for p in listed)


def test_archive_files_are_owner_only(credentialed: tuple[AuditDatabase, Path]) -> None:
    db, root = credentialed
    previous = os.umask(0)  # whatever is not made private on purpose comes out world-readable
    try:
        db.partitions.archive("2020-01")
    finally:
        os.umask(previous)
    directory = archive_dir(root, "audit_log_p2020_01")
    files = [p for p in directory.iterdir() if p.is_file()]
    assert "manifest.json" in {p.name for p in files} and any(p.suffix == ".parquet" for p in files)
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in files} == {p.name: 0o600 for p in files}
    assert stat.S_IMODE(root.stat().st_mode) == 0o700 and stat.S_IMODE(directory.stat().st_mode) == 0o700


def test_archive_files_go_only_after_the_registry_commits(
        credentialed: tuple[AuditDatabase, Path], fresh_database: str) -> None:
    db, root = credentialed
    db.partitions.archive("2020-01")
    assert db.partitions.purge(dry_run=False).purged == ["audit_log_p2020_01"]
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        # Past the archive retention (the purge back-dated), and a commit that fails: a deferred trigger refuses
        # the registry change at COMMIT, after everything else in the transaction has run.
        conn.execute("UPDATE audit_partitions SET purged_at = purged_at - interval '8 years'")
        conn.execute("CREATE FUNCTION refuse_commit() RETURNS trigger LANGUAGE plpgsql AS "
                     "$$ BEGIN RAISE EXCEPTION 'commit refused by the test'; END $$")
        conn.execute("CREATE CONSTRAINT TRIGGER refuse_commit AFTER UPDATE ON audit_partitions DEFERRABLE "
                     "INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.archive_deleted_at IS NOT NULL) "
                     "EXECUTE FUNCTION refuse_commit()")
    with pytest.raises(Exception, match="commit refused"):
        db.partitions.purge(dry_run=False)
    # The registry did not change, so the archive — after the purge the only copy — must still be whole.
    assert db.partitions.get("2020-01").archive_deleted_at is None
    assert (archive_dir(root, "audit_log_p2020_01") / "manifest.json").exists()
    assert [problems for _, problems in db.partitions.verify_archives()] == [[]]
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        conn.execute("DROP TRIGGER refuse_commit ON audit_partitions")
    assert db.partitions.purge(dry_run=False).archives_deleted == ["audit_log_p2020_01"]
    assert not (archive_dir(root, "audit_log_p2020_01")).exists()


def test_a_root_that_is_not_a_uri_is_refused_without_echoing_it(fresh_database: str) -> None:
    with pytest.raises(ConfigurationError) as bad:
        AuditSettings(database_url=fresh_database, archive={"root_uri": f"relative/{SECRET}"})
    assert "AUDIT_ARCHIVE__ROOT_URI" in str(bad.value) and SECRET not in str(bad.value)


@pytest.fixture
def second_database(servers: Servers) -> Iterator[str]:
    """A database migrated from scratch (not cloned): a deployment identity of its own."""
    with scratch_database(servers.database_url, "audit_second") as url:
        migrate(url)
        yield url


def test_two_databases_share_one_archive_root_without_touching_each_other(
        fresh_database: str, second_database: str, tmp_path: Path) -> None:
    root = tmp_path / "shared-archive"
    dbs = []
    for url in (fresh_database, second_database):
        db = AuditDatabase(AuditSettings(database_url=url, archive={"root_uri": root.as_uri()},
                                         retention={"default": "1 year"})).open()
        dbs.append(db)
        db.partitions.create_partition("2020-01")
        db.insert_many(demo_events(200, now=dt.datetime(2020, 2, 1, tzinfo=UTC), span=dt.timedelta(days=30)))
    first, second = dbs
    try:
        assert first.deployment_id != second.deployment_id
        # The same period archived by both: two archives side by side, each naming its deployment.
        for db in dbs:
            assert db.partitions.archive("2020-01").status == "archived"
        dirs = {db.deployment_id: root / str(db.deployment_id) / "audit_log_p2020_01" for db in dbs}
        for identity, directory in dirs.items():
            manifest = json.loads((directory / "manifest.json").read_text())
            assert manifest["deployment_id"] == str(identity) and manifest["format_version"] == 2
        # The first purges and, past the archive retention, deletes its archive: the second's stays whole.
        assert first.partitions.purge(dry_run=False).purged == ["audit_log_p2020_01"]
        with psycopg.connect(fresh_database, autocommit=True) as conn:
            conn.execute("UPDATE audit_partitions SET purged_at = purged_at - interval '8 years'")
        assert first.partitions.purge(dry_run=False).archives_deleted == ["audit_log_p2020_01"]
        assert not dirs[first.deployment_id].exists()
        assert [problems for _, problems in second.partitions.verify_archives()] == [[]]
        # A manifest of another deployment is refused, by name, never taken for one's own.
        shutil.copytree(dirs[second.deployment_id], root / str(first.deployment_id) / "audit_log_p2020_01")
        with pytest.raises(ArchiveError, match=f"belongs to deployment {second.deployment_id}"):
            first.partitions.archive_store().read_manifest("audit_log_p2020_01")
        store = first.partitions.archive_store()
        foreign = ArchiveManifest.from_json((dirs[second.deployment_id] / "manifest.json").read_bytes())
        result = store.verify(foreign)
        assert not result.ok and any("another deployment" in p for p in result.problems)
    finally:
        for db in dbs:
            db.close()


def test_an_archive_left_at_the_old_place_is_reported_with_where_to_move_it(
        credentialed: tuple[AuditDatabase, Path]) -> None:
    db, root = credentialed
    db.partitions.archive("2020-01")
    current = root / str(db.deployment_id) / "audit_log_p2020_01"
    shutil.move(current, root / "audit_log_p2020_01")  # where format 1 archives lay
    with pytest.raises(ArchiveError, match="move it to") as unmoved:
        db.partitions.archive_store().read_manifest("audit_log_p2020_01")
    assert SECRET not in str(unmoved.value)
