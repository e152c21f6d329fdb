"""Partition archives: export to Parquet + manifest, verification (and tampering), restore, crash recovery."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import psycopg
import pyarrow.parquet as pq
import pytest
from psycopg import sql

from audit_db_core import AuditDatabase
from audit_db_core import archive as archive_module
from audit_db_core.archive import (
    ArchiveManifest,
    ArchiveStore,
    VerificationResult,
    table_digest,
)
from audit_local.demo import demo_events
from audit_db_core.errors import ArchiveError, ErrorCategory, Severity
from audit_db_core.events import STORED_COLUMNS
from audit_db_core.migrate import SCHEMA_VERSION

UTC = dt.UTC
MAY = dt.datetime(2031, 5, 1, tzinfo=UTC)
JUNE = dt.datetime(2031, 6, 1, tzinfo=UTC)
JULY = dt.datetime(2031, 7, 1, tzinfo=UTC)
P_MAY = "audit_log_p2031_05"
P_JUNE = "audit_log_p2031_06"


def fill(db: AuditDatabase, start: dt.datetime, n: int, *, seed: int = 1) -> str:
    """Create the month partition starting at ``start`` and insert ``n`` demo events inside it."""
    info = db.partitions.create_partition(start)
    if n:
        events = demo_events(n, seed=seed, now=start + dt.timedelta(days=28), span=dt.timedelta(days=27))
        assert db.insert_many(events) == n
    found = db.partitions.find_partition(start + dt.timedelta(days=10))
    assert found is not None and found.name == info.name
    return info.name


@contextmanager
def caller_tx(url: str, lock: str | None = None) -> Iterator[psycopg.Connection]:
    """What the partition manager does: REPEATABLE READ, the partition locked against writes; rolled back after."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        if lock:
            conn.execute(sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(sql.Identifier(lock)))
        try:
            yield conn
        finally:
            if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                conn.execute("ROLLBACK")


def archive(store: ArchiveStore, url: str, partition: str, start: dt.datetime, end: dt.datetime,
            **kwargs: object) -> tuple[ArchiveManifest, tuple, VerificationResult]:
    with caller_tx(url, partition) as conn:
        digest = table_digest(conn, partition)
        manifest = store.export(conn, partition, partition=partition, range_start=start, range_end=end,
                                **kwargs)  # type: ignore[arg-type]
        result = store.verify(manifest, expected_rows=digest[0], expected_digest=digest[3])
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS  # never committed here
    return manifest, digest, result


def root_of(tmp_path: Path, name: str = "archive") -> tuple[Path, str]:
    root = tmp_path / name
    return root, root.as_uri()


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- 1. export + verify -----------------------------------------------------------------------------------


def test_export_and_verify_round_trip(db: AuditDatabase, fresh_database: str, tmp_path: Path) -> None:
    partition = fill(db, MAY, 2000)
    assert partition == P_MAY
    root, uri = root_of(tmp_path)
    store = ArchiveStore(uri, rows_per_file=700, batch_rows=300)
    seen: list[int] = []
    manifest, digest, result = archive(store, fresh_database, P_MAY, MAY, JUNE, progress=seen.append)

    count, first, last, content_digest = digest
    assert count == 2000
    assert result == VerificationResult(True, (), 2000, content_digest)
    assert manifest.row_count == 2000 and manifest.content_digest == content_digest
    assert (manifest.min_event_time, manifest.max_event_time) == (first, last)
    assert first is not None and MAY <= first <= last < JUNE
    assert (manifest.range_start, manifest.range_end) == (MAY, JUNE)
    assert manifest.partition == P_MAY and manifest.format_version == 1  # a store given no deployment identity writes format 1
    assert manifest.schema_version == SCHEMA_VERSION and manifest.compression == "zstd"
    assert seen == [300, 600, 900, 1200, 1500, 1800, 2000]

    # 2,000 rows at 700 per file: three files, each with one row group per (part of a) batch.
    assert [(f.path, f.rows) for f in manifest.files] == [
        ("data-00000.parquet", 700), ("data-00001.parquet", 700), ("data-00002.parquet", 600)
    ]
    directory = root / P_MAY
    assert sorted(p.name for p in directory.iterdir()) == [f.path for f in manifest.files] + ["manifest.json"]
    for f in manifest.files:
        path = directory / f.path
        assert f.bytes == path.stat().st_size and f.sha256 == sha256_file(path)
        meta = pq.ParquetFile(path).metadata
        assert meta.num_rows == f.rows and meta.row_group(0).column(0).compression == "ZSTD"
    assert pq.ParquetFile(directory / "data-00000.parquet").metadata.num_row_groups == 3  # 300 + 300 + 100
    assert not list((root / ".staging").iterdir())  # staging cleaned up

    # The manifest on disk is the canonical JSON; reading it back gives the same manifest.
    assert (directory / "manifest.json").read_bytes() == manifest.to_json()
    assert store.read_manifest(P_MAY) == manifest
    assert manifest.sha256 == sha256_file(directory / "manifest.json")
    assert store.manifest_uri(P_MAY) == f"{uri}/{P_MAY}/manifest.json"

    # The Parquet content equals the database rows, column for column (details as jsonb text, raw hash bytes).
    parquet_rows = []
    for f in manifest.files:
        parquet_rows.extend(pq.read_table(directory / f.path).to_pylist())
    with psycopg.connect(fresh_database) as conn:
        cur = conn.cursor(row_factory=psycopg.rows.dict_row)
        db_rows = cur.execute(
            sql.SQL("SELECT {} FROM {} ORDER BY event_time, event_id").format(
                sql.SQL(", ").join(
                    sql.SQL("{}::text AS {}").format(sql.Identifier(c), sql.Identifier(c))
                    if c in ("event_id", "details") else sql.Identifier(c)
                    for c in STORED_COLUMNS
                ),
                sql.Identifier(P_MAY),
            )
        ).fetchall()
    assert len(parquet_rows) == len(db_rows) == 2000
    assert [r["event_id"] for r in parquet_rows] == [r["event_id"] for r in db_rows]
    for i in (0, 1, 699, 700, 1234, 1999):
        assert parquet_rows[i] == db_rows[i], i
        assert isinstance(parquet_rows[i]["content_hash"], bytes) and len(parquet_rows[i]["content_hash"]) == 32
        assert json.loads(parquet_rows[i]["details"]) == json.loads(db_rows[i]["details"])
    assert hashlib.sha256(b"".join(r["content_hash"] for r in parquet_rows)).hexdigest() == content_digest


def test_default_sizes_one_file_and_plain_path_root(db: AuditDatabase, fresh_database: str, tmp_path: Path) -> None:
    fill(db, MAY, 300)
    store = ArchiveStore(str(tmp_path / "plain"))  # a plain absolute path is a file:// root
    assert store.root_uri == (tmp_path / "plain").as_uri()
    manifest, _, result = archive(store, fresh_database, P_MAY, MAY, JUNE)
    assert result.ok, result.problems
    assert [f.rows for f in manifest.files] == [300]
    assert (tmp_path / "plain" / P_MAY / "manifest.json").is_file()


# -- 2. empty partition -------------------------------------------------------------------------------------


def test_empty_partition_archives_and_verifies(db: AuditDatabase, fresh_database: str, tmp_path: Path) -> None:
    fill(db, MAY, 0)
    root, uri = root_of(tmp_path)
    store = ArchiveStore(uri)
    manifest, digest, result = archive(store, fresh_database, P_MAY, MAY, JUNE)
    assert digest == (0, None, None, hashlib.sha256(b"").hexdigest())
    assert result.ok and result.rows == 0 and result.content_digest == hashlib.sha256(b"").hexdigest()
    assert manifest.row_count == 0 and manifest.min_event_time is None and manifest.max_event_time is None
    assert [(f.path, f.rows) for f in manifest.files] == [("data-00000.parquet", 0)]
    empty = pq.read_table(root / P_MAY / "data-00000.parquet")
    assert empty.num_rows == 0 and empty.schema.names == list(STORED_COLUMNS)
    assert ArchiveManifest.from_json(manifest.to_json()) == manifest
    with caller_tx(fresh_database) as conn:
        assert store.restore(conn, manifest, "restored_empty") == 0


# -- 3. tampering ---------------------------------------------------------------------------------------------


def test_verify_reports_each_kind_of_tampering(db: AuditDatabase, fresh_database: str, tmp_path: Path) -> None:
    fill(db, MAY, 2000)
    fill(db, JUNE, 50, seed=2)
    root, uri = root_of(tmp_path, "good")
    manifest, digest, result = archive(ArchiveStore(uri, rows_per_file=700), fresh_database, P_MAY, MAY, JUNE)
    assert result.ok

    def copy(name: str) -> tuple[Path, ArchiveStore]:
        dest = tmp_path / name
        shutil.copytree(root, dest)
        return dest / P_MAY, ArchiveStore(dest.as_uri())

    # A flipped byte in a data file.
    directory, store = copy("flipped")
    data = bytearray((directory / "data-00001.parquet").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (directory / "data-00001.parquet").write_bytes(bytes(data))
    check = store.verify(manifest)
    assert not check.ok
    assert "data-00001.parquet: sha256 differs from the manifest" in check.problems
    assert all(not p.startswith(("data-00000", "data-00002")) for p in check.problems)

    # A deleted data file.
    directory, store = copy("deleted")
    (directory / "data-00002.parquet").unlink()
    check = store.verify(manifest)
    assert not check.ok and check.content_digest is None
    assert "data-00002.parquet: missing (listed in the manifest)" in check.problems

    # An extra, unlisted parquet file.
    directory, store = copy("extra")
    shutil.copy(directory / "data-00000.parquet", directory / "data-00003.parquet")
    check = store.verify(manifest)
    assert check.problems == ("data-00003.parquet: unexpected file (not listed in the manifest)",)

    # The manifest's content_digest edited (and written back as the manifest).
    directory, store = copy("edited")
    edited = json.loads((directory / "manifest.json").read_bytes())
    edited["content_digest"] = hashlib.sha256(b"forged").hexdigest()
    (directory / "manifest.json").write_text(json.dumps(edited))
    forged = store.read_manifest(P_MAY)
    assert forged is not None and forged.sha256 != manifest.sha256
    check = store.verify(forged)
    assert not check.ok and check.content_digest == digest[3]
    assert any(p.startswith("manifest: content_digest") for p in check.problems)
    assert any(p.startswith("database:") for p in store.verify(forged, expected_digest=digest[3]).problems)

    # The database side differs: the digest (and row count) of another partition.
    with caller_tx(fresh_database) as conn:
        other = table_digest(conn, P_JUNE)
    check = ArchiveStore(uri).verify(manifest, expected_rows=other[0], expected_digest=other[3])
    assert check.problems == (
        "database: 50 rows, the archive's row_count is 2000",
        "database: content digest differs from the archive's content_digest",
    )
    assert ArchiveStore(uri).verify(manifest).ok  # the original is untouched


def test_verify_catches_a_row_count_edit_and_a_wrong_file_size(db: AuditDatabase, fresh_database: str,
                                                               tmp_path: Path) -> None:
    fill(db, MAY, 100)
    _, uri = root_of(tmp_path)
    store = ArchiveStore(uri)
    manifest, _, _ = archive(store, fresh_database, P_MAY, MAY, JUNE)
    f = manifest.files[0]
    bad = replace(manifest, row_count=101, files=(replace(f, rows=101, bytes=f.bytes + 1),))
    problems = store.verify(bad).problems
    assert f"data-00000.parquet: size {f.bytes} bytes differs from the manifest ({f.bytes + 1})" in problems
    assert "data-00000.parquet: holds 100 rows, the manifest says 101" in problems
    assert "manifest: row_count 101 differs from the rows in the data files (100)" in problems


# -- 4. restore -------------------------------------------------------------------------------------------------


def test_restore_into_a_new_table(db: AuditDatabase, fresh_database: str, tmp_path: Path) -> None:
    fill(db, MAY, 2000)
    root, uri = root_of(tmp_path)
    store = ArchiveStore(uri, rows_per_file=700, batch_rows=400)
    manifest, digest, _ = archive(store, fresh_database, P_MAY, MAY, JUNE)

    with caller_tx(fresh_database) as conn:
        assert store.restore(conn, manifest, "restored_p2031_05") == 2000
        assert table_digest(conn, "restored_p2031_05") == digest
        (kind,) = conn.execute(
            "SELECT relkind FROM pg_class WHERE relname = 'restored_p2031_05'"
        ).fetchone()  # type: ignore[misc]
        assert kind == "r"  # a plain table, not a partition of audit_log
        same = conn.execute(
            "SELECT count(*) FROM restored_p2031_05 r JOIN audit_log_p2031_05 p USING (event_time, event_id)"
            " WHERE r IS NOT DISTINCT FROM p"
        ).fetchone()
        assert same == (2000,)  # every column of every row, ingested_at and details included
        with pytest.raises(ArchiveError, match="already exists"):
            store.restore(conn, manifest, "restored_p2031_05")
        conn.execute("COMMIT")

    # A tampered archive is refused before anything is created; the caller rolls back.
    path = root / P_MAY / "data-00000.parquet"
    data = bytearray(path.read_bytes())
    data[100] ^= 0x01
    path.write_bytes(bytes(data))
    with caller_tx(fresh_database) as conn:
        with pytest.raises(ArchiveError, match="data-00000.parquet: sha256 differs") as info:
            store.restore(conn, manifest, "restored_bad")
        assert info.value.category is ErrorCategory.ARCHIVE and info.value.severity is Severity.HIGH
        conn.execute("ROLLBACK")
    with psycopg.connect(fresh_database) as conn:
        assert conn.execute("SELECT to_regclass('restored_bad')").fetchone() == (None,)
        assert conn.execute("SELECT count(*) FROM restored_p2031_05").fetchone() == (2000,)


def test_export_and_restore_need_the_callers_transaction(db: AuditDatabase, fresh_database: str,
                                                         tmp_path: Path) -> None:
    fill(db, MAY, 10)
    store = ArchiveStore(root_of(tmp_path)[1])
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        with pytest.raises(ArchiveError, match="needs a transaction"):
            store.export(conn, P_MAY, partition=P_MAY, range_start=MAY, range_end=JUNE)
    assert store.read_manifest(P_MAY) is None


def test_table_digest_streams_above_the_sql_limit(db: AuditDatabase, fresh_database: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    fill(db, MAY, 500)
    with caller_tx(fresh_database) as conn:
        in_sql = table_digest(conn, P_MAY)
        monkeypatch.setattr(archive_module, "_SQL_DIGEST_MAX_ROWS", 10)
        assert table_digest(conn, P_MAY) == in_sql


# -- 5. unwritable root ---------------------------------------------------------------------------------------


def test_check_writable(tmp_path: Path) -> None:
    ok_root = tmp_path / "new" / "root"
    ArchiveStore(ok_root.as_uri()).check_writable()
    assert ok_root.is_dir() and not list(ok_root.iterdir())  # created, probe removed

    (tmp_path / "afile").write_text("not a directory")
    bad = (tmp_path / "afile" / "sub").as_uri()
    with pytest.raises(ArchiveError, match=f"archive root {bad} is not writable: ") as info:
        ArchiveStore(bad).check_writable()
    assert info.value.category is ErrorCategory.ARCHIVE

    with pytest.raises(ArchiveError, match="absolute path"):
        ArchiveStore("relative/dir")


# -- 6. crash midway ------------------------------------------------------------------------------------------


def test_crash_midway_leaves_no_archive_and_a_rerun_succeeds(db: AuditDatabase, fresh_database: str,
                                                             tmp_path: Path) -> None:
    fill(db, MAY, 1000)
    root, uri = root_of(tmp_path)
    store = ArchiveStore(uri, rows_per_file=300, batch_rows=200)

    def crash(rows: int) -> None:
        raise RuntimeError(f"killed after {rows} rows")

    with caller_tx(fresh_database, P_MAY) as conn:
        with pytest.raises(RuntimeError, match="killed after 200 rows"):
            store.export(conn, P_MAY, partition=P_MAY, range_start=MAY, range_end=JUNE, progress=crash)
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS  # still usable
    assert store.read_manifest(P_MAY) is None

    # A hard crash leaves staging files and possibly a half-published directory: fake both.
    stale = root / ".staging" / f"{P_MAY}-{'ab' * 16}"
    stale.mkdir(parents=True)
    (stale / "data-00000.parquet").write_bytes(b"partial")
    other = root / ".staging" / f"{P_JUNE}-{'cd' * 16}"
    other.mkdir()
    (root / P_MAY).mkdir()
    (root / P_MAY / "data-00007.parquet").write_bytes(b"half published")
    assert store.read_manifest(P_MAY) is None  # a directory without a manifest is no archive

    manifest, digest, result = archive(store, fresh_database, P_MAY, MAY, JUNE)
    assert result.ok, result.problems
    assert manifest.row_count == 1000 and len(manifest.files) == 4
    assert not stale.exists() and other.exists()  # only this partition's stale staging is removed
    assert not (root / P_MAY / "data-00007.parquet").exists()
    assert store.read_manifest(P_MAY) == manifest


# -- 7. an existing archive is never overwritten ----------------------------------------------------------------


def test_export_refuses_an_existing_archive_until_deleted(db: AuditDatabase, fresh_database: str,
                                                          tmp_path: Path) -> None:
    fill(db, MAY, 100)
    root, uri = root_of(tmp_path)
    store = ArchiveStore(uri)
    first, _, _ = archive(store, fresh_database, P_MAY, MAY, JUNE)
    with caller_tx(fresh_database, P_MAY) as conn:
        with pytest.raises(ArchiveError, match="already archived; delete it first"):
            store.export(conn, P_MAY, partition=P_MAY, range_start=MAY, range_end=JUNE)
    assert store.read_manifest(P_MAY) == first  # untouched
    assert sorted(p.name for p in (root / P_MAY).iterdir()) == ["data-00000.parquet", "manifest.json"]

    assert store.delete(P_MAY) is True
    assert store.read_manifest(P_MAY) is None and not (root / P_MAY).exists()
    assert store.delete(P_MAY) is False
    second, _, result = archive(store, fresh_database, P_MAY, MAY, JUNE)
    assert result.ok and second.content_digest == first.content_digest


# -- manifest parsing -----------------------------------------------------------------------------------------


def test_manifest_json_is_canonical_and_malformed_input_names_the_field() -> None:
    manifest = ArchiveManifest(
        format_version=1, partition=P_MAY, range_start=MAY, range_end=JUNE, row_count=2,
        min_event_time=MAY + dt.timedelta(hours=1), max_event_time=MAY + dt.timedelta(hours=2),
        content_digest="ab" * 32, files=(archive_module.ArchiveFile("data-00000.parquet", 2, 10, "cd" * 32),),
        schema_version=5, created_at=dt.datetime(2031, 6, 2, 3, 4, 5, 6, tzinfo=UTC), compression="zstd",
    )
    data = manifest.to_json()
    assert ArchiveManifest.from_json(data) == manifest
    assert manifest.sha256 == hashlib.sha256(data).hexdigest()
    parsed = json.loads(data)
    assert list(parsed) == sorted(parsed) and parsed["range_start"] == "2031-05-01T00:00:00.000000Z"

    def broken(**changes: object) -> bytes:
        obj = {**parsed, **changes}
        return json.dumps({k: v for k, v in obj.items() if v != "DROP"}).encode()

    cases = {
        "row_count": broken(row_count=-1),
        "content_digest": broken(content_digest="xyz"),
        "range_start": broken(range_start="yesterday"),
        "files[0].path": broken(files=[{"path": "../../etc/passwd", "rows": 2, "bytes": 10, "sha256": "cd" * 32}]),
        "files": broken(files=[]),
        "partition": broken(partition="DROP"),
        "format_version": broken(format_version=99),
    }
    for field, payload in cases.items():
        with pytest.raises(ArchiveError, match=rf"malformed archive manifest: {re.escape(field)}:"):
            ArchiveManifest.from_json(payload)
    with pytest.raises(ArchiveError, match="not valid JSON"):
        ArchiveManifest.from_json(b"{nope")
