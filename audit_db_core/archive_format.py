"""What a partition archive is, independent of where it is stored: the Parquet schema of its data files and the
manifest that lists them — written last, it is the archive's commit marker — with its canonical JSON form, and the
result of verifying an archive. :mod:`audit_db_core.archive` writes, reads and verifies archives in this format.

The manifest records the row count, the event-time range, the SHA-256 of every data file and a *content digest*:
SHA-256 over the concatenated 32-byte ``content_hash`` values in ``(event_time, event_id)`` order, the same
value :func:`audit_db_core.archive.table_digest` computes in SQL.

Example::

    manifest = ArchiveManifest.from_json(Path(".../audit_log_p2026_07/manifest.json").read_bytes())
    manifest.row_count, manifest.content_digest, [f.path for f in manifest.files]
    manifest.sha256                                 # what the registry recorded at archival
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from audit_db_core.errors import ArchiveError
from audit_db_core.events import STORED_COLUMNS, format_time

#: 2 adds ``deployment_id``: the identity of the audit database an archive belongs to (format 1 archives, written
#: before identities existed, have none).
ARCHIVE_FORMAT_VERSION = 2
COMPRESSION = "zstd"
MANIFEST_NAME = "manifest.json"

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


def _record_batch(rows: list[tuple[Any, ...]]) -> pa.RecordBatch:
    """Rows of :data:`STORED_COLUMNS` (as the export selects them) as one batch of :data:`ARCHIVE_SCHEMA`."""
    columns = list(zip(*rows))
    arrays = [pa.array(values, type=field.type) for values, field in zip(columns, ARCHIVE_SCHEMA, strict=True)]
    return pa.RecordBatch.from_arrays(arrays, schema=ARCHIVE_SCHEMA)


def _check_partition(partition: str) -> None:
    if not isinstance(partition, str) or not _PARTITION_NAME.match(partition):
        raise ArchiveError(
            f"{partition!r} is not a valid partition name for an archive (letters, digits, '_' and '-')",
            operation="archive",
        )


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
    #: The deployment identity (``AuditDatabase.deployment_id``) the archive belongs to; None in format 1.
    deployment_id: str | None = None

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
            **({"deployment_id": self.deployment_id} if self.deployment_id is not None else {}),
        }

    def to_json(self) -> bytes:
        """The canonical form: compact UTF-8 JSON with sorted keys (what :attr:`sha256` is computed over)."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> ArchiveManifest:
        """Parse a manifest; malformed input raises :class:`ArchiveError` naming the field."""
        obj = _manifest_object(data)
        version = obj["format_version"]
        partition = _str_field(obj, "partition")
        if not _PARTITION_NAME.match(partition):
            raise _malformed("partition", "is not a valid partition name")
        digest = _str_field(obj, "content_digest")
        if not _HEX64.match(digest):
            raise _malformed("content_digest", "must be 64 lowercase hex digits")
        files = _manifest_files(obj["files"])
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
            files=files,
            schema_version=_int_field(obj, "schema_version", minimum=0),
            created_at=_time_field(obj, "created_at"),  # type: ignore[arg-type]
            compression=_str_field(obj, "compression"),
            deployment_id=_deployment_field(obj) if version >= 2 else None,
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


# -- parsing a manifest ---------------------------------------------------------------------------------------------

_MANIFEST_FIELDS = frozenset({
    "format_version", "partition", "range_start", "range_end", "row_count", "min_event_time",
    "max_event_time", "content_digest", "files", "schema_version", "created_at", "compression",
})


def _deployment_field(obj: dict[str, Any]) -> str:
    value = _str_field(obj, "deployment_id")
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise _malformed("deployment_id", "is not a UUID") from None


def _manifest_object(data: bytes | str) -> dict[str, Any]:
    """The manifest's JSON object, holding exactly the fields of its format version."""
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _malformed("manifest", f"is not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise _malformed("manifest", f"must be a JSON object, not {type(obj).__name__}")
    version = _int_field(obj, "format_version", minimum=1)
    if version > ARCHIVE_FORMAT_VERSION:
        raise _malformed("format_version", f"{version} is newer than this library reads ({ARCHIVE_FORMAT_VERSION})")
    fields = _MANIFEST_FIELDS | ({"deployment_id"} if version >= 2 else set())
    missing, unknown = sorted(fields - obj.keys()), sorted(obj.keys() - fields)
    if missing:
        raise _malformed(missing[0], "is missing")
    if unknown:
        raise _malformed(unknown[0], "is not a manifest field")
    return obj


def _manifest_files(raw_files: Any) -> tuple[ArchiveFile, ...]:
    """The manifest's ``files`` entries: a non-empty list of plain ``*.parquet`` names with rows, bytes, SHA-256."""
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
    return tuple(files)


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
