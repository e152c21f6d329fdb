"""Partition archives: export a partition to zstd-compressed Parquet with a manifest, verify it, restore it.

Layout under the archive root (``file:///…``, or anything :func:`pyarrow.fs.FileSystem.from_uri` accepts)::

    <root>/<partition>/data-00000.parquet     one row group per export batch, a new file every rows_per_file rows
    <root>/<partition>/manifest.json          written last: the commit marker (archive exists ⇔ manifest exists)
    <root>/.staging/<partition>-<uuid hex>/   files being written by an export in progress (or a crashed one)

The manifest records the row count, the event-time range, the SHA-256 of every data file and a *content digest*:
SHA-256 over the concatenated 32-byte ``content_hash`` values in ``(event_time, event_id)`` order, the same
value :func:`table_digest` computes in SQL, so the archive can be checked against the database and vice versa.

The caller owns the database transaction: this module never commits nor rolls back the connection it is given.

Example::

    store = ArchiveStore("file:///var/lib/audit/archive")
    store.check_writable()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        conn.execute("LOCK TABLE audit_log_p2026_07 IN SHARE ROW EXCLUSIVE MODE")
        rows, first, last, digest = table_digest(conn, "audit_log_p2026_07")
        manifest = store.export(conn, "audit_log_p2026_07", partition="audit_log_p2026_07",
                                range_start=datetime(2026, 7, 1, tzinfo=UTC),
                                range_end=datetime(2026, 8, 1, tzinfo=UTC))
        check = store.verify(manifest, expected_rows=rows, expected_digest=digest)
        conn.execute("COMMIT" if check.ok else "ROLLBACK")
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import posixpath
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from psycopg import pq as libpq
from psycopg import sql
from psycopg.rows import tuple_row

from audit_db_core.errors import ArchiveError, classify, redact
from audit_db_core.events import STORED_COLUMNS, format_time
from audit_db_core.migrate import SCHEMA_VERSION

logger = logging.getLogger("audit_db_core.archive")

ARCHIVE_FORMAT_VERSION = 1
COMPRESSION = "zstd"
MANIFEST_NAME = "manifest.json"
STAGING_DIR = ".staging"

#: ``string_agg`` builds one bytea value, which PostgreSQL caps at 1 GB (~33.5 million 32-byte hashes): above this
#: many rows :func:`table_digest` streams the hashes and digests them client-side instead (same result).
_SQL_DIGEST_MAX_ROWS = 30_000_000
_HASH_CHUNK = 1 << 20

_PARTITION_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_\-]{0,199}$")
_DATA_FILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,199}\.parquet$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")

_NOT_NULL = {
    "event_id", "event_time", "action", "status", "principal_id", "data_classification", "retention_policy",
    "event_version", "details", "content_hash", "ingested_at",
}
_TYPES: dict[str, pa.DataType] = {
    "event_id": pa.string(),
    "event_time": pa.timestamp("us", tz="UTC"),
    "processing_latency_ms": pa.int32(),
    "details": pa.string(),
    "content_hash": pa.binary(32),
    "ingested_at": pa.timestamp("us", tz="UTC"),
}
#: The Parquet schema of a data file: the stored columns in table order, ``details`` as jsonb text.
ARCHIVE_SCHEMA: pa.Schema = pa.schema(
    [pa.field(name, _TYPES.get(name, pa.string()), nullable=name not in _NOT_NULL) for name in STORED_COLUMNS],
    metadata={"audit_db_core.archive_format_version": str(ARCHIVE_FORMAT_VERSION)},
)
_HASH_INDEX = STORED_COLUMNS.index("content_hash")
_TIME_INDEX = STORED_COLUMNS.index("event_time")

_FS_ERRORS = (OSError, pa.ArrowException)


# -- manifest -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArchiveFile:
    """One data file of an archive."""

    path: str  # relative to the partition's archive directory, e.g. "data-00000.parquet"
    rows: int
    bytes: int
    sha256: str  # hex SHA-256 of the file's bytes


@dataclass(frozen=True)
class ArchiveManifest:
    """What an archive holds; written last, so its presence means the archive is complete."""

    format_version: int
    partition: str
    range_start: dt.datetime
    range_end: dt.datetime
    row_count: int
    min_event_time: dt.datetime | None
    max_event_time: dt.datetime | None
    content_digest: str
    files: tuple[ArchiveFile, ...]
    schema_version: int
    created_at: dt.datetime
    compression: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values: UTC times as ``YYYY-MM-DDTHH:MM:SS.ffffffZ``."""
        return {
            "format_version": self.format_version,
            "partition": self.partition,
            "range_start": format_time(self.range_start),
            "range_end": format_time(self.range_end),
            "row_count": self.row_count,
            "min_event_time": _time_or_none(self.min_event_time),
            "max_event_time": _time_or_none(self.max_event_time),
            "content_digest": self.content_digest,
            "files": [{"path": f.path, "rows": f.rows, "bytes": f.bytes, "sha256": f.sha256} for f in self.files],
            "schema_version": self.schema_version,
            "created_at": format_time(self.created_at),
            "compression": self.compression,
        }

    def to_json(self) -> bytes:
        """The canonical form: compact UTF-8 JSON with sorted keys (what :attr:`sha256` is computed over)."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> ArchiveManifest:
        """Parse a manifest; malformed input raises :class:`ArchiveError` naming the field."""
        try:
            obj = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _malformed("manifest", f"is not valid JSON ({exc})") from None
        if not isinstance(obj, dict):
            raise _malformed("manifest", f"must be a JSON object, not {type(obj).__name__}")
        known = {
            "format_version", "partition", "range_start", "range_end", "row_count", "min_event_time",
            "max_event_time", "content_digest", "files", "schema_version", "created_at", "compression",
        }
        missing, unknown = sorted(known - obj.keys()), sorted(obj.keys() - known)
        if missing:
            raise _malformed(missing[0], "is missing")
        if unknown:
            raise _malformed(unknown[0], "is not a manifest field")
        version = _int_field(obj, "format_version", minimum=1)
        if version > ARCHIVE_FORMAT_VERSION:
            raise _malformed(
                "format_version", f"{version} is newer than this library reads ({ARCHIVE_FORMAT_VERSION})"
            )
        partition = _str_field(obj, "partition")
        if not _PARTITION_NAME.match(partition):
            raise _malformed("partition", "is not a valid partition name")
        digest = _str_field(obj, "content_digest")
        if not _HEX64.match(digest):
            raise _malformed("content_digest", "must be 64 lowercase hex digits")
        raw_files = obj["files"]
        if not isinstance(raw_files, list) or not raw_files:
            raise _malformed("files", "must be a non-empty list")
        files = []
        for i, item in enumerate(raw_files):
            where = f"files[{i}]"
            if not isinstance(item, dict):
                raise _malformed(where, "must be an object")
            if set(item) != {"path", "rows", "bytes", "sha256"}:
                raise _malformed(where, "must have exactly the fields path, rows, bytes, sha256")
            path = _str_field(item, "path", where)
            if not _DATA_FILE_NAME.match(path):
                raise _malformed(f"{where}.path", "must be a plain *.parquet file name")
            sha = _str_field(item, "sha256", where)
            if not _HEX64.match(sha):
                raise _malformed(f"{where}.sha256", "must be 64 lowercase hex digits")
            files.append(
                ArchiveFile(path, _int_field(item, "rows", where, minimum=0),
                            _int_field(item, "bytes", where, minimum=0), sha)
            )
        min_time = _time_field(obj, "min_event_time", nullable=True)
        max_time = _time_field(obj, "max_event_time", nullable=True)
        if (min_time is None) != (max_time is None):
            raise _malformed("min_event_time", "and max_event_time must both be set or both be null")
        return cls(
            format_version=version,
            partition=partition,
            range_start=_time_field(obj, "range_start"),  # type: ignore[arg-type]
            range_end=_time_field(obj, "range_end"),  # type: ignore[arg-type]
            row_count=_int_field(obj, "row_count", minimum=0),
            min_event_time=min_time,
            max_event_time=max_time,
            content_digest=digest,
            files=tuple(files),
            schema_version=_int_field(obj, "schema_version", minimum=0),
            created_at=_time_field(obj, "created_at"),  # type: ignore[arg-type]
            compression=_str_field(obj, "compression"),
        )

    @property
    def sha256(self) -> str:
        """Hex SHA-256 of :meth:`to_json` (record it in the database to detect a rewritten manifest)."""
        return hashlib.sha256(self.to_json()).hexdigest()


@dataclass(frozen=True)
class VerificationResult:
    """The outcome of :meth:`ArchiveStore.verify`: ``ok`` when ``problems`` is empty."""

    ok: bool
    problems: tuple[str, ...]  # human-readable, each naming the file or field
    rows: int  # rows read from the data files
    content_digest: str | None  # recomputed from the data files; None when a file could not be read whole


def _malformed(field: str, reason: str) -> ArchiveError:
    return ArchiveError(f"malformed archive manifest: {field}: {reason}", operation="read_manifest", field=field)


def _int_field(obj: dict[str, Any], key: str, where: str = "", *, minimum: int) -> int:
    value = obj[key]
    name = f"{where}.{key}" if where else key
    if isinstance(value, bool) or not isinstance(value, int):
        raise _malformed(name, "must be an integer")
    if value < minimum:
        raise _malformed(name, f"must be >= {minimum}")
    return value


def _str_field(obj: dict[str, Any], key: str, where: str = "") -> str:
    value = obj[key]
    if not isinstance(value, str) or not value:
        raise _malformed(f"{where}.{key}" if where else key, "must be a non-empty string")
    return value


def _time_field(obj: dict[str, Any], key: str, *, nullable: bool = False) -> dt.datetime | None:
    value = obj[key]
    if value is None and nullable:
        return None
    if not isinstance(value, str):
        raise _malformed(key, "must be a UTC timestamp string" + (" or null" if nullable else ""))
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise _malformed(key, "is not an ISO 8601 timestamp") from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise _malformed(key, "must carry a time zone (UTC)")
    return parsed.astimezone(dt.UTC)


def _time_or_none(value: dt.datetime | None) -> str | None:
    return None if value is None else format_time(value)


def _aware_utc(value: dt.datetime, name: str) -> dt.datetime:
    if not isinstance(value, dt.datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise ArchiveError(f"{name} must be a timezone-aware datetime", operation="archive_export")
    return value.astimezone(dt.UTC)


# -- database side --------------------------------------------------------------------------------------------------


def table_digest(
    conn: psycopg.Connection[Any], table: str
) -> tuple[int, dt.datetime | None, dt.datetime | None, str]:
    """``(count, min(event_time), max(event_time), content digest)`` of ``table``, in the caller's transaction.

    The digest is hex SHA-256 over the rows' ``content_hash`` values concatenated in ``(event_time, event_id)``
    order, computed by PostgreSQL as
    ``sha256(coalesce(string_agg(content_hash, ''::bytea ORDER BY event_time, event_id), ''::bytea))``.
    A bytea cannot exceed 1 GB, so for tables above ~30 million rows the ordered hashes are streamed through a
    server-side cursor and digested here instead (the same value, in bounded memory).
    """
    ident = sql.Identifier(table)
    cur = conn.cursor(row_factory=tuple_row)
    try:
        row = cur.execute(
            sql.SQL("SELECT count(*), min({t}), max({t}) FROM {}").format(ident, t=sql.Identifier("event_time"))
        ).fetchone()
        assert row is not None
        count, first, last = int(row[0]), row[1], row[2]
        if count <= _SQL_DIGEST_MAX_ROWS:
            drow = cur.execute(
                sql.SQL(
                    "SELECT sha256(coalesce(string_agg({h}, ''::bytea ORDER BY {t}, {i}), ''::bytea)) FROM {}"
                ).format(ident, h=sql.Identifier("content_hash"), t=sql.Identifier("event_time"),
                         i=sql.Identifier("event_id"))
            ).fetchone()
            assert drow is not None
            digest = bytes(drow[0]).hex()
        else:
            digest = _streamed_digest(conn, ident)
    except psycopg.Error as exc:
        err = classify(exc, operation="table_digest", table=table)
        raise ArchiveError(f"cannot compute the digest of {table}: {err.message}", operation="table_digest",
                           table=table, **{k: v for k, v in err.context.items() if k == "sqlstate"}) from exc
    finally:
        cur.close()
    return (
        count,
        first.astimezone(dt.UTC) if first is not None else None,
        last.astimezone(dt.UTC) if last is not None else None,
        digest,
    )


def _streamed_digest(conn: psycopg.Connection[Any], ident: sql.Identifier, batch_rows: int = 100_000) -> str:
    hasher = hashlib.sha256()
    with conn.cursor(name=f"audit_digest_{uuid.uuid4().hex}", row_factory=tuple_row) as cur:
        cur.itersize = batch_rows
        cur.execute(
            sql.SQL("SELECT {h} FROM {} ORDER BY {t}, {i}").format(
                ident, h=sql.Identifier("content_hash"), t=sql.Identifier("event_time"), i=sql.Identifier("event_id")
            )
        )
        while rows := cur.fetchmany(batch_rows):
            for (h,) in rows:
                hasher.update(h)
    return hasher.hexdigest()


def _require_transaction(conn: psycopg.Connection[Any], operation: str) -> None:
    status = conn.info.transaction_status
    if status == libpq.TransactionStatus.INERROR:
        raise ArchiveError(f"{operation}: the caller's transaction is aborted; roll it back first",
                           operation=operation)
    if status == libpq.TransactionStatus.ACTIVE:
        raise ArchiveError(f"{operation}: the connection is busy with another command", operation=operation)
    if status == libpq.TransactionStatus.IDLE and conn.autocommit:
        raise ArchiveError(
            f"{operation} needs a transaction opened by the caller (the connection is in autocommit mode and no "
            "transaction is open)",
            operation=operation,
        )


# -- the store ------------------------------------------------------------------------------------------------------


@dataclass
class _OpenFile:
    name: str
    stream: Any
    writer: pq.ParquetWriter
    rows: int = 0


class ArchiveStore:
    """Archives of partitions under one root URI; see the module documentation for the layout."""

    def __init__(self, root_uri: str, *, rows_per_file: int = 1_000_000, batch_rows: int = 50_000) -> None:
        if rows_per_file < 1:
            raise ArchiveError("rows_per_file must be >= 1", operation="archive_store")
        if batch_rows < 1:
            raise ArchiveError("batch_rows must be >= 1", operation="archive_store")
        self._rows_per_file = rows_per_file
        self._batch_rows = batch_rows
        self._fs: pafs.FileSystem | None = None
        self._base = ""
        if root_uri.startswith("/"):
            path = posixpath.normpath(root_uri)
            self._fs, self._base = pafs.LocalFileSystem(), path
            self._root_uri = "file://" + quote(path, safe="/")
            self._uri_path, self._uri_query = self._root_uri, ""
        elif "://" in root_uri:
            parts = urlsplit(root_uri)
            path = parts.path.rstrip("/")
            self._uri_path = f"{parts.scheme}://{parts.netloc}{path}"
            self._uri_query = f"?{parts.query}" if parts.query else ""
            self._root_uri = self._uri_path + self._uri_query
        else:
            raise ArchiveError(
                f"archive root {redact(root_uri)!r} must be a URI (file:///…, s3://…) or an absolute path",
                operation="archive_store",
            )
        self._display_root = redact(self._root_uri)

    def __repr__(self) -> str:
        return f"ArchiveStore({self._display_root!r}, rows_per_file={self._rows_per_file})"

    # -- locations ------------------------------------------------------------------------------------------------

    @property
    def root_uri(self) -> str:
        return self._root_uri

    def manifest_uri(self, partition: str) -> str:
        """``<root_uri>/<partition>/manifest.json``."""
        _check_partition(partition)
        return self._uri(partition, MANIFEST_NAME)

    def _uri(self, *parts: str) -> str:
        return "/".join((self._uri_path, *parts)) + self._uri_query

    def _display(self, *parts: str) -> str:
        return redact(self._uri(*parts))

    def _filesystem(self) -> pafs.FileSystem:
        if self._fs is None:  # opened lazily: resolving a cloud root may need the network
            try:
                self._fs, base = pafs.FileSystem.from_uri(self._root_uri)
            except (*_FS_ERRORS, ValueError) as exc:
                raise ArchiveError(f"archive root {self._display_root} cannot be opened: {exc}",
                                   operation="archive_store") from None
            self._base = base.rstrip("/") or "/"
        return self._fs

    def _path(self, *parts: str) -> str:
        self._filesystem()
        return posixpath.join(self._base, *parts)

    # -- simple operations ----------------------------------------------------------------------------------------

    def check_writable(self) -> None:
        """Create the root if missing and write, read back and delete a probe file; ArchiveError if that fails."""
        fs = self._filesystem()
        probe = self._path(f".probe-{uuid.uuid4().hex}")
        payload = uuid.uuid4().bytes
        try:
            fs.create_dir(self._base, recursive=True)
            with fs.open_output_stream(probe) as out:
                out.write(payload)
            with fs.open_input_stream(probe) as inp:
                back = inp.read()
            fs.delete_file(probe)
            if back != payload:
                raise OSError("the probe file read back differs from what was written")
        except _FS_ERRORS as exc:
            raise ArchiveError(f"archive root {self._display_root} is not writable: {exc}",
                               operation="check_writable") from None

    def read_manifest(self, partition: str) -> ArchiveManifest | None:
        """The partition's manifest, or None when there is none (a directory without a manifest is no archive)."""
        _check_partition(partition)
        fs = self._filesystem()
        path = self._path(partition, MANIFEST_NAME)
        try:
            if fs.get_file_info(path).type == pafs.FileType.NotFound:
                return None
            with fs.open_input_stream(path) as inp:
                data = inp.read()
        except _FS_ERRORS as exc:
            raise ArchiveError(f"{self._display(partition, MANIFEST_NAME)}: cannot be read: {exc}",
                               operation="read_manifest", partition=partition) from None
        try:
            manifest = ArchiveManifest.from_json(data)
        except ArchiveError as exc:
            raise ArchiveError(f"{self._display(partition, MANIFEST_NAME)}: {exc.message}", operation="read_manifest",
                               partition=partition, **{k: v for k, v in exc.context.items() if k == "field"}) from None
        if manifest.partition != partition:
            raise ArchiveError(
                f"{self._display(partition, MANIFEST_NAME)}: names partition {manifest.partition}, not {partition}",
                operation="read_manifest", partition=partition,
            )
        return manifest

    def delete(self, partition: str) -> bool:
        """Remove the partition's archive (manifest first, so a crash midway leaves no archive); False if none."""
        _check_partition(partition)
        fs = self._filesystem()
        directory = self._path(partition)
        try:
            self._remove_stale_staging(partition)
            info = fs.get_file_info(directory)
            if info.type == pafs.FileType.NotFound:
                return False
            if info.type == pafs.FileType.Directory:
                manifest = self._path(partition, MANIFEST_NAME)
                if fs.get_file_info(manifest).type == pafs.FileType.File:
                    fs.delete_file(manifest)
                fs.delete_dir(directory)
            else:
                fs.delete_file(directory)
        except _FS_ERRORS as exc:
            raise ArchiveError(f"{self._display(partition)}: cannot be deleted: {exc}", operation="archive_delete",
                               partition=partition) from None
        logger.info("archive deleted", extra={"audit": {"partition": partition, "uri": self._display(partition)}})
        return True

    # -- export ---------------------------------------------------------------------------------------------------

    def export(
        self,
        conn: psycopg.Connection[Any],
        table: str,
        *,
        partition: str,
        range_start: dt.datetime,
        range_end: dt.datetime,
        progress: Callable[[int], None] | None = None,
    ) -> ArchiveManifest:
        """Write every row of ``table`` to ``<root>/<partition>/`` and return the manifest (written last).

        Reads through a server-side cursor in the caller's transaction (never committed here), one batch of
        ``batch_rows`` rows at a time. ``progress(rows_so_far)`` is called after each batch; an exception it raises
        aborts the export (nothing is published) and propagates.
        """
        _check_partition(partition)
        start = _aware_utc(range_start, "range_start")
        end = _aware_utc(range_end, "range_end")
        if start >= end:
            raise ArchiveError(f"range_start {start} is not before range_end {end}", operation="archive_export",
                               partition=partition)
        _require_transaction(conn, "archive_export")
        fs = self._filesystem()
        target = self._display(partition)
        started = time.perf_counter()
        if self._manifest_exists(partition):
            raise _already_archived(self._display(partition, MANIFEST_NAME), partition)
        staging = self._path(STAGING_DIR, f"{partition}-{uuid.uuid4().hex}")
        try:
            self._remove_stale_staging(partition)
            fs.create_dir(staging, recursive=True)
        except _FS_ERRORS as exc:
            raise ArchiveError(f"{target}: cannot prepare the staging directory: {exc}", operation="archive_export",
                               partition=partition) from None
        try:
            written = self._write_files(conn, table, staging, progress)
            rows, first, last, digest, names = written
            if first is not None and last is not None and not (start <= first and last < end):
                raise ArchiveError(
                    f"{table} holds rows from {format_time(first)} to {format_time(last)}, outside the partition "
                    f"range [{format_time(start)}, {format_time(end)})",
                    operation="archive_export", partition=partition,
                )
            manifest = self._publish(partition, staging, names, rows, first, last, digest, start, end)
        except BaseException:
            self._discard(staging)
            raise
        self._discard(staging)
        logger.info(
            "partition exported",
            extra={"audit": {"partition": partition, "rows": rows, "files": len(manifest.files),
                             "bytes": sum(f.bytes for f in manifest.files), "uri": target,
                             "ms": round((time.perf_counter() - started) * 1000, 1)}},
        )
        return manifest

    def _write_files(
        self, conn: psycopg.Connection[Any], table: str, staging: str, progress: Callable[[int], None] | None
    ) -> tuple[int, dt.datetime | None, dt.datetime | None, str, list[tuple[str, int]]]:
        """Stream the table into data files under ``staging``: (rows, min, max, digest, [(name, rows)])."""
        fs = self._filesystem()
        hasher = hashlib.sha256()
        total = 0
        first: dt.datetime | None = None
        last: dt.datetime | None = None
        done: list[tuple[str, int]] = []
        current: _OpenFile | None = None

        def open_next() -> _OpenFile:
            name = f"data-{len(done):05d}.parquet"
            stream = fs.open_output_stream(posixpath.join(staging, name))
            try:
                writer = pq.ParquetWriter(stream, ARCHIVE_SCHEMA, compression=COMPRESSION)
            except BaseException:
                stream.close()
                raise
            return _OpenFile(name, stream, writer)

        def close(f: _OpenFile) -> None:
            f.writer.close()
            f.stream.close()
            done.append((f.name, f.rows))

        cursor = conn.cursor(name=f"audit_archive_{uuid.uuid4().hex}", row_factory=tuple_row)
        try:
            self._warn_on_weak_isolation(conn, table)
            cursor.itersize = self._batch_rows
            cursor.execute(_select_statement(table))
            while True:
                rows = cursor.fetchmany(self._batch_rows)
                if not rows:
                    break
                batch = _record_batch(rows)
                for row in rows:
                    hasher.update(row[_HASH_INDEX])
                if first is None:
                    first = rows[0][_TIME_INDEX].astimezone(dt.UTC)
                last = rows[-1][_TIME_INDEX].astimezone(dt.UTC)
                n = len(rows)
                del rows  # at most one batch of rows is alive at a time
                offset = 0
                while offset < n:
                    if current is None or current.rows >= self._rows_per_file:
                        if current is not None:
                            close(current)
                        current = None
                        current = open_next()
                    take = min(n - offset, self._rows_per_file - current.rows)
                    current.writer.write_batch(batch.slice(offset, take), row_group_size=take)
                    current.rows += take
                    offset += take
                total += n
                del batch
                if progress is not None:
                    progress(total)
            if current is None:  # an empty table: one file holding the schema only
                current = open_next()
            close(current)
            current = None
        except psycopg.Error as exc:
            err = classify(exc, operation="archive_export")
            wrapped = ArchiveError(f"export of {table} to {self._display()} failed: {err.message}",
                                   operation="archive_export", table=table,
                                   **{k: v for k, v in err.context.items() if k == "sqlstate"})
            wrapped.retryable = err.retryable
            raise wrapped from exc
        except _FS_ERRORS as exc:
            raise ArchiveError(f"export of {table} to {self._display()} failed writing data files: {exc}",
                               operation="archive_export", table=table) from exc
        finally:
            if current is not None:  # an error midway: release the half-written file (it is discarded)
                for closer in (current.writer.close, current.stream.close):
                    try:
                        closer()
                    except Exception:  # noqa: BLE001 - already failing; the staging directory is removed
                        pass
            try:
                cursor.close()
            except psycopg.Error:
                pass
        return total, first, last, hasher.hexdigest(), done

    def _warn_on_weak_isolation(self, conn: psycopg.Connection[Any], table: str) -> None:
        with conn.cursor(row_factory=tuple_row) as cur:
            row = cur.execute("SELECT current_setting('transaction_isolation')").fetchone()
        level = row[0] if row else ""
        if level not in ("repeatable read", "serializable"):
            logger.warning(
                "exporting %s under %s isolation: the archive and table_digest() may see different snapshots",
                table, level,
            )

    def _publish(
        self, partition: str, staging: str, names: list[tuple[str, int]], rows: int,
        first: dt.datetime | None, last: dt.datetime | None, digest: str, start: dt.datetime, end: dt.datetime,
    ) -> ArchiveManifest:
        fs = self._filesystem()
        directory = self._path(partition)
        manifest_path = self._path(partition, MANIFEST_NAME)
        try:
            # Checked again here: another export may have published while this one was writing.
            if self._manifest_exists(partition):
                raise _already_archived(self._display(partition, MANIFEST_NAME), partition)
            existing = fs.get_file_info(directory)
            if existing.type == pafs.FileType.Directory:
                fs.delete_dir(directory)  # an earlier publish that crashed before its manifest: not an archive
            elif existing.type != pafs.FileType.NotFound:
                fs.delete_file(directory)
            fs.create_dir(directory, recursive=True)
            files = []
            for name, _count in names:
                fs.move(posixpath.join(staging, name), posixpath.join(directory, name))
            for name, count in names:
                sha, size = self._hash_file(posixpath.join(directory, name))
                files.append(ArchiveFile(name, count, size, sha))
            manifest = ArchiveManifest(
                format_version=ARCHIVE_FORMAT_VERSION,
                partition=partition,
                range_start=start,
                range_end=end,
                row_count=rows,
                min_event_time=first,
                max_event_time=last,
                content_digest=digest,
                files=tuple(files),
                schema_version=SCHEMA_VERSION,
                created_at=dt.datetime.now(dt.UTC),
                compression=COMPRESSION,
            )
            tmp = manifest_path + ".tmp"
            with fs.open_output_stream(tmp) as out:
                out.write(manifest.to_json())
            fs.move(tmp, manifest_path)  # the commit point
        except _FS_ERRORS as exc:
            raise ArchiveError(f"{self._display(partition)}: cannot publish the archive: {exc}",
                               operation="archive_export", partition=partition) from None
        return manifest

    def _manifest_exists(self, partition: str) -> bool:
        try:
            return self._filesystem().get_file_info(self._path(partition, MANIFEST_NAME)).type != pafs.FileType.NotFound
        except _FS_ERRORS as exc:
            raise ArchiveError(f"{self._display(partition, MANIFEST_NAME)}: cannot be checked: {exc}",
                               operation="archive_export", partition=partition) from None

    def _remove_stale_staging(self, partition: str) -> None:
        """Remove ``<root>/.staging/<partition>-<hex>`` left by an export that crashed."""
        fs = self._filesystem()
        stale = re.compile(rf"^{re.escape(partition)}-[0-9a-f]{{32}}$")
        entries = fs.get_file_info(pafs.FileSelector(self._path(STAGING_DIR), allow_not_found=True))
        for entry in entries:
            if stale.match(entry.base_name):
                logger.warning("removing a stale export staging directory %s", entry.base_name)
                if entry.type == pafs.FileType.Directory:
                    fs.delete_dir(entry.path)
                else:
                    fs.delete_file(entry.path)

    def _discard(self, staging: str) -> None:
        try:
            fs = self._filesystem()
            if fs.get_file_info(staging).type == pafs.FileType.Directory:
                fs.delete_dir(staging)
        except _FS_ERRORS as exc:  # the next export of the partition removes it
            logger.warning("could not remove the staging directory %s: %s", redact(staging), exc)

    def _hash_file(self, path: str) -> tuple[str, int]:
        hasher = hashlib.sha256()
        size = 0
        with self._filesystem().open_input_stream(path) as inp:
            while chunk := inp.read(_HASH_CHUNK):
                hasher.update(chunk)
                size += len(chunk)
        return hasher.hexdigest(), size

    # -- verify ---------------------------------------------------------------------------------------------------

    def verify(
        self, manifest: ArchiveManifest, *, expected_rows: int | None = None, expected_digest: str | None = None
    ) -> VerificationResult:
        """Re-read every file of the archive and compare it with the manifest (and with the database side when
        ``expected_rows`` / ``expected_digest`` are given). Never raises for a bad archive: lists the problems."""
        problems: list[str] = []
        if manifest.format_version != ARCHIVE_FORMAT_VERSION:
            problems.append(f"manifest: format_version {manifest.format_version} is not supported "
                            f"(this library reads {ARCHIVE_FORMAT_VERSION})")
        if not _PARTITION_NAME.match(manifest.partition):
            problems.append(f"manifest: partition {manifest.partition!r} is not a valid partition name")
            return VerificationResult(False, tuple(problems), 0, None)
        if manifest.compression != COMPRESSION:
            problems.append(f"manifest: compression {manifest.compression!r} is not {COMPRESSION!r}")
        if not manifest.files:
            problems.append("manifest: files lists no data file")
        listed = sum(f.rows for f in manifest.files)
        if listed != manifest.row_count:
            problems.append(f"manifest: row_count {manifest.row_count} differs from the sum of the files' rows "
                            f"({listed})")
        names = [f.path for f in manifest.files]
        for name in sorted({n for n in names if names.count(n) > 1}):
            problems.append(f"{name}: listed more than once in the manifest")

        fs = self._filesystem()
        directory = self._path(manifest.partition)
        present: dict[str, pafs.FileInfo] = {}
        try:
            for entry in fs.get_file_info(pafs.FileSelector(directory, allow_not_found=True)):
                if entry.type == pafs.FileType.File:
                    present[entry.base_name] = entry
        except _FS_ERRORS as exc:
            problems.append(f"{self._display(manifest.partition)}: cannot be listed: {exc}")
        for name in sorted(present):
            if name.endswith(".parquet") and name not in names:
                problems.append(f"{name}: unexpected file (not listed in the manifest)")

        hasher = hashlib.sha256()
        rows = 0
        complete = True
        first: dt.datetime | None = None
        last: dt.datetime | None = None
        for f in manifest.files:
            if not _DATA_FILE_NAME.match(f.path):
                problems.append(f"{f.path}: not a plain *.parquet file name")
                complete = False
                continue
            entry = present.get(f.path)
            if entry is None:
                problems.append(f"{f.path}: missing (listed in the manifest)")
                complete = False
                continue
            path = posixpath.join(directory, f.path)
            if entry.size is not None and entry.size != f.bytes:
                problems.append(f"{f.path}: size {entry.size} bytes differs from the manifest ({f.bytes})")
            try:
                sha, _ = self._hash_file(path)
            except _FS_ERRORS as exc:
                problems.append(f"{f.path}: cannot be read: {exc}")
                complete = False
                continue
            if sha != f.sha256:
                problems.append(f"{f.path}: sha256 differs from the manifest")
            try:
                file_rows, fmin, fmax = self._scan_file(path, hasher)
            except (*_FS_ERRORS, ValueError, TypeError) as exc:
                problems.append(f"{f.path}: cannot be read as an archive Parquet file: {exc}")
                complete = False
                continue
            rows += file_rows
            if file_rows != f.rows:
                problems.append(f"{f.path}: holds {file_rows} rows, the manifest says {f.rows}")
            if fmin is not None:
                first = fmin if first is None else min(first, fmin)
            if fmax is not None:
                last = fmax if last is None else max(last, fmax)

        digest = hasher.hexdigest() if complete else None
        if complete:
            if rows != manifest.row_count:
                problems.append(f"manifest: row_count {manifest.row_count} differs from the rows in the data files "
                                f"({rows})")
            if digest != manifest.content_digest:
                problems.append("manifest: content_digest differs from the content_hash values in the data files")
            if first != manifest.min_event_time:
                problems.append(f"manifest: min_event_time {_time_or_none(manifest.min_event_time)} differs from "
                                f"the data files ({_time_or_none(first)})")
            if last != manifest.max_event_time:
                problems.append(f"manifest: max_event_time {_time_or_none(manifest.max_event_time)} differs from "
                                f"the data files ({_time_or_none(last)})")
            if first is not None and last is not None and not (
                manifest.range_start <= first and last < manifest.range_end
            ):
                problems.append(
                    f"data: event_time from {format_time(first)} to {format_time(last)} is outside the manifest range "
                    f"[{format_time(manifest.range_start)}, {format_time(manifest.range_end)})"
                )
        if expected_rows is not None and expected_rows != manifest.row_count:
            problems.append(f"database: {expected_rows} rows, the archive's row_count is {manifest.row_count}")
        if expected_digest is not None and expected_digest != manifest.content_digest:
            problems.append("database: content digest differs from the archive's content_digest")

        if problems:
            logger.warning(
                "archive verification failed",
                extra={"audit": {"partition": manifest.partition, "uri": self._display(manifest.partition),
                                 "problems": problems}},
            )
        return VerificationResult(not problems, tuple(problems), rows, digest)

    def _scan_file(self, path: str, hasher: Any) -> tuple[int, dt.datetime | None, dt.datetime | None]:
        """Feed the file's content_hash column to ``hasher``; return (rows, min event_time, max event_time)."""
        first: dt.datetime | None = None
        last: dt.datetime | None = None
        rows = 0
        with self._filesystem().open_input_file(path) as source:
            pf = pq.ParquetFile(source)
            if not pf.schema_arrow.equals(ARCHIVE_SCHEMA, check_metadata=False):
                raise ValueError("its schema differs from the archive schema")
            for batch in pf.iter_batches(batch_size=self._batch_rows, columns=["event_time", "content_hash"]):
                hashes = batch.column(1)
                if hashes.null_count:
                    raise ValueError("content_hash holds nulls")
                hasher.update(b"".join(hashes.to_pylist()))
                bounds = pc.min_max(batch.column(0))
                lo, hi = bounds["min"].as_py(), bounds["max"].as_py()
                if lo is not None:
                    first = lo if first is None else min(first, lo)
                if hi is not None:
                    last = hi if last is None else max(last, hi)
                rows += batch.num_rows
            if rows != pf.metadata.num_rows:
                raise ValueError(f"read {rows} rows, its footer says {pf.metadata.num_rows}")
        return rows, first, last

    # -- restore --------------------------------------------------------------------------------------------------

    def restore(self, conn: psycopg.Connection[Any], manifest: ArchiveManifest, table: str) -> int:
        """Verify the archive, then load it into a new plain table ``table`` (``LIKE audit_log``) in the caller's
        transaction and check the loaded rows' digest against the manifest. Returns the row count; the caller
        commits (or rolls back, which removes the table)."""
        _require_transaction(conn, "archive_restore")
        source = self._display(manifest.partition)
        result = self.verify(manifest)
        if not result.ok:
            raise ArchiveError(f"archive {source} failed verification, not restored: {'; '.join(result.problems)}",
                               operation="archive_restore", partition=manifest.partition)
        ident = sql.Identifier(table)
        columns = sql.SQL(", ").join(sql.Identifier(c) for c in STORED_COLUMNS)
        try:
            with conn.cursor(row_factory=tuple_row) as cur:
                exists = cur.execute(
                    "SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
                    " WHERE n.nspname = current_schema() AND c.relname = %s",
                    (table,),
                ).fetchone()
                if exists:
                    raise ArchiveError(f"cannot restore {source} into {table}: the table already exists",
                                       operation="archive_restore", partition=manifest.partition, table=table)
                cur.execute(sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS)").format(
                    ident, sql.Identifier("audit_log")))
                with cur.copy(sql.SQL("COPY {} ({}) FROM STDIN").format(ident, columns)) as copy:
                    for row in self._iter_rows(manifest):
                        copy.write_row(row)
        except psycopg.Error as exc:
            err = classify(exc, operation="archive_restore")
            raise ArchiveError(f"restore of {source} into {table} failed: {err.message}", operation="archive_restore",
                               partition=manifest.partition, table=table) from exc
        except _FS_ERRORS as exc:
            raise ArchiveError(f"restore of {source} into {table} failed reading the archive: {exc}",
                               operation="archive_restore", partition=manifest.partition, table=table) from exc
        count, first, last, digest = table_digest(conn, table)
        expected = (manifest.row_count, manifest.min_event_time, manifest.max_event_time, manifest.content_digest)
        if (count, first, last, digest) != expected:
            raise ArchiveError(
                f"restore of {source} into {table}: the loaded rows (count {count}, digest {digest}) do not match the "
                f"manifest (count {manifest.row_count}, digest {manifest.content_digest})",
                operation="archive_restore", partition=manifest.partition, table=table,
            )
        logger.info("archive restored", extra={"audit": {"partition": manifest.partition, "table": table,
                                                          "rows": count, "uri": source}})
        return count

    def _iter_rows(self, manifest: ArchiveManifest) -> Iterator[tuple[Any, ...]]:
        fs = self._filesystem()
        directory = self._path(manifest.partition)
        for f in manifest.files:
            with fs.open_input_file(posixpath.join(directory, f.path)) as source:
                pf = pq.ParquetFile(source)
                for batch in pf.iter_batches(batch_size=self._batch_rows, columns=list(STORED_COLUMNS)):
                    yield from zip(*(column.to_pylist() for column in batch.columns))


    # -- rows and companion files (used by audit_db_core.integrity) ------------------------------------------------

    def read_rows(
        self, manifest: ArchiveManifest, *, since: dt.datetime | None = None, until: dt.datetime | None = None
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """``(file name, row)`` for every archived row with ``since <= event_time < until``, in the files' order
        (``event_time``, ``event_id``); a row is a dict of the stored columns. Row groups outside the range are
        skipped by their statistics. A file that cannot be read raises :class:`ArchiveError` naming it."""
        filters: list[tuple[str, str, Any]] = []
        if since is not None:
            filters.append(("event_time", ">=", _aware_utc(since, "since")))
        if until is not None:
            filters.append(("event_time", "<", _aware_utc(until, "until")))
        fs = self._filesystem()
        directory = self._path(manifest.partition)
        for f in manifest.files:
            if not _DATA_FILE_NAME.match(f.path):
                raise ArchiveError(f"{f.path}: not a plain *.parquet file name", operation="archive_read",
                                   partition=manifest.partition)
            try:
                with fs.open_input_file(posixpath.join(directory, f.path)) as source:
                    table = pq.read_table(source, columns=list(STORED_COLUMNS), filters=filters or None)
            except (*_FS_ERRORS, ValueError, TypeError) as exc:
                raise ArchiveError(f"{self._display(manifest.partition, f.path)}: cannot be read: {exc}",
                                   operation="archive_read", partition=manifest.partition, file=f.path) from None
            for batch in table.to_batches(max_chunksize=self._batch_rows):
                for row in batch.to_pylist():
                    yield f.path, row

    def write_sidecar(self, partition: str, name: str, data: bytes) -> str:
        """Write a companion file ``<root>/<partition>/<name>`` next to a published archive (not listed in the
        manifest, never a ``*.parquet``); returns its hex SHA-256. Written to a temporary name, then moved."""
        _check_sidecar(partition, name)
        fs = self._filesystem()
        path = self._path(partition, name)
        try:
            with fs.open_output_stream(path + ".tmp") as out:
                out.write(data)
            fs.move(path + ".tmp", path)
        except _FS_ERRORS as exc:
            raise ArchiveError(f"{self._display(partition, name)}: cannot be written: {exc}",
                               operation="archive_sidecar", partition=partition) from None
        return hashlib.sha256(data).hexdigest()

    def read_sidecar(self, partition: str, name: str) -> bytes | None:
        """The bytes of the companion file ``name`` of ``partition``, or None when there is none."""
        _check_sidecar(partition, name)
        fs = self._filesystem()
        path = self._path(partition, name)
        try:
            if fs.get_file_info(path).type == pafs.FileType.NotFound:
                return None
            with fs.open_input_stream(path) as inp:
                return bytes(inp.read())
        except _FS_ERRORS as exc:
            raise ArchiveError(f"{self._display(partition, name)}: cannot be read: {exc}",
                               operation="archive_sidecar", partition=partition) from None

    def sidecar_uri(self, partition: str, name: str) -> str:
        """``<root_uri>/<partition>/<name>``."""
        _check_sidecar(partition, name)
        return self._uri(partition, name)


def _check_sidecar(partition: str, name: str) -> None:
    _check_partition(partition)
    if (not isinstance(name, str) or not re.match(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,199}$", name)
            or name.endswith((".parquet", ".tmp")) or name == MANIFEST_NAME):
        raise ArchiveError(f"{name!r} is not a valid companion file name for an archive", operation="archive_sidecar",
                           partition=partition)

def _select_statement(table: str) -> sql.Composed:
    """``SELECT <stored columns, event_id and details as text> FROM table ORDER BY event_time, event_id``."""
    fields = []
    for name in STORED_COLUMNS:
        col = sql.Identifier(name)
        if name in ("event_id", "details"):
            fields.append(sql.SQL("{}::text AS {}").format(col, col))
        else:
            fields.append(col)
    return sql.SQL("SELECT {} FROM {} ORDER BY {}, {}").format(
        sql.SQL(", ").join(fields), sql.Identifier(table), sql.Identifier("event_time"), sql.Identifier("event_id")
    )


def _record_batch(rows: list[tuple[Any, ...]]) -> pa.RecordBatch:
    columns = list(zip(*rows))
    arrays = [pa.array(values, type=field.type) for values, field in zip(columns, ARCHIVE_SCHEMA, strict=True)]
    return pa.RecordBatch.from_arrays(arrays, schema=ARCHIVE_SCHEMA)


def _check_partition(partition: str) -> None:
    if not isinstance(partition, str) or not _PARTITION_NAME.match(partition):
        raise ArchiveError(
            f"{partition!r} is not a valid partition name for an archive (letters, digits, '_' and '-')",
            operation="archive",
        )


def _already_archived(uri: str, partition: str) -> ArchiveError:
    return ArchiveError(f"{uri}: {partition} is already archived; delete it first", operation="archive_export",
                        partition=partition)
