"""Partition archives: export a partition to zstd-compressed Parquet with a manifest, verify it, restore it.

Layout under the archive root (``file:///…``, or anything :func:`pyarrow.fs.FileSystem.from_uri` accepts)::

    <root>/<partition>/data-00000.parquet     one row group per export batch, a new file every rows_per_file rows
    <root>/<partition>/manifest.json          written last: the commit marker (archive exists ⇔ manifest exists)
    <root>/.staging/<partition>-<uuid hex>/   files being written by an export in progress (or a crashed one)

The manifest records the row count, the event-time range, the SHA-256 of every data file and a *content digest*:
SHA-256 over the concatenated 32-byte ``content_hash`` values in ``(event_time, event_id)`` order, the same
value :func:`table_digest` computes in SQL, so the archive can be checked against the database and vice versa.
The format itself (Parquet schema, manifest, verification result) is :mod:`audit_db_core.archive_format`; its
names are importable from here too.

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

from audit_db_core.archive_format import (
    _DATA_FILE_NAME,
    _HASH_INDEX,
    _PARTITION_NAME,
    _TIME_INDEX,
    ARCHIVE_FORMAT_VERSION,
    ARCHIVE_SCHEMA,
    COMPRESSION,
    MANIFEST_NAME,
    ArchiveFile,
    ArchiveManifest,
    VerificationResult,
    _check_partition,
    _record_batch,
    _time_or_none,
)
from audit_db_core.errors import ArchiveError, classify, redact
from audit_db_core.private_files import make_private, make_private_dirs
from audit_db_core.events import STORED_COLUMNS, format_time
from audit_db_core.migrate import SCHEMA_VERSION

# The rest of the format's private helpers, importable from here as before archive_format.py was split out.
from audit_db_core.archive_format import (  # noqa: F401
    _HEX64,
    _NOT_NULL,
    _TYPES,
    _int_field,
    _malformed,
    _str_field,
    _time_field,
)

logger = logging.getLogger("audit_db_core.archive")

__all__ = [
    "ARCHIVE_FORMAT_VERSION", "ARCHIVE_SCHEMA", "COMPRESSION", "MANIFEST_NAME", "STAGING_DIR", "ArchiveFile",
    "ArchiveManifest", "ArchiveStore", "VerificationResult", "table_digest",
]

STAGING_DIR = ".staging"
#: ``string_agg`` builds one bytea value, which PostgreSQL caps at 1 GB (~33.5 million 32-byte hashes): above this
#: many rows :func:`table_digest` streams the hashes and digests them client-side instead (same result).
_SQL_DIGEST_MAX_ROWS = 30_000_000
_HASH_CHUNK = 1 << 20

_FS_ERRORS = (OSError, pa.ArrowException)


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


class _DataFiles:
    """The data files of one export under its staging directory: ``data-00000.parquet``, … a new file every
    ``rows_per_file`` rows, one row group per batch written."""

    def __init__(self, fs: pafs.FileSystem, staging: str, rows_per_file: int) -> None:
        self._fs = fs
        self._staging = staging
        self._rows_per_file = rows_per_file
        self._done: list[tuple[str, int]] = []
        self._current: _OpenFile | None = None

    def write(self, batch: pa.RecordBatch) -> None:
        n, offset = batch.num_rows, 0
        while offset < n:
            if self._current is None or self._current.rows >= self._rows_per_file:
                if self._current is not None:
                    self._close(self._current)
                self._current = None
                self._current = self._open_next()
            take = min(n - offset, self._rows_per_file - self._current.rows)
            self._current.writer.write_batch(batch.slice(offset, take), row_group_size=take)
            self._current.rows += take
            offset += take

    def finish(self) -> list[tuple[str, int]]:
        """Close the last file; ``[(name, rows)]`` of every file written."""
        if self._current is None:  # an empty table: one file holding the schema only
            self._current = self._open_next()
        self._close(self._current)
        self._current = None
        return self._done

    def abandon(self) -> None:
        """After an error midway: release the half-written file (the staging directory is discarded)."""
        if self._current is not None:
            for closer in (self._current.writer.close, self._current.stream.close):
                try:
                    closer()
                except Exception:  # noqa: BLE001 - already failing; the staging directory is removed
                    pass

    def _open_next(self) -> _OpenFile:
        name = f"data-{len(self._done):05d}.parquet"
        path = posixpath.join(self._staging, name)
        stream = self._fs.open_output_stream(path)
        try:
            _owner_only(self._fs, path)
            writer = pq.ParquetWriter(stream, ARCHIVE_SCHEMA, compression=COMPRESSION)
        except BaseException:
            stream.close()
            raise
        return _OpenFile(name, stream, writer)

    def _close(self, f: _OpenFile) -> None:
        f.writer.close()
        f.stream.close()
        self._done.append((f.name, f.rows))


def _make_dirs(fs: pafs.FileSystem, path: str) -> None:
    """``create_dir(recursive=True)``; on a local disk the directories made are owner-only (0700)."""
    if isinstance(fs, pafs.LocalFileSystem):
        make_private_dirs(path)
    else:
        fs.create_dir(path, recursive=True)


def _owner_only(fs: pafs.FileSystem, path: str) -> None:
    """A file just created on a local disk: 0600 before data is written (archives hold PHI). Object stores have
    no such modes: their access control and encryption are the bucket's."""
    if isinstance(fs, pafs.LocalFileSystem):
        make_private(path)


def public_uri(uri: str) -> str:
    """``uri`` without what may be a credential: no user info (``s3://KEY:SECRET@bucket``) and no query
    (``?access_key=…&secret_key=…``, SAS tokens). What the registry, the ledger, logs, errors and Dagster metadata
    keep of an archive location; the store itself keeps the configured root to open it.

    >>> public_uri("s3://AKIA:s3cr3t@bucket/audit?region=eu-west-1&secret_key=x")
    's3://bucket/audit'
    """
    try:
        parts = urlsplit(uri)
    except ValueError:
        return "(an archive root URI that does not parse)"
    if not parts.scheme:
        return uri
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal keeps its brackets
        host = f"[{host}]"
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}"


class ArchiveStore:
    """Archives of partitions under one root URI; see the module documentation for the layout."""

    def __init__(self, root_uri: str, *, rows_per_file: int = 1_000_000, batch_rows: int = 50_000,
                 deployment_id: str | uuid.UUID | None = None) -> None:
        """``deployment_id``: the audit database's identity. Archives then live under ``<root>/<deployment id>/``
        and their manifests name it, so databases sharing one root never touch each other's archives, and a
        manifest of another deployment is refused. :meth:`PartitionManager.archive_store` always passes it."""
        if rows_per_file < 1:
            raise ArchiveError("rows_per_file must be >= 1", operation="archive_store")
        if batch_rows < 1:
            raise ArchiveError("batch_rows must be >= 1", operation="archive_store")
        self._rows_per_file = rows_per_file
        self._batch_rows = batch_rows
        self._fs: pafs.FileSystem | None = None
        self._base = ""
        try:
            self.deployment_id = str(uuid.UUID(str(deployment_id))) if deployment_id is not None else None
        except ValueError:
            raise ArchiveError("deployment_id must be a UUID", operation="archive_store") from None
        self._ns = (self.deployment_id,) if self.deployment_id else ()
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
                "the archive root must be a URI (file:///…, s3://…) or an absolute path",
                operation="archive_store",
            )
        self._display_root = public_uri(self._root_uri)

    def __repr__(self) -> str:
        return (f"ArchiveStore({self._display_root!r}, deployment_id={self.deployment_id!r}, "
                f"rows_per_file={self._rows_per_file})")

    # -- locations ------------------------------------------------------------------------------------------------

    @property
    def root_uri(self) -> str:
        return self._root_uri

    @property
    def display_root(self) -> str:
        """The root without credentials (:func:`public_uri`): what registry, ledger, logs and metadata show."""
        return self._display_root

    def manifest_uri(self, partition: str) -> str:
        """``<root>/<deployment id>/<partition>/manifest.json`` without credentials — stored in the registry and
        the ledger."""
        _check_partition(partition)
        return self._display(partition, MANIFEST_NAME)

    def _display(self, *parts: str) -> str:
        return public_uri("/".join((self._uri_path, *self._ns, *parts)))

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
        """A path under this deployment's directory of the root."""
        self._filesystem()
        return posixpath.join(self._base, *self._ns, *parts)

    # -- simple operations ----------------------------------------------------------------------------------------

    def check_writable(self) -> None:
        """Create the root if missing and write, read back and delete a probe file; ArchiveError if that fails."""
        fs = self._filesystem()
        probe = self._path(f".probe-{uuid.uuid4().hex}")
        payload = uuid.uuid4().bytes
        try:
            _make_dirs(fs, self._path())
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
                self._refuse_unmoved(partition)
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
        foreign = self._foreign(manifest)
        if foreign:
            raise ArchiveError(f"{self._display(partition, MANIFEST_NAME)}: {foreign}", operation="read_manifest",
                               partition=partition)
        return manifest

    def _foreign(self, manifest: ArchiveManifest) -> str | None:
        """Why ``manifest`` is not this deployment's, or None (a format 1 manifest names no deployment)."""
        if self.deployment_id and manifest.deployment_id and manifest.deployment_id != self.deployment_id:
            return (f"the manifest belongs to deployment {manifest.deployment_id}, not to this database's "
                    f"({self.deployment_id}): an archive of another deployment is never read, verified or deleted")
        return None

    def _refuse_unmoved(self, partition: str) -> None:
        """An archive written before deployment identities (``<root>/<partition>/``) is not silently missing."""
        if not self._ns:
            return
        legacy = posixpath.join(self._base, partition, MANIFEST_NAME)
        if self._filesystem().get_file_info(legacy).type == pafs.FileType.File:
            raise ArchiveError(
                f"{public_uri('/'.join((self._uri_path, partition)))}: an archive without a deployment directory "
                f"(written before deployment identities): move it to {self._display(partition)}",
                operation="read_manifest", partition=partition)

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
        started = time.perf_counter()
        if self._manifest_exists(partition):
            raise _already_archived(self._display(partition, MANIFEST_NAME), partition)
        staging = self._new_staging(partition)
        try:
            rows, first, last, digest, names = self._write_files(conn, table, staging, progress)
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
                             "bytes": sum(f.bytes for f in manifest.files), "uri": self._display(partition),
                             "ms": round((time.perf_counter() - started) * 1000, 1)}},
        )
        return manifest

    def _new_staging(self, partition: str) -> str:
        """A fresh staging directory for an export of ``partition``, once those of crashed exports are gone."""
        staging = self._path(STAGING_DIR, f"{partition}-{uuid.uuid4().hex}")
        try:
            self._remove_stale_staging(partition)
            _make_dirs(self._filesystem(), staging)
        except _FS_ERRORS as exc:
            raise ArchiveError(f"{self._display(partition)}: cannot prepare the staging directory: {exc}",
                               operation="archive_export", partition=partition) from None
        return staging

    def _write_files(
        self, conn: psycopg.Connection[Any], table: str, staging: str, progress: Callable[[int], None] | None
    ) -> tuple[int, dt.datetime | None, dt.datetime | None, str, list[tuple[str, int]]]:
        """Stream the table into data files under ``staging``: (rows, min, max, digest, [(name, rows)])."""
        files = _DataFiles(self._filesystem(), staging, self._rows_per_file)
        hasher = hashlib.sha256()
        total = 0
        first: dt.datetime | None = None
        last: dt.datetime | None = None
        cursor = conn.cursor(name=f"audit_archive_{uuid.uuid4().hex}", row_factory=tuple_row)
        try:
            self._warn_on_weak_isolation(conn, table)
            cursor.itersize = self._batch_rows
            cursor.execute(_select_statement(table))
            while rows := cursor.fetchmany(self._batch_rows):
                batch = _record_batch(rows)
                for row in rows:
                    hasher.update(row[_HASH_INDEX])
                if first is None:
                    first = rows[0][_TIME_INDEX].astimezone(dt.UTC)
                last = rows[-1][_TIME_INDEX].astimezone(dt.UTC)
                del rows  # at most one batch of rows is alive at a time
                files.write(batch)
                total += batch.num_rows
                del batch
                if progress is not None:
                    progress(total)
            names = files.finish()
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
            files.abandon()
            try:
                cursor.close()
            except psycopg.Error:
                pass
        return total, first, last, hasher.hexdigest(), names

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
            _make_dirs(fs, directory)
            files = []
            for name, _count in names:
                fs.move(posixpath.join(staging, name), posixpath.join(directory, name))
            for name, count in names:
                sha, size = self._hash_file(posixpath.join(directory, name))
                files.append(ArchiveFile(name, count, size, sha))
            manifest = ArchiveManifest(
                format_version=ARCHIVE_FORMAT_VERSION if self.deployment_id else 1,
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
                deployment_id=self.deployment_id,
            )
            tmp = manifest_path + ".tmp"
            with fs.open_output_stream(tmp) as out:
                _owner_only(fs, tmp)
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
        if not 1 <= manifest.format_version <= ARCHIVE_FORMAT_VERSION:
            problems.append(f"manifest: format_version {manifest.format_version} is not supported "
                            f"(this library reads 1 to {ARCHIVE_FORMAT_VERSION})")
        elif (manifest.format_version >= 2) != (manifest.deployment_id is not None):
            problems.append("manifest: deployment_id must be set from format_version 2 on, and only then")
        if not _PARTITION_NAME.match(manifest.partition):  # no directory to read: nothing more can be checked
            problems.append(f"manifest: partition {manifest.partition!r} is not a valid partition name")
            return VerificationResult(False, tuple(problems), 0, None)
        problems += _manifest_problems(manifest)
        foreign = self._foreign(manifest)
        if foreign:
            return VerificationResult(False, (*problems, f"manifest: {foreign}"), 0, None)
        present = self._listed_files(manifest, problems)
        scan = self._scan_files(manifest, present, problems)
        if scan.digest is not None:
            problems += _content_problems(manifest, scan)
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
        return VerificationResult(not problems, tuple(problems), scan.rows, scan.digest)

    def _listed_files(self, manifest: ArchiveManifest, problems: list[str]) -> dict[str, pafs.FileInfo]:
        """The files in the archive's directory by name; a Parquet file the manifest does not list is a problem."""
        present: dict[str, pafs.FileInfo] = {}
        try:
            for entry in self._filesystem().get_file_info(
                pafs.FileSelector(self._path(manifest.partition), allow_not_found=True)
            ):
                if entry.type == pafs.FileType.File:
                    present[entry.base_name] = entry
        except _FS_ERRORS as exc:
            problems.append(f"{self._display(manifest.partition)}: cannot be listed: {exc}")
        names = {f.path for f in manifest.files}
        for name in sorted(present):
            if name.endswith(".parquet") and name not in names:
                problems.append(f"{name}: unexpected file (not listed in the manifest)")
        return present

    def _scan_files(
        self, manifest: ArchiveManifest, present: dict[str, pafs.FileInfo], problems: list[str]
    ) -> _Scan:
        """Hash and scan every listed data file against its manifest entry; the totals over all of them (no digest
        when a file could not be read whole)."""
        directory = self._path(manifest.partition)
        hasher = hashlib.sha256()
        scan = _Scan()
        complete = True
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
            if file_rows != f.rows:
                problems.append(f"{f.path}: holds {file_rows} rows, the manifest says {f.rows}")
            scan.add(file_rows, fmin, fmax)
        scan.digest = hasher.hexdigest() if complete else None
        return scan

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
                _owner_only(fs, path + ".tmp")
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
        """``<root>/<partition>/<name>`` without credentials."""
        _check_sidecar(partition, name)
        return self._display(partition, name)


@dataclass
class _Scan:
    """Totals over the data files of an archive as read back by :meth:`ArchiveStore.verify`."""

    rows: int = 0
    first: dt.datetime | None = None
    last: dt.datetime | None = None
    digest: str | None = None  # None when a file could not be read whole

    def add(self, rows: int, first: dt.datetime | None, last: dt.datetime | None) -> None:
        self.rows += rows
        if first is not None:
            self.first = first if self.first is None else min(self.first, first)
        if last is not None:
            self.last = last if self.last is None else max(self.last, last)


def _manifest_problems(manifest: ArchiveManifest) -> list[str]:
    """What contradicts itself inside the manifest, before any file is read."""
    problems = []
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
    return problems


def _content_problems(manifest: ArchiveManifest, scan: _Scan) -> list[str]:
    """Where the manifest's totals differ from what the data files hold (all of them read whole)."""
    problems = []
    if scan.rows != manifest.row_count:
        problems.append(f"manifest: row_count {manifest.row_count} differs from the rows in the data files "
                        f"({scan.rows})")
    if scan.digest != manifest.content_digest:
        problems.append("manifest: content_digest differs from the content_hash values in the data files")
    if scan.first != manifest.min_event_time:
        problems.append(f"manifest: min_event_time {_time_or_none(manifest.min_event_time)} differs from "
                        f"the data files ({_time_or_none(scan.first)})")
    if scan.last != manifest.max_event_time:
        problems.append(f"manifest: max_event_time {_time_or_none(manifest.max_event_time)} differs from "
                        f"the data files ({_time_or_none(scan.last)})")
    if scan.first is not None and scan.last is not None and not (
        manifest.range_start <= scan.first and scan.last < manifest.range_end
    ):
        problems.append(
            f"data: event_time from {format_time(scan.first)} to {format_time(scan.last)} is outside the manifest "
            f"range [{format_time(manifest.range_start)}, {format_time(manifest.range_end)})"
        )
    return problems


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


def _already_archived(uri: str, partition: str) -> ArchiveError:
    return ArchiveError(f"{uri}: {partition} is already archived; delete it first", operation="archive_export",
                        partition=partition)
