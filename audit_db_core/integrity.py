"""Tamper-evident digests of the audit log: a signed hash chain of Merkle roots, its verification, and inclusion
proofs for single events. The threat model, the coverage rules and the storage cost are in
docs/guides/integrity.md.

**Windows.** ``event_time`` is cut into windows of ``AUDIT_INTEGRITY__WINDOW`` (one day by default, aligned in
UTC like day-based partitions), so that each window lies inside one partition. A window is *closed* once it ended
``AUDIT_INTEGRITY__SEAL_DELAY_SECONDS`` ago; :meth:`IntegrityManager.seal` then makes its first digest (``seq`` 1),
even when it holds no event: an empty digest proves the window was empty.

**Coverage.** Every digest covers the events of its window whose ``ingested_at`` (set by PostgreSQL to the
inserting transaction's start) lies in ``[ingested_from, ingested_to)``; ``ingested_to`` is the seal's *cutoff*.
The cutoff is taken, before the snapshot the seal reads with, as ``min(oldest start of any open transaction in the
database, now - AUDIT_INTEGRITY__CUTOFF_GRACE_SECONDS)``: a row stamped before it was written by a transaction that
had ended before the snapshot, so no row below the cutoff can appear later. Rows stamped after it wait for the
next seal, which makes *supplements* (``seq`` 2, 3 …) for the windows that received them — late arrivals and
transactions that committed out of order — covering ``[previous cutoff, new cutoff)``. So every event is in exactly
one digest, and an event of a sealed window that is in none while stamped below the last cutoff was inserted
behind the chain's back.

**Digests.** Leaves are 64-byte records ``event_time µs | event_id | ingested_at µs | content_hash``, hashed and
combined as in RFC 6962 (:mod:`audit_db_core.merkle`). A digest's *statement* (canonical JSON of its fields,
``prev_hash`` included) is hashed into ``digest_hash`` and signed with Ed25519; ``prev_hash`` is the previous
digest's ``digest_hash``, so the digests form one chain in ``chain_seq`` order. Ed25519 rather than an HMAC: an
auditor verifies with the public key alone, and nobody who can verify can forge.

Example::

    result = db.integrity.seal()                     # digests for the windows closed since the last seal
    report = db.integrity.verify()                   # chain, signatures, every row against its digest, archives
    report.status, [p.kind for p in report.problems] # "verified", []
    proof = db.integrity.prove(event.event_time, event.event_id)
    verify_proof(proof.to_json(), public_key).ok     # True, with no database at all
"""

from __future__ import annotations

import base64
import binascii
import bisect
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import struct
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from psycopg import sql
from psycopg.rows import dict_row

from audit_db_core import ledger
from audit_db_core.config import AuditSettings, Period
from audit_db_core.errors import (
    ArchiveError,
    AuditError,
    AuditValidationError,
    ComplianceError,
    ConfigurationError,
    IntegrityViolation,
)
from audit_db_core.events import STORED_COLUMNS, AuditEvent, StoredAuditEvent, format_time
from audit_db_core.merkle import inclusion_path, leaf_hash, merkle_root, root_from_path
from audit_db_core.migrate import LOCK_CLASS
from audit_db_core.partitions import PartitionBounds, PartitionInfo, PartitionManager, bounds_for

logger = logging.getLogger("audit_db_core.integrity")

ALGORITHM = "ed25519"
DIGEST_VERSION = 1
PROOF_VERSION = 1
ARCHIVE_COPY_NAME = "integrity.json"
ARCHIVE_COPY_VERSION = 1
LEAF_SIZE = 64
LEAVES_PER_CHUNK = 65_536  # 4 MiB per audit_digest_leaves row
#: Advisory lock (LOCK_CLASS, LOCK_SEAL): one seal at a time keeps the chain linear (8: this feature's migration).
LOCK_SEAL = 8

PROBLEM_KINDS = (
    "modified_row",  # a row whose fields no longer match its content hash, or whose hash / ingested_at differ from the sealed leaf
    "deleted_row",  # a sealed leaf with no row
    "inserted_row",  # a row in a sealed window in no digest although stamped before the last cutoff (or in the future)
    "broken_chain",  # prev_hash does not link to the previous digest (removed, re-ordered or altered digests)
    "missing_digest",  # a gap in chain_seq or in the windows, a digest the ledger or an archive copy records
    "forged_digest",  # stored digest_hash does not match the digest's fields, or differs from a recorded copy
    "bad_signature",  # the signature does not verify with the digest's key
    "unknown_key",  # the digest names a key that is not trusted
    "digest_leaves",  # the stored leaves do not hash to the signed root, or contradict the digest
    "archive",  # an archive file does not match its manifest, or cannot be read
)

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICROSECOND = dt.timedelta(microseconds=1)
_ZERO_HASH = bytes(32)
_LEAF = struct.Struct(">q16sq32s")
_DAY_ANCHOR = dt.datetime(1970, 1, 5, tzinfo=dt.UTC)  # partitions' anchor: day windows nest in day partitions


# -- small helpers -------------------------------------------------------------------------------------------------


def _us(ts: dt.datetime) -> int:
    return (ts - _EPOCH) // _MICROSECOND


def _from_us(n: int) -> dt.datetime:
    return _EPOCH + n * _MICROSECOND


def _aware(value: Any, name: str, subject: str) -> dt.datetime:
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise AuditValidationError(subject, [(name, "is not an ISO 8601 timestamp")]) from None
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        value = dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)
    if not isinstance(value, dt.datetime):
        raise AuditValidationError(subject, [(name, f"must be a datetime, not {type(value).__name__}")])
    if value.tzinfo is None or value.utcoffset() is None:
        raise AuditValidationError(subject, [(name, "must be timezone-aware (e.g. 2026-11-01T00:00:00Z)")])
    return value.astimezone(dt.UTC)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.strip(), validate=True)


# -- keys ----------------------------------------------------------------------------------------------------------


def generate_key_pair() -> tuple[str, str]:
    """A new Ed25519 key pair as ``(private key, public key)``, each base64 of the 32 raw bytes: the private one for
    ``AUDIT_INTEGRITY__SIGNING_KEY`` (keep it in a secret store), the public one for auditors and
    ``AUDIT_INTEGRITY__PUBLIC_KEYS``.

    >>> private, public = generate_key_pair()
    >>> len(base64.b64decode(private)), len(base64.b64decode(public))
    (32, 32)
    """
    key = Ed25519PrivateKey.generate()
    raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    return _b64(raw), public_key_text(key.public_key())


def public_key_text(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """The base64 of a public key's 32 raw bytes (of the private key's public half)."""
    if isinstance(key, Ed25519PrivateKey):
        key = key.public_key()
    return _b64(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


def key_id_of(key: Ed25519PublicKey | Ed25519PrivateKey | str) -> str:
    """``ed25519:<first 16 hex digits of SHA-256 of the raw public key>``: names the key in each digest, so keys
    can rotate and a verifier picks the right one."""
    if isinstance(key, str):
        raw = _unb64(key)
    else:
        raw = _unb64(public_key_text(key))
    return f"{ALGORITHM}:{hashlib.sha256(raw).hexdigest()[:16]}"


def load_signing_key(text: str) -> Ed25519PrivateKey:
    """An Ed25519 private key from base64 of its 32 raw bytes or from a PKCS#8 PEM; ConfigurationError otherwise
    (naming ``AUDIT_INTEGRITY__SIGNING_KEY``, never the value)."""
    try:
        if text.strip().startswith("-----BEGIN"):
            key = serialization.load_pem_private_key(text.strip().encode(), password=None)
            if not isinstance(key, Ed25519PrivateKey):
                raise ValueError("not an Ed25519 key")
            return key
        return Ed25519PrivateKey.from_private_bytes(_unb64(text))
    except (ValueError, TypeError, binascii.Error):
        raise ConfigurationError(
            "settings", [("AUDIT_INTEGRITY__SIGNING_KEY", "is not a usable Ed25519 private key")]
        ) from None


def load_public_key(text: str, *, name: str = "AUDIT_INTEGRITY__PUBLIC_KEYS") -> Ed25519PublicKey:
    """An Ed25519 public key from base64 of its 32 raw bytes; AuditValidationError naming ``name`` otherwise."""
    try:
        return Ed25519PublicKey.from_public_bytes(_unb64(text))
    except (ValueError, TypeError, binascii.Error, AttributeError):
        raise AuditValidationError("public key", [(name, "is not a base64-encoded 32-byte Ed25519 public key")]) from None


def _trusted(keys: Iterable[Ed25519PublicKey | str], name: str) -> dict[str, Ed25519PublicKey]:
    out: dict[str, Ed25519PublicKey] = {}
    for key in keys:
        pub = load_public_key(key, name=name) if isinstance(key, str) else key
        if not isinstance(pub, Ed25519PublicKey):
            raise AuditValidationError("public key", [(name, f"expected base64 text, not {type(key).__name__}")])
        out[key_id_of(pub)] = pub
    return out


# -- leaves and digests --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Leaf:
    """What a digest seals of one event: its key, when it was ingested, and its content hash."""

    event_time: dt.datetime
    event_id: uuid.UUID
    ingested_at: dt.datetime
    content_hash: bytes

    @property
    def key(self) -> tuple[dt.datetime, uuid.UUID]:
        return (self.event_time, self.event_id)

    def record(self) -> bytes:
        """The 64-byte leaf record (the Merkle leaf's data)."""
        return _LEAF.pack(_us(self.event_time), self.event_id.bytes, _us(self.ingested_at), self.content_hash)

    def hash(self) -> bytes:
        return leaf_hash(self.record())

    @classmethod
    def from_record(cls, record: bytes) -> Leaf:
        t, eid, ing, h = _LEAF.unpack(record)
        return cls(_from_us(t), uuid.UUID(bytes=eid), _from_us(ing), h)

    def to_dict(self) -> dict[str, Any]:
        return {"event_time": format_time(self.event_time), "event_id": str(self.event_id),
                "ingested_at": format_time(self.ingested_at), "content_hash": self.content_hash.hex()}


def _leaves_from_bytes(data: bytes) -> list[Leaf]:
    return [Leaf.from_record(data[i:i + LEAF_SIZE]) for i in range(0, len(data), LEAF_SIZE)]


_DIGEST_FIELDS = (
    "chain_seq", "window_start", "window_end", "seq", "ingested_from", "ingested_to", "event_count", "merkle_root",
    "prev_hash", "digest_hash", "algorithm", "key_id", "signature", "created_at",
)


@dataclass(frozen=True)
class Digest:
    """One signed link of the chain: the Merkle root of a window's events ingested in ``[ingested_from,
    ingested_to)`` (``ingested_from`` is None for a window's first digest)."""

    chain_seq: int
    window_start: dt.datetime
    window_end: dt.datetime
    seq: int
    ingested_from: dt.datetime | None
    ingested_to: dt.datetime
    event_count: int
    merkle_root: bytes
    prev_hash: bytes
    algorithm: str
    key_id: str
    created_at: dt.datetime
    digest_hash: bytes = b""
    signature: bytes = b""

    def statement(self) -> bytes:
        """The signed bytes: canonical JSON (sorted keys, compact, UTF-8) of every field but the hash and the
        signature, with a type tag so that no other signed document can pass for a digest."""
        body = {
            "type": "audit_db_core.digest",
            "version": DIGEST_VERSION,
            "chain_seq": self.chain_seq,
            "window_start": format_time(self.window_start),
            "window_end": format_time(self.window_end),
            "seq": self.seq,
            "ingested_from": format_time(self.ingested_from) if self.ingested_from is not None else None,
            "ingested_to": format_time(self.ingested_to),
            "event_count": self.event_count,
            "merkle_root": self.merkle_root.hex(),
            "prev_hash": self.prev_hash.hex(),
            "algorithm": self.algorithm,
            "key_id": self.key_id,
            "created_at": format_time(self.created_at),
        }
        return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

    def computed_hash(self) -> bytes:
        """SHA-256 of :meth:`statement`: what ``digest_hash`` must be, and what the next digest links to."""
        return hashlib.sha256(self.statement()).digest()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: times as UTC strings, hashes in hex, the signature in base64."""
        out = json.loads(self.statement())
        out.pop("type")
        out.pop("version")
        out["digest_hash"] = self.digest_hash.hex()
        out["signature"] = _b64(self.signature)
        return out

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> Digest:
        """Parse :meth:`to_dict` strictly; ValueError names the first bad field."""
        if not isinstance(obj, Mapping):
            raise ValueError("digest: must be a JSON object")
        missing = [f for f in _DIGEST_FIELDS if f not in obj]
        if missing:
            raise ValueError(f"digest.{missing[0]}: is missing")

        def integer(name: str, minimum: int) -> int:
            v = obj[name]
            if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
                raise ValueError(f"digest.{name}: must be an integer >= {minimum}")
            return v

        def when(name: str, nullable: bool = False) -> dt.datetime | None:
            v = obj[name]
            if v is None and nullable:
                return None
            if not isinstance(v, str):
                raise ValueError(f"digest.{name}: must be a UTC timestamp")
            try:
                parsed = dt.datetime.fromisoformat(v.replace("Z", "+00:00"))
            except ValueError:
                raise ValueError(f"digest.{name}: is not an ISO 8601 timestamp") from None
            if parsed.tzinfo is None:
                raise ValueError(f"digest.{name}: must carry a time zone")
            return parsed.astimezone(dt.UTC)

        def hex32(name: str) -> bytes:
            v = obj[name]
            try:
                raw = bytes.fromhex(v) if isinstance(v, str) else b""
            except ValueError:
                raw = b""
            if len(raw) != 32:
                raise ValueError(f"digest.{name}: must be 64 hex digits")
            return raw

        def text(name: str) -> str:
            v = obj[name]
            if not isinstance(v, str) or not v:
                raise ValueError(f"digest.{name}: must be a non-empty string")
            return v

        try:
            signature = _unb64(obj["signature"]) if isinstance(obj["signature"], str) else None
        except (binascii.Error, ValueError):
            signature = None
        if signature is None:
            raise ValueError("digest.signature: must be base64")
        return cls(
            chain_seq=integer("chain_seq", 1), window_start=when("window_start"),  # type: ignore[arg-type]
            window_end=when("window_end"), seq=integer("seq", 1),  # type: ignore[arg-type]
            ingested_from=when("ingested_from", nullable=True), ingested_to=when("ingested_to"),  # type: ignore[arg-type]
            event_count=integer("event_count", 0), merkle_root=hex32("merkle_root"), prev_hash=hex32("prev_hash"),
            algorithm=text("algorithm"), key_id=text("key_id"), created_at=when("created_at"),  # type: ignore[arg-type]
            digest_hash=hex32("digest_hash"), signature=signature,
        )

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Digest:
        def utc(v: Any) -> Any:
            return v.astimezone(dt.UTC) if isinstance(v, dt.datetime) else v

        return cls(**{k: (bytes(row[k]) if isinstance(row[k], memoryview) else utc(row[k])) for k in _DIGEST_FIELDS})

    @property
    def window(self) -> tuple[dt.datetime, dt.datetime]:
        return (self.window_start, self.window_end)

    def label(self) -> str:
        return f"digest #{self.chain_seq} ({format_time(self.window_start)[:10]} seq {self.seq})"


# -- problems and reports ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IntegrityProblem:
    """One thing verification found wrong, located as precisely as the evidence allows. ``detail`` never holds an
    event's field values (they may be PHI): keys, hashes and counts only."""

    kind: str  # one of PROBLEM_KINDS
    detail: str
    window_start: dt.datetime | None = None
    event_time: dt.datetime | None = None
    event_id: str | None = None
    chain_seq: int | None = None
    source: str | None = None  # partition table, archive file or copy, "audit_digests", "lifecycle ledger"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "detail": self.detail,
            "window_start": format_time(self.window_start) if self.window_start else None,
            "event_time": format_time(self.event_time) if self.event_time else None,
            "event_id": self.event_id,
            "chain_seq": self.chain_seq,
            "source": self.source,
        }

    def __str__(self) -> str:
        where = [f"#{self.chain_seq}" if self.chain_seq else "",
                 format_time(self.window_start)[:10] if self.window_start else "",
                 f"event {format_time(self.event_time)} {self.event_id}" if self.event_id else "",
                 f"in {self.source}" if self.source else ""]
        return f"{self.kind}: {self.detail} [{' '.join(w for w in where if w)}]"


@dataclass
class VerificationReport:
    """The outcome of :meth:`IntegrityManager.verify`.

    ``status``: ``verified`` (every sealed window in the range checked and nothing wrong), ``failed`` (``problems``
    says what and where) or ``incomplete`` (nothing wrong found, but part of the range could not be checked: not
    sealed yet, or its archive unreachable — ``unchecked`` says which). ``ok`` is true only for ``verified``.
    """

    status: str
    since: dt.datetime | None
    until: dt.datetime | None
    problems: list[IntegrityProblem] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)
    digests_checked: int = 0
    windows_checked: int = 0
    events_checked: int = 0
    pending_events: int = 0  # ingested after the last seal's cutoff: covered by the next seal
    expired_windows: int = 0  # partition purged and its archive deleted under retention: rows no longer exist
    head_chain_seq: int | None = None
    head_digest_hash: str | None = None
    head_cutoff: dt.datetime | None = None
    duration_ms: float = 0.0
    rows_checked: bool = True  # False: verify(rows=False), the chain alone

    @property
    def ok(self) -> bool:
        return self.status == "verified"

    def of(self, kind: str) -> list[IntegrityProblem]:
        return [p for p in self.problems if p.kind == kind]

    def summary(self) -> str:
        rng = (f"{format_time(self.since)[:10]} .. {format_time(self.until)[:10]}" if self.since and self.until
               else "nothing sealed")
        text = (f"{self.status}: {rng}; {self.digests_checked} digests, {self.windows_checked} windows, "
                f"{self.events_checked} events checked")
        if not self.rows_checked:
            text += " (the chain only: rows were not read)"
        if self.pending_events:
            text += f"; {self.pending_events} events ingested after the last seal (covered by the next one)"
        if self.problems:
            text += f"; {len(self.problems)} problem(s)"
        if self.unchecked:
            text += "; not checked: " + "; ".join(self.unchecked)
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "ok": self.ok,
            "since": format_time(self.since) if self.since else None,
            "until": format_time(self.until) if self.until else None,
            "problems": [p.to_dict() for p in self.problems],
            "unchecked": list(self.unchecked),
            "digests_checked": self.digests_checked,
            "windows_checked": self.windows_checked,
            "events_checked": self.events_checked,
            "pending_events": self.pending_events,
            "expired_windows": self.expired_windows,
            "rows_checked": self.rows_checked,
            "head": {"chain_seq": self.head_chain_seq, "digest_hash": self.head_digest_hash,
                     "cutoff": format_time(self.head_cutoff) if self.head_cutoff else None},
            "duration_ms": self.duration_ms,
        }


@dataclass(frozen=True)
class SealedDigest:
    chain_seq: int
    window_start: dt.datetime
    window_end: dt.datetime
    seq: int
    event_count: int
    digest_hash: str

    def to_dict(self) -> dict[str, Any]:
        return {"chain_seq": self.chain_seq, "window_start": format_time(self.window_start),
                "window_end": format_time(self.window_end), "seq": self.seq, "event_count": self.event_count,
                "digest_hash": self.digest_hash}


@dataclass(frozen=True)
class SealResult:
    """The outcome of :meth:`IntegrityManager.seal`. ``status``: ``sealed`` (``digests`` were added),
    ``nothing_to_seal``, ``held_back`` (an open or prepared transaction keeps the cutoff from moving; ``reason``
    names it) or ``busy`` (another seal is running)."""

    status: str
    digests: tuple[SealedDigest, ...]
    cutoff: dt.datetime | None
    head_chain_seq: int | None
    head_digest_hash: str | None
    reason: str
    duration_ms: float

    @property
    def events(self) -> int:
        return sum(d.event_count for d in self.digests)

    @property
    def supplements(self) -> int:
        return sum(1 for d in self.digests if d.seq > 1)

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "digests": [d.to_dict() for d in self.digests], "events": self.events,
                "supplements": self.supplements, "cutoff": format_time(self.cutoff) if self.cutoff else None,
                "head": {"chain_seq": self.head_chain_seq, "digest_hash": self.head_digest_hash},
                "reason": self.reason, "duration_ms": self.duration_ms}


# -- inclusion proofs ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InclusionProof:
    """Evidence that one event (its key, ingestion time and content hash) is a leaf of a signed digest: the leaf,
    its index, the tree size, the audit path and the digest. Checked by :func:`verify_proof` with a public key."""

    leaf: Leaf
    leaf_index: int
    tree_size: int
    path: tuple[bytes, ...]
    digest: Digest

    def to_dict(self) -> dict[str, Any]:
        return {"type": "audit_db_core.inclusion_proof", "version": PROOF_VERSION, "leaf": self.leaf.to_dict(),
                "leaf_index": self.leaf_index, "tree_size": self.tree_size, "path": [p.hex() for p in self.path],
                "digest": self.digest.to_dict()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, indent=2)

    @classmethod
    def from_dict(cls, obj: Any) -> InclusionProof:
        """Parse strictly; ValueError names the first bad field."""
        if isinstance(obj, (str, bytes)):
            try:
                obj = json.loads(obj)
            except (ValueError, UnicodeDecodeError) as exc:
                raise ValueError(f"proof: is not valid JSON ({exc})") from None
        if not isinstance(obj, Mapping):
            raise ValueError("proof: must be a JSON object")
        if obj.get("type") != "audit_db_core.inclusion_proof":
            raise ValueError("proof.type: is not audit_db_core.inclusion_proof")
        if obj.get("version") != PROOF_VERSION:
            raise ValueError(f"proof.version: must be {PROOF_VERSION}")
        for name in ("leaf", "leaf_index", "tree_size", "path", "digest"):
            if name not in obj:
                raise ValueError(f"proof.{name}: is missing")
        raw_leaf = obj["leaf"]
        if not isinstance(raw_leaf, Mapping) or set(raw_leaf) != {"event_time", "event_id", "ingested_at",
                                                                   "content_hash"}:
            raise ValueError("proof.leaf: must have exactly event_time, event_id, ingested_at, content_hash")
        try:
            leaf = Leaf(
                _aware(raw_leaf["event_time"], "event_time", "proof"),
                uuid.UUID(str(raw_leaf["event_id"])),
                _aware(raw_leaf["ingested_at"], "ingested_at", "proof"),
                bytes.fromhex(str(raw_leaf["content_hash"])),
            )
        except (ValueError, AuditValidationError) as exc:
            raise ValueError(f"proof.leaf: {exc}") from None
        if len(leaf.content_hash) != 32:
            raise ValueError("proof.leaf.content_hash: must be 64 hex digits")
        for name in ("leaf_index", "tree_size"):
            if isinstance(obj[name], bool) or not isinstance(obj[name], int) or obj[name] < 0:
                raise ValueError(f"proof.{name}: must be an integer >= 0")
        if not isinstance(obj["path"], list):
            raise ValueError("proof.path: must be a list of hex hashes")
        path = []
        for i, item in enumerate(obj["path"]):
            try:
                raw = bytes.fromhex(item) if isinstance(item, str) else b""
            except ValueError:
                raw = b""
            if len(raw) != 32:
                raise ValueError(f"proof.path[{i}]: must be 64 hex digits")
            path.append(raw)
        return cls(leaf, obj["leaf_index"], obj["tree_size"], tuple(path), Digest.from_dict(obj["digest"]))


@dataclass(frozen=True)
class ProofCheck:
    """The outcome of :func:`verify_proof`: ``ok`` when ``problems`` is empty."""

    ok: bool
    problems: tuple[str, ...]
    key_id: str | None = None
    digest_hash: str | None = None


def verify_proof(
    proof: InclusionProof | Mapping[str, Any] | str | bytes,
    public_keys: str | Ed25519PublicKey | Iterable[str | Ed25519PublicKey],
    *,
    event: AuditEvent | None = None,
    digest_hash: str | None = None,
) -> ProofCheck:
    """Check an inclusion proof with nothing but public keys: the leaf hashes up the audit path to the digest's
    Merkle root (RFC 9162's algorithm: index and size checked, path length exact), the digest's fields hash to its
    ``digest_hash``, and its signature verifies with the trusted key its ``key_id`` names. With ``event``, the event
    itself must be the leaf (same key, same content hash); with ``digest_hash`` (a published, anchored digest), the
    digest must be that one. Never raises for a bad proof — the problems say what is wrong.

    Example::

        check = verify_proof(proof_json, "MCowBQYDK2VwAyEA…")
        check.ok, check.problems
    """
    keys = [public_keys] if isinstance(public_keys, (str, Ed25519PublicKey)) else list(public_keys)
    trusted = _trusted(keys, "public_keys")
    if not trusted:
        raise AuditValidationError("public key", [("public_keys", "at least one public key is needed")])
    try:
        p = proof if isinstance(proof, InclusionProof) else InclusionProof.from_dict(proof)
    except ValueError as exc:
        return ProofCheck(False, (f"malformed proof: {exc}",))
    problems: list[str] = []
    d = p.digest
    if not d.window_start <= p.leaf.event_time < d.window_end:
        problems.append("the event's time lies outside the digest's window")
    if d.ingested_from is not None and p.leaf.ingested_at < d.ingested_from or p.leaf.ingested_at >= d.ingested_to:
        problems.append("the event's ingested_at lies outside the digest's ingestion range")
    if p.tree_size != d.event_count:
        problems.append(f"tree_size {p.tree_size} differs from the digest's event_count {d.event_count}")
    root = root_from_path(p.leaf.hash(), p.leaf_index, p.tree_size, p.path)
    if root is None:
        problems.append(f"the audit path ({len(p.path)} hashes) does not fit leaf {p.leaf_index} of a tree of "
                        f"{p.tree_size} leaves")
    elif root != d.merkle_root:
        problems.append("the audit path leads to another root than the digest's merkle_root")
    problems.extend(_digest_problems(d, trusted))
    if digest_hash is not None and d.digest_hash.hex() != digest_hash.strip().lower():
        problems.append("the digest is not the expected (anchored) one")
    if event is not None:
        if (event.event_time, event.event_id) != (p.leaf.event_time, p.leaf.event_id):
            problems.append("the proof is for another event (time or id differ)")
        elif event.content_hash != p.leaf.content_hash:
            problems.append("the event's content does not match the sealed content hash")
    return ProofCheck(not problems, tuple(problems), d.key_id, d.digest_hash.hex())


def _digest_problems(d: Digest, trusted: Mapping[str, Ed25519PublicKey]) -> list[str]:
    out = []
    if d.computed_hash() != d.digest_hash:
        out.append("the digest's fields do not hash to its digest_hash (altered digest)")
    if d.algorithm != ALGORITHM:
        out.append(f"unsupported signature algorithm {d.algorithm!r}")
    key = trusted.get(d.key_id)
    if key is None:
        out.append(f"signed with key {d.key_id}, which is not trusted")
    else:
        try:
            key.verify(d.signature, d.statement())
        except InvalidSignature:
            out.append(f"the signature does not verify with key {d.key_id}")
    return out


# -- chain checks (database chain and archive copies alike) --------------------------------------------------------


def check_chain(
    digests: Sequence[Digest], trusted: Mapping[str, Ed25519PublicKey], *, source: str = "audit_digests",
    segment: bool = False,
) -> list[IntegrityProblem]:
    """Problems of a run of digests in ``chain_seq`` order: each digest's hash and signature, the links between
    consecutive digests, gaps in ``chain_seq``, non-decreasing cutoffs, and — for a whole chain (``segment`` false)
    — the windows: ``seq`` 1, 2, … per window and no window missing between the first and the last."""
    problems: list[IntegrityProblem] = []
    by_hash = {d.digest_hash: d for d in digests}
    prev: Digest | None = None
    for d in digests:
        where = {"chain_seq": d.chain_seq, "window_start": d.window_start, "source": source}
        if d.computed_hash() != d.digest_hash:
            problems.append(IntegrityProblem("forged_digest", f"{d.label()}: its fields do not hash to its "
                                             "digest_hash (the digest was altered)", **where))
        if d.algorithm != ALGORITHM or d.key_id not in trusted:
            problems.append(IntegrityProblem("unknown_key", f"{d.label()}: signed with {d.algorithm} key {d.key_id}, "
                                             "which is not trusted", **where))
        else:
            try:
                trusted[d.key_id].verify(d.signature, d.statement())
            except InvalidSignature:
                problems.append(IntegrityProblem("bad_signature", f"{d.label()}: the signature does not verify "
                                                 f"with key {d.key_id}", **where))
        if prev is None:
            if d.chain_seq == 1 and d.prev_hash != _ZERO_HASH:
                problems.append(IntegrityProblem("broken_chain", f"{d.label()}: the first digest must link to no "
                                                 "predecessor", **where))
            elif d.chain_seq != 1 and not segment:
                problems.append(IntegrityProblem("missing_digest", f"the chain starts at #{d.chain_seq}: digests "
                                                 f"#1..#{d.chain_seq - 1} are missing", **where))
        else:
            if d.chain_seq != prev.chain_seq + 1:
                problems.append(IntegrityProblem(
                    "missing_digest", f"digests #{prev.chain_seq + 1}..#{d.chain_seq - 1} are missing (the chain "
                    f"jumps from #{prev.chain_seq} to #{d.chain_seq})", **where))
            elif d.prev_hash != prev.digest_hash:
                other = by_hash.get(d.prev_hash)
                if other is not None:
                    detail = (f"{d.label()} links to #{other.chain_seq}, not to its predecessor #{prev.chain_seq}: "
                              "the chain was re-ordered")
                else:
                    detail = (f"{d.label()} does not link to its predecessor #{prev.chain_seq} (a digest was "
                              "replaced or altered)")
                problems.append(IntegrityProblem("broken_chain", detail, **where))
            if d.ingested_to < prev.ingested_to:
                problems.append(IntegrityProblem("broken_chain", f"{d.label()}: its cutoff is earlier than the "
                                                 f"cutoff of #{prev.chain_seq}", **where))
        prev = d
    if not segment:
        problems.extend(_window_problems(digests, source))
    return problems


def _window_problems(digests: Sequence[Digest], source: str) -> list[IntegrityProblem]:
    problems = []
    windows: dict[tuple[dt.datetime, dt.datetime], list[Digest]] = {}
    for d in digests:
        windows.setdefault(d.window, []).append(d)
    previous_end: dt.datetime | None = None
    for (start, end), ds in sorted(windows.items()):
        seqs = sorted(d.seq for d in ds)
        if seqs != list(range(1, len(seqs) + 1)):
            problems.append(IntegrityProblem("missing_digest", f"window {format_time(start)[:16]}: digests have "
                                             f"seq {seqs}, expected 1..{len(seqs)}", window_start=start,
                                             source=source))
        if previous_end is not None and start > previous_end:
            problems.append(IntegrityProblem("missing_digest", f"no digest covers [{format_time(previous_end)}, "
                                             f"{format_time(start)})", window_start=previous_end, source=source))
        elif previous_end is not None and start < previous_end:
            problems.append(IntegrityProblem("forged_digest", f"window [{format_time(start)}, {format_time(end)}) "
                                             "overlaps the previous window", window_start=start, source=source))
        previous_end = end if previous_end is None else max(previous_end, end)
    return problems


def _leaf_problems(d: Digest, leaves: list[Leaf], source: str) -> list[IntegrityProblem]:
    """The stored leaves against the signed digest: count, order, window, ingestion range, and the root."""
    where = {"chain_seq": d.chain_seq, "window_start": d.window_start, "source": source}
    problems = []
    if len(leaves) != d.event_count:
        problems.append(IntegrityProblem("digest_leaves", f"{d.label()}: {len(leaves)} leaves stored, the digest "
                                         f"counts {d.event_count}", **where))
    keys = [leaf.key for leaf in leaves]
    if any(a >= b for a, b in zip(keys, keys[1:])):
        problems.append(IntegrityProblem("digest_leaves", f"{d.label()}: leaves are not strictly ordered by "
                                         "(event_time, event_id) (duplicated or shuffled)", **where))
    outside = [leaf for leaf in leaves if not d.window_start <= leaf.event_time < d.window_end
               or leaf.ingested_at >= d.ingested_to
               or (d.ingested_from is not None and leaf.ingested_at < d.ingested_from)]
    if outside:
        problems.append(IntegrityProblem("digest_leaves", f"{d.label()}: {len(outside)} leaves lie outside its window "
                                         "or ingestion range", **where))
    if merkle_root([leaf.hash() for leaf in leaves]) != d.merkle_root:
        problems.append(IntegrityProblem("digest_leaves", f"{d.label()}: the stored leaves do not hash to the signed "
                                         "merkle_root", **where))
    return problems


# -- the rows of a window ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Row:
    event_time: dt.datetime
    event_id: uuid.UUID
    ingested_at: dt.datetime
    content_hash: bytes
    source: str
    recomputed: bytes | None = None  # None: not recomputed (sealing), or could not be (see error)
    error: str | None = None

    @property
    def key(self) -> tuple[dt.datetime, uuid.UUID]:
        return (self.event_time, self.event_id)


_KEY_COLUMNS = ("event_time", "event_id", "ingested_at", "content_hash")


def _recompute(row: dict[str, Any]) -> tuple[bytes | None, str | None]:
    """The content hash recomputed from a stored row's fields (details from an archive are JSON text)."""
    try:
        values = dict(row)
        if isinstance(values.get("details"), str):
            values["details"] = json.loads(values["details"])
        return StoredAuditEvent.from_row(values).content_hash, None
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        return None, f"its fields cannot be hashed ({type(exc).__name__})"


class _Sources:
    """Where the rows of a window live: ``audit_log`` (attached partitions and DEFAULT), the table of a detached
    partition, or the archive of a purged one."""

    def __init__(self, pm: PartitionManager, conn: psycopg.Connection[Any] | None = None) -> None:
        self._pm = pm
        if conn is not None:  # the registry as the caller's snapshot sees it
            from audit_db_core.partitions import _INFO_SELECT, _info

            with conn.cursor(row_factory=dict_row) as cur:
                found = [_info(r) for r in cur.execute(_INFO_SELECT + sql.SQL(" ORDER BY range_start"))]
        else:
            found = pm.list_partitions()
        self.parts = sorted(found, key=lambda p: p.start)
        self._starts = [p.start for p in self.parts]
        self._store: Any = None
        self._store_error: str | None = None
        self._manifests: dict[str, Any] = {}

    def partition_of(self, ts: dt.datetime) -> PartitionInfo | None:
        i = bisect.bisect_right(self._starts, ts) - 1
        if i >= 0 and self.parts[i].start <= ts < self.parts[i].end:
            return self.parts[i]
        return None

    def store(self) -> Any:
        if self._store is None and self._store_error is None:
            try:
                self._store = self._pm.archive_store()
            except ConfigurationError as exc:
                self._store_error = exc.message
        return self._store

    @property
    def store_error(self) -> str | None:
        return self._store_error

    def detached_tables(self, conn: psycopg.Connection[Any]) -> list[PartitionInfo]:
        return [p for p in self.parts if p.state == "archived" and p.detached and _table_exists(conn, p.name)]

    def rows(
        self, conn: psycopg.Connection[Any], start: dt.datetime, end: dt.datetime, *, full: bool,
        ingested_from: dt.datetime | None = None, ingested_to: dt.datetime | None = None,
    ) -> tuple[list[_Row], str | None, bool]:
        """``(rows in (event_time, event_id) order, why they could not all be read, expired)``."""
        part = self.partition_of(start)
        tables = ["audit_log"]
        archive = None
        expired = False
        if part is not None and part.state == "archived" and part.detached and _table_exists(conn, part.name):
            tables.append(part.name)
        elif part is not None and part.state == "purged":
            if part.archive_deleted_at is not None:
                expired = True
            else:
                archive = part
        out: list[_Row] = []
        for table in tables:
            out.extend(_db_rows(conn, table, start, end, full, ingested_from, ingested_to))
        error = None
        if archive is not None:
            try:
                out.extend(self._archive_rows(archive, start, end, full, ingested_from, ingested_to))
            except AuditError as exc:
                error = exc.message
        out.sort(key=lambda r: r.key)
        return out, error, expired

    def _archive_rows(
        self, part: PartitionInfo, start: dt.datetime, end: dt.datetime, full: bool,
        ingested_from: dt.datetime | None, ingested_to: dt.datetime | None,
    ) -> list[_Row]:
        store = self.store()
        if store is None:
            raise ConfigurationError("settings", [("AUDIT_ARCHIVE__ROOT_URI", "is not set: rows of purged partitions "
                                                   "live in their archives")])
        if part.name not in self._manifests:
            self._manifests[part.name] = store.read_manifest(part.name)
        manifest = self._manifests[part.name]
        if manifest is None:
            raise ArchiveError(f"no archive manifest at {store.manifest_uri(part.name)}", operation="integrity")
        out = []
        for file_name, row in store.read_rows(manifest, since=start, until=end):
            ingested = row["ingested_at"]
            if (ingested_from is not None and ingested < ingested_from) or (
                    ingested_to is not None and ingested >= ingested_to):
                continue
            recomputed, error = _recompute(row) if full else (None, None)
            out.append(_Row(row["event_time"], uuid.UUID(str(row["event_id"])), ingested, bytes(row["content_hash"]),
                            f"{part.name}/{file_name}", recomputed, error))
        return out


def _table_exists(conn: psycopg.Connection[Any], name: str) -> bool:
    return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone() == (True,)


def _db_rows(
    conn: psycopg.Connection[Any], table: str, start: dt.datetime, end: dt.datetime, full: bool,
    ingested_from: dt.datetime | None, ingested_to: dt.datetime | None,
) -> list[_Row]:
    columns = STORED_COLUMNS if full else _KEY_COLUMNS
    conditions = [sql.SQL("event_time >= %(start)s"), sql.SQL("event_time < %(end)s")]
    if ingested_from is not None:
        conditions.append(sql.SQL("ingested_at >= %(from)s"))
    if ingested_to is not None:
        conditions.append(sql.SQL("ingested_at < %(to)s"))
    stmt = sql.SQL("SELECT {}, tableoid::regclass::text AS audit_source FROM {} WHERE {} ORDER BY event_time, event_id"
                   ).format(sql.SQL(", ").join(sql.Identifier(c) for c in columns), sql.Identifier(table),
                            sql.SQL(" AND ").join(conditions))
    out = []
    with conn.cursor(row_factory=dict_row) as cur:
        for row in cur.execute(stmt, {"start": start, "end": end, "from": ingested_from, "to": ingested_to}):
            recomputed, error = _recompute(row) if full else (None, None)
            out.append(_Row(row["event_time"], row["event_id"], row["ingested_at"], bytes(row["content_hash"]),
                            row["audit_source"], recomputed, error))
    return out


# -- the manager ---------------------------------------------------------------------------------------------------


_DIGEST_SELECT = sql.SQL("SELECT {} FROM audit_digests").format(
    sql.SQL(", ").join(sql.Identifier(c) for c in _DIGEST_FIELDS))


def _load_digests(conn: psycopg.Connection[Any], where: sql.Composable = sql.SQL(""),
                  params: Any = None) -> list[Digest]:
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(_DIGEST_SELECT + where + sql.SQL(" ORDER BY chain_seq"), params).fetchall()
    return [Digest.from_row(r) for r in rows]


def _load_leaves(conn: psycopg.Connection[Any], chain_seqs: Sequence[int]) -> dict[int, list[Leaf]]:
    out: dict[int, bytearray] = {s: bytearray() for s in chain_seqs}
    if chain_seqs:
        for seq, data in conn.execute(
            "SELECT chain_seq, leaves FROM audit_digest_leaves WHERE chain_seq = ANY(%s) ORDER BY chain_seq, chunk",
            (list(chain_seqs),),
        ):
            out[seq] += bytes(data)
    return {s: _leaves_from_bytes(bytes(b)) for s, b in out.items()}


class IntegrityManager:
    """Seals digests, verifies them, proves inclusion; bound to one database (``db.integrity``)."""

    def __init__(self, connections: Any, settings: AuditSettings) -> None:
        self._connections = connections
        self.settings = settings
        self._pm = PartitionManager(connections, settings)

    # -- configuration ---------------------------------------------------------------------------------------

    @property
    def window(self) -> Period:
        """The window length, checked to nest in partitions (a window never spans two partitions)."""
        window = self.settings.integrity.window
        interval = self.settings.partitions.interval
        nests = window.days == 1 if interval.months else interval.days % window.days == 0
        if not nests:
            raise ConfigurationError("settings", [(
                "AUDIT_INTEGRITY__WINDOW",
                f"{window} does not divide the partition interval ({interval}): a window must lie inside one "
                "partition (use 1 day, or a divisor of a day-based interval)",
            )])
        return window

    def window_of(self, ts: dt.datetime) -> PartitionBounds:
        """The window holding ``ts``."""
        return bounds_for(ts, self.window)

    def _signing_key(self) -> Ed25519PrivateKey:
        secret = self.settings.integrity.signing_key
        if secret is None:
            raise ConfigurationError("settings", [(
                "AUDIT_INTEGRITY__SIGNING_KEY", "is not set: sealing signs digests (audit-platform integrity keygen "
                "makes a key pair)")])
        return load_signing_key(secret.get_secret_value())

    def trusted_keys(self) -> dict[str, Ed25519PublicKey]:
        """``key_id -> public key`` for verification: ``AUDIT_INTEGRITY__PUBLIC_KEYS`` and the signing key's own."""
        keys: list[Ed25519PublicKey | str] = list(self.settings.integrity.public_keys)
        if self.settings.integrity.signing_key is not None:
            keys.append(self._signing_key().public_key())
        trusted = _trusted(keys, "AUDIT_INTEGRITY__PUBLIC_KEYS")
        if not trusted:
            raise ConfigurationError("settings", [(
                "AUDIT_INTEGRITY__PUBLIC_KEYS", "is not set (nor AUDIT_INTEGRITY__SIGNING_KEY): verification needs "
                "the public keys that signed the digests")])
        return trusted

    def public_key(self) -> str | None:
        """The base64 public key of the configured signing key (None without one): what auditors need."""
        if self.settings.integrity.signing_key is None:
            return None
        return public_key_text(self._signing_key())

    def lookback_start(self, now: dt.datetime | None = None) -> dt.datetime:
        """Where a routine verification starts: ``AUDIT_INTEGRITY__VERIFY_LOOKBACK`` before ``now``, aligned to a
        window, but not before the chain's first window (a younger chain is checked whole)."""
        from audit_db_core.retention import add_period

        now = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
        start = self.window_of(add_period(now, self.settings.integrity.verify_lookback, -1)).start
        with self._connections.connection(operation="integrity_lookback") as conn:
            row = conn.execute("SELECT min(window_start) FROM audit_digests").fetchone()
        first = row[0] if row else None
        return max(start, first.astimezone(dt.UTC)) if first is not None else start

    # -- reading -----------------------------------------------------------------------------------------------

    def head(self) -> Digest | None:
        """The latest digest of the chain (publish its ``digest_hash`` to anchor the chain outside the database)."""
        with self._connections.connection(operation="integrity_head") as conn:
            found = _load_digests(conn, sql.SQL(" WHERE chain_seq = (SELECT max(chain_seq) FROM audit_digests)"))
        return found[-1] if found else None

    def digests(self, since: Any = None, until: Any = None) -> list[Digest]:
        """Digests whose window overlaps ``[since, until)`` (all by default), in chain order."""
        lo = _aware(since, "since", "integrity") if since is not None else None
        hi = _aware(until, "until", "integrity") if until is not None else None
        with self._connections.connection(operation="integrity_digests") as conn:
            return _load_digests(
                conn, sql.SQL(" WHERE (%(lo)s::timestamptz IS NULL OR window_end > %(lo)s)"
                              " AND (%(hi)s::timestamptz IS NULL OR window_start < %(hi)s)"), {"lo": lo, "hi": hi})

    # -- sealing -----------------------------------------------------------------------------------------------

    def seal(self, *, until: Any = None, run_id: str | None = None) -> SealResult:
        """Make the digests that are due: a first digest for every window closed since the last seal (an empty one
        too), and a supplement for every sealed window that received events since the last seal's cutoff.
        ``until`` seals only windows that end at or before it. One seal runs at a time (an advisory lock); a second
        one returns ``busy``. Every run is recorded in the lifecycle ledger (operation ``seal``).

        Example::

            result = db.integrity.seal()
            result.status, result.events, [d.chain_seq for d in result.digests]
        """
        started = time.perf_counter()
        key = self._signing_key()
        window = self.window
        limit = _aware(until, "until", "seal") if until is not None else None
        with self._connections.dedicated_connection(operation="seal", autocommit=True) as conn:
            locked = conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (LOCK_CLASS, LOCK_SEAL)).fetchone()
            if locked != (True,):
                return SealResult("busy", (), None, None, None, "another seal is running", _elapsed(started))
            try:
                result = self._seal(conn, key, window, limit, run_id, started)
            finally:
                if not conn.closed and not conn.broken:
                    conn.execute("SELECT pg_advisory_unlock(%s, %s)", (LOCK_CLASS, LOCK_SEAL))
        logger.info("seal: %s", result.status, extra={"audit": {"digests": len(result.digests), "events": result.events,
                                                               "reason": result.reason}})
        return result

    def _horizon(self, conn: psycopg.Connection[Any]) -> tuple[dt.datetime, dt.datetime, str]:
        """``(t0, cutoff, what holds the cutoff back)``, read before the seal's snapshot is taken."""
        row = conn.execute(
            "SELECT statement_timestamp(),"
            " min(a.xact_start),"
            " (array_agg(a.pid ORDER BY a.xact_start) FILTER (WHERE a.xact_start IS NOT NULL))[1],"
            " count(*) FILTER (WHERE a.query = '<insufficient privilege>')"
            " FROM pg_stat_activity a"
            " WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()"
            "   AND (a.backend_type IN ('client backend', 'background worker')"
            "        OR a.query = '<insufficient privilege>')"
        ).fetchone()
        assert row is not None
        t0, oldest, oldest_pid, hidden = row
        if hidden:
            # Their transactions may have stamped rows we cannot see yet; a cutoff past them could miss rows.
            raise ComplianceError(
                f"sealing must see every open transaction, and {hidden} session(s) of other roles are hidden from this "
                "role in pg_stat_activity: GRANT pg_read_all_stats to the role that seals",
                operation="seal")
        prepared = conn.execute(
            "SELECT gid, prepared FROM pg_prepared_xacts WHERE database = current_database() ORDER BY prepared LIMIT 1"
        ).fetchone()
        cutoff = t0 - dt.timedelta(seconds=self.settings.integrity.cutoff_grace_seconds)
        reason = ""
        if oldest is not None and oldest < cutoff:
            cutoff = oldest
            reason = f"a transaction open since {format_time(oldest)} (pid {oldest_pid})"
        if prepared is not None:
            # A prepared transaction's rows carry its start time, which PostgreSQL does not show: nothing is safe.
            raise _HeldBack(f"prepared transaction {prepared[0]!r} (prepared {format_time(prepared[1])}) is pending")
        return t0.astimezone(dt.UTC), cutoff.astimezone(dt.UTC), reason

    def _seal(
        self, conn: psycopg.Connection[Any], key: Ed25519PrivateKey, window: Period, limit: dt.datetime | None,
        run_id: str | None, started: float,
    ) -> SealResult:
        try:
            t0, cutoff, holder = self._horizon(conn)
        except _HeldBack as exc:
            return self._record_seal(conn, "held_back", (), None, None, str(exc), run_id, started)
        closed_until = self.window_of(t0 - dt.timedelta(seconds=self.settings.integrity.seal_delay_seconds)).start
        if limit is not None:  # the last window that ends at or before `until` ends at this boundary
            closed_until = min(closed_until, self.window_of(limit).start)
        start_floor = None
        if self.settings.integrity.start is not None:
            start_floor = self.window_of(_aware(self.settings.integrity.start, "start", "settings")).start
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        try:
            sources = _Sources(self._pm, conn)  # the first statement: it takes the snapshot every read below shares
            head = next(iter(_load_digests(
                conn, sql.SQL(" WHERE chain_seq = (SELECT max(chain_seq) FROM audit_digests)"))), None)
            if head is not None and cutoff <= head.ingested_to:
                conn.execute("ROLLBACK")
                why = holder or "the clock has not passed the last cutoff"
                return self._record_seal(conn, "held_back", (), cutoff, head, f"the cutoff cannot move past the last "
                                         f"seal's ({format_time(head.ingested_to)}): {why}", run_id, started)
            plan = self._plan(conn, sources, head, cutoff, closed_until, start_floor)
            new: list[tuple[Digest, list[Leaf]]] = []
            prev_hash = head.digest_hash if head is not None else _ZERO_HASH
            chain_seq = head.chain_seq if head is not None else 0
            key_id = key_id_of(key)
            for (w_start, w_end), seq in plan:
                ingested_from = head.ingested_to if seq > 1 and head is not None else None
                rows, error, _expired = sources.rows(conn, w_start, w_end, full=False, ingested_from=ingested_from,
                                                     ingested_to=cutoff)
                if error:
                    raise IntegrityViolation(f"cannot seal [{format_time(w_start)}, {format_time(w_end)}): {error}",
                                             operation="seal")
                if seq > 1 and not rows:
                    continue
                leaves = _unique_leaves(rows)
                chain_seq += 1
                unsigned = Digest(chain_seq, w_start, w_end, seq, ingested_from, cutoff, len(leaves),
                                  merkle_root([leaf.hash() for leaf in leaves]), prev_hash, ALGORITHM, key_id, t0)
                signed = dataclasses.replace(unsigned, digest_hash=unsigned.computed_hash(),
                                             signature=key.sign(unsigned.statement()))
                new.append((signed, leaves))
                prev_hash = signed.digest_hash
            if not new:
                conn.execute("ROLLBACK")
                return self._record_seal(conn, "nothing_to_seal", (), cutoff, head, "no window closed and no late "
                                         "event since the last seal", run_id, started)
            self._insert(conn, new)
            summaries = tuple(SealedDigest(d.chain_seq, d.window_start, d.window_end, d.seq, d.event_count,
                                           d.digest_hash.hex()) for d, _ in new)
            result = self._record_seal(conn, "sealed", summaries, cutoff, new[-1][0], holder, run_id, started)
            conn.execute("COMMIT")
            return result
        except BaseException:
            if not conn.closed and not conn.broken and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                conn.execute("ROLLBACK")
            raise

    def _plan(
        self, conn: psycopg.Connection[Any], sources: _Sources, head: Digest | None, cutoff: dt.datetime,
        closed_until: dt.datetime, start_floor: dt.datetime | None,
    ) -> list[tuple[tuple[dt.datetime, dt.datetime], int]]:
        """``[((window start, end), seq)]`` to seal, oldest window first."""
        sealed: dict[dt.datetime, tuple[dt.datetime, int]] = {
            s: (e, n) for s, e, n in conn.execute(
                "SELECT window_start, window_end, max(seq) FROM audit_digests GROUP BY 1, 2")}
        sealed = {s.astimezone(dt.UTC): (e.astimezone(dt.UTC), n) for s, (e, n) in sealed.items()}
        todo: dict[dt.datetime, tuple[dt.datetime, int]] = {}

        def add_range(begin: dt.datetime, stop: dt.datetime) -> None:
            w = self.window_of(begin)
            while w.end <= stop:
                if w.start not in sealed and (start_floor is None or w.start >= start_floor):
                    todo.setdefault(w.start, (w.end, 1))
                w = self.window_of(w.end)

        if not sealed:
            row = conn.execute(
                "SELECT min(event_time) FROM audit_log WHERE ingested_at < %s AND (%s::timestamptz IS NULL OR "
                "event_time >= %s)", (cutoff, start_floor, start_floor)).fetchone()
            if row is None or row[0] is None:
                return []
            add_range(row[0], closed_until)
        else:
            first = min(sealed)
            last_end = max(e for e, _ in sealed.values())
            add_range(last_end, closed_until)
            for w_start in self._late_windows(conn, sources, head, cutoff, closed_until):  # type: ignore[arg-type]
                if start_floor is not None and w_start < start_floor:
                    continue
                if w_start in sealed:
                    end, seq = sealed[w_start]
                    todo[w_start] = (end, seq + 1)
                elif w_start < first:
                    add_range(w_start, first)  # history arrived before the chain's first window: seal up to it
                else:
                    add_range(w_start, self.window_of(w_start).end)
        return [((s, e), n) for s, (e, n) in sorted(todo.items())]

    def _late_windows(
        self, conn: psycopg.Connection[Any], sources: _Sources, head: Digest, cutoff: dt.datetime,
        closed_until: dt.datetime,
    ) -> list[dt.datetime]:
        """Starts of the closed windows that hold events ingested in ``[head's cutoff, cutoff)``: in ``audit_log``
        and in the tables of detached partitions (the BRIN index on ingested_at keeps this cheap)."""
        step = self.window.days * 86_400
        found: set[dt.datetime] = set()
        for table in ["audit_log", *(p.name for p in sources.detached_tables(conn))]:
            stmt = sql.SQL(
                "SELECT DISTINCT floor((extract(epoch FROM event_time) - {anchor}) / {step})::bigint FROM {t}"
                " WHERE ingested_at >= %s AND ingested_at < %s AND event_time < %s"
            ).format(anchor=sql.Literal(_DAY_ANCHOR.timestamp()), step=sql.Literal(step), t=sql.Identifier(table))
            for (index,) in conn.execute(stmt, (head.ingested_to, cutoff, closed_until)):
                found.add(_DAY_ANCHOR + dt.timedelta(seconds=int(index) * step))
        return sorted(found)

    @staticmethod
    def _insert(conn: psycopg.Connection[Any], new: list[tuple[Digest, list[Leaf]]]) -> None:
        columns = sql.SQL(", ").join(sql.Identifier(c) for c in _DIGEST_FIELDS)
        placeholders = sql.SQL(", ").join(sql.Placeholder() * len(_DIGEST_FIELDS))
        with conn.cursor() as cur:
            cur.executemany(sql.SQL("INSERT INTO audit_digests ({}) VALUES ({})").format(columns, placeholders),
                            [tuple(getattr(d, c) for c in _DIGEST_FIELDS) for d, _ in new])
            chunks = []
            for d, leaves in new:
                for i in range(0, max(len(leaves), 1), LEAVES_PER_CHUNK):
                    chunk = leaves[i:i + LEAVES_PER_CHUNK]
                    if chunk:
                        chunks.append((d.chain_seq, i // LEAVES_PER_CHUNK, b"".join(leaf.record() for leaf in chunk)))
            if chunks:
                cur.executemany("INSERT INTO audit_digest_leaves (chain_seq, chunk, leaves) VALUES (%s, %s, %s)",
                                chunks)

    def _record_seal(
        self, conn: psycopg.Connection[Any], status: str, digests: tuple[SealedDigest, ...],
        cutoff: dt.datetime | None, head: Digest | None, reason: str, run_id: str | None, started: float,
    ) -> SealResult:
        result = SealResult(status, digests, cutoff, head.chain_seq if head else None,
                            head.digest_hash.hex() if head else None, reason, _elapsed(started))
        details = {
            "status": status, "digests": len(digests), "supplements": result.supplements, "reason": reason,
            "cutoff": format_time(cutoff) if cutoff else None,
            "head_chain_seq": head.chain_seq if head else None,
            "first_window": format_time(digests[0].window_start) if digests else None,
            "last_window": format_time(digests[-1].window_start) if digests else None,
        }
        # Inside the seal's transaction when it made digests (they commit together), else on its own.
        ledger.record(conn, "seal", None, "ok" if status == "sealed" else "skipped", run_id=run_id,
                      rows=result.events, checksum=result.head_digest_hash if status == "sealed" else None,
                      duration_ms=result.duration_ms, details=details)
        return result

    # -- verification ------------------------------------------------------------------------------------------

    def verify(
        self, since: Any = None, until: Any = None, *, rows: bool = True, anchors: Iterable[tuple[int, str]] = (),
        run_id: str | None = None, record: bool = True,
    ) -> VerificationReport:
        """Check the chain and, for the windows overlapping ``[since, until)`` (by default everything sealed), every
        row against its digest, plus the archives of those periods. Never raises for tampering: the report lists
        each problem with its kind and location. ``rows=False`` checks the chain, signatures and copies only.
        ``anchors`` are ``(chain_seq, digest_hash hex)`` pairs published earlier: each must still be in the chain.
        The outcome is written to the lifecycle ledger (operation ``integrity_verify``) unless ``record`` is false.

        Example::

            report = db.integrity.verify(since=datetime(2026, 11, 1, tzinfo=UTC))
            report.status, report.summary()
            for problem in report.problems:
                print(problem.kind, problem.event_time, problem.event_id, problem.source, problem.detail)
        """
        started = time.perf_counter()
        lo = _aware(since, "since", "verify") if since is not None else None
        hi = _aware(until, "until", "verify") if until is not None else None
        if lo is not None and hi is not None and lo >= hi:
            raise AuditValidationError("verify", [("until", "must be later than since")])
        anchor_list = [_anchor(a) for a in anchors]
        trusted = self.trusted_keys()
        with self._connections.dedicated_connection(operation="integrity_verify", autocommit=True) as conn:
            report = self._verify(conn, trusted, lo, hi, rows, anchor_list)
            report.duration_ms = _elapsed(started)
            if record:
                outcome = {"verified": "ok", "failed": "failed"}.get(report.status, "skipped")
                try:
                    ledger.record(conn, "integrity_verify", None, outcome,
                                  run_id=run_id, rows=report.events_checked, checksum=report.head_digest_hash,
                                  duration_ms=report.duration_ms,
                                  details={"status": report.status, "since": report.since, "until": report.until,
                                           "problems": len(report.problems),
                                           "first_problems": [str(p) for p in report.problems[:20]],
                                           "unchecked": report.unchecked, "digests": report.digests_checked,
                                           "windows": report.windows_checked,
                                           "pending_events": report.pending_events})
                except psycopg.errors.InsufficientPrivilege:
                    # A read-only auditor (audit_reader) may verify; the outcome it found stands without the entry.
                    logger.warning("integrity verification not recorded: this role may not write the ledger")
        if report.problems:
            logger.warning("integrity verification failed: %s", report.summary())
        return report

    def _verify(
        self, conn: psycopg.Connection[Any], trusted: dict[str, Ed25519PublicKey], lo: dt.datetime | None,
        hi: dt.datetime | None, check_rows: bool, anchors: list[tuple[int, bytes]],
    ) -> VerificationReport:
        (now,) = conn.execute("SELECT now()").fetchone()  # type: ignore[misc]
        digests = _load_digests(conn)
        problems = check_chain(digests, trusted)
        by_seq = {d.chain_seq: d for d in digests}
        problems += self._ledger_problems(conn, by_seq)
        for seq, expected in anchors:
            d = by_seq.get(seq)
            if d is None:
                problems.append(IntegrityProblem("missing_digest", f"anchored digest #{seq} is not in the chain",
                                                 chain_seq=seq, source="anchor"))
            elif d.digest_hash != expected:
                problems.append(IntegrityProblem("forged_digest", f"{d.label()} differs from its anchored hash",
                                                 chain_seq=seq, window_start=d.window_start, source="anchor"))
        report = VerificationReport("verified", lo, hi, digests_checked=len(digests), rows_checked=check_rows)
        if not digests:
            report.unchecked.append("nothing has been sealed yet")
            report.problems = problems
            report.status = "failed" if problems else "incomplete"
            return report
        head = digests[-1]
        report.head_chain_seq, report.head_digest_hash = head.chain_seq, head.digest_hash.hex()
        cutoff = max(d.ingested_to for d in digests)
        report.head_cutoff = cutoff
        windows: dict[tuple[dt.datetime, dt.datetime], list[Digest]] = {}
        for d in digests:
            windows.setdefault(d.window, []).append(d)
        first, last = min(w[0] for w in windows), max(w[1] for w in windows)
        report.since = lo = lo or first
        report.until = hi = hi or last
        if lo < first:
            report.unchecked.append(f"[{format_time(lo)}, {format_time(min(first, hi))}) is before the first sealed "
                                    "window")
        if hi > last:
            report.unchecked.append(f"[{format_time(max(last, lo))}, {format_time(hi)}) is not sealed yet")
        in_range = [(w, ds) for w, ds in sorted(windows.items()) if w[0] < hi and w[1] > lo]
        sources = _Sources(self._pm)
        if check_rows:
            for (w_start, w_end), ds in in_range:
                report.windows_checked += 1
                problems += self._check_window(conn, sources, w_start, w_end, ds, cutoff, now, report)
        problems += self._archive_problems(conn, sources, lo, hi, by_seq, trusted, report)
        report.problems = problems
        report.status = "failed" if problems else ("incomplete" if report.unchecked else "verified")
        return report

    def _check_window(
        self, conn: psycopg.Connection[Any], sources: _Sources, w_start: dt.datetime, w_end: dt.datetime,
        ds: list[Digest], cutoff: dt.datetime, now: dt.datetime, report: VerificationReport,
    ) -> list[IntegrityProblem]:
        problems: list[IntegrityProblem] = []
        leaves_by_seq = _load_leaves(conn, [d.chain_seq for d in ds])
        sealed: dict[tuple[dt.datetime, uuid.UUID], tuple[Leaf, Digest]] = {}
        for d in ds:
            leaves = leaves_by_seq[d.chain_seq]
            problems += _leaf_problems(d, leaves, "audit_digest_leaves")
            for leaf in leaves:
                if leaf.key in sealed:
                    problems.append(IntegrityProblem(
                        "digest_leaves", f"the event is sealed twice (#{sealed[leaf.key][1].chain_seq} and "
                        f"#{d.chain_seq})", w_start, leaf.event_time, str(leaf.event_id), d.chain_seq,
                        "audit_digest_leaves"))
                sealed.setdefault(leaf.key, (leaf, d))
        rows, error, expired = sources.rows(conn, w_start, w_end, full=True)
        if expired:
            report.expired_windows += 1
            return problems
        if error:
            part = sources.partition_of(w_start)
            if sources.store_error:
                report.unchecked.append(f"window {format_time(w_start)[:10]} ({part.name if part else '?'}): "
                                        f"{sources.store_error}")
            else:
                problems.append(IntegrityProblem("archive", f"the window's rows cannot be read from the archive: "
                                                 f"{error}", w_start, source=part.name if part else None))
            return problems
        seen: set[tuple[dt.datetime, uuid.UUID]] = set()
        for row in rows:
            where = {"window_start": w_start, "event_time": row.event_time, "event_id": str(row.event_id),
                     "source": row.source}
            if row.key in seen:
                problems.append(IntegrityProblem("inserted_row", "a second row with the key of an event already "
                                                 "seen in another table", **where))
                continue
            seen.add(row.key)
            report.events_checked += 1
            issues = []
            if row.error:
                issues.append(row.error)
            elif row.recomputed != row.content_hash:
                issues.append("its fields no longer match its content_hash")
            hit = sealed.get(row.key)
            if hit is not None:
                leaf, d = hit
                if leaf.content_hash != row.content_hash:
                    issues.append(f"its content_hash differs from the one sealed in #{d.chain_seq}")
                if leaf.ingested_at != row.ingested_at:
                    issues.append(f"its ingested_at differs from the one sealed in #{d.chain_seq}")
                if issues:
                    problems.append(IntegrityProblem("modified_row", "; ".join(issues), chain_seq=d.chain_seq,
                                                     **where))
            elif row.ingested_at > now:
                problems.append(IntegrityProblem("inserted_row", "in no digest, and its ingested_at lies in the "
                                                 "future", **where))
            elif row.ingested_at < cutoff:
                problems.append(IntegrityProblem(
                    "inserted_row", f"in no digest of its window although ingested before the last seal's cutoff "
                    f"({format_time(cutoff)})" + (f"; {'; '.join(issues)}" if issues else ""), **where))
            else:
                report.pending_events += 1
                if issues:
                    problems.append(IntegrityProblem("modified_row", "; ".join(issues), **where))
        for key, (leaf, d) in sealed.items():
            if key not in seen:
                part = sources.partition_of(w_start)
                problems.append(IntegrityProblem(
                    "deleted_row", f"sealed in #{d.chain_seq}, but no such row exists", w_start, leaf.event_time,
                    str(leaf.event_id), d.chain_seq, part.name if part else "audit_log"))
        return problems

    @staticmethod
    def _ledger_problems(conn: psycopg.Connection[Any], by_seq: dict[int, Digest]) -> list[IntegrityProblem]:
        """Every successful seal recorded the chain head it left: each must still be in the chain (a truncated tail
        is otherwise invisible)."""
        problems = []
        for seq_text, checksum, occurred in conn.execute(
            "SELECT details->>'head_chain_seq', checksum, occurred_at FROM audit_lifecycle_ledger"
            " WHERE operation = 'seal' AND outcome = 'ok' AND checksum IS NOT NULL ORDER BY entry_id"
        ):
            try:
                seq = int(seq_text)
            except (TypeError, ValueError):
                continue
            d = by_seq.get(seq)
            if d is None:
                problems.append(IntegrityProblem(
                    "missing_digest", f"the ledger records digest #{seq} (sealed {format_time(occurred)}), which is "
                    "not in the chain", chain_seq=seq, source="lifecycle ledger"))
            elif d.digest_hash.hex() != checksum:
                problems.append(IntegrityProblem(
                    "forged_digest", f"{d.label()} differs from the digest hash the ledger recorded when it was sealed",
                    chain_seq=seq, window_start=d.window_start, source="lifecycle ledger"))
        return problems

    def _archive_problems(
        self, conn: psycopg.Connection[Any], sources: _Sources, lo: dt.datetime, hi: dt.datetime,
        by_seq: dict[int, Digest], trusted: dict[str, Ed25519PublicKey], report: VerificationReport,
    ) -> list[IntegrityProblem]:
        """The archives of the range's partitions against their manifests, and their digest copies against the
        chain (a copy is signed: it also survives a rewrite of the database's digests)."""
        parts = [p for p in sources.parts if p.state in ("archived", "purged") and p.archive_uri
                 and p.archive_deleted_at is None and p.start < hi and p.end > lo]
        if not parts:
            return []
        store = sources.store()
        if store is None:
            report.unchecked.append(f"archives of {len(parts)} partition(s): {sources.store_error}")
            return []
        copies = {name: checksum for name, checksum in conn.execute(
            "SELECT DISTINCT ON (partition_name) partition_name, checksum FROM audit_lifecycle_ledger"
            " WHERE operation = 'integrity_copy' AND outcome = 'ok' ORDER BY partition_name, entry_id DESC")}
        problems = []
        for p in parts:
            try:
                found = PartitionManager._archive_problems(p, store)
            except AuditError as exc:
                found = [exc.message]
            problems += [IntegrityProblem("archive", text, window_start=p.start, source=f"{p.name} archive")
                         for text in found]
            problems += self._copy_problems(store, p, copies.get(p.name), by_seq, trusted)
        return problems

    @staticmethod
    def _copy_problems(
        store: Any, p: PartitionInfo, recorded_sha: str | None, by_seq: dict[int, Digest],
        trusted: dict[str, Ed25519PublicKey],
    ) -> list[IntegrityProblem]:
        try:
            data = store.read_sidecar(p.name, ARCHIVE_COPY_NAME)
            uri = store.sidecar_uri(p.name, ARCHIVE_COPY_NAME)
        except AuditError as exc:
            return [IntegrityProblem("archive", exc.message, window_start=p.start, source=f"{p.name} archive")]
        if data is None:
            if recorded_sha is None:
                return []  # archived before the chain reached it: the database's digests are the only copy
            return [IntegrityProblem("archive", "the digest copy written at archival is missing", window_start=p.start,
                                     source=uri)]
        problems = []
        if recorded_sha is not None and hashlib.sha256(data).hexdigest() != recorded_sha:
            problems.append(IntegrityProblem("archive", "the digest copy differs from the one written at archival",
                                             window_start=p.start, source=uri))
        try:
            copy = read_archive_copy(data)
        except ValueError as exc:
            return [*problems, IntegrityProblem("archive", f"the digest copy is malformed: {exc}",
                                                window_start=p.start, source=uri)]
        problems += check_chain(copy.chain, trusted, source=uri, segment=True)
        for d in copy.chain:
            mine = by_seq.get(d.chain_seq)
            if mine is None:
                problems.append(IntegrityProblem("missing_digest", f"{d.label()} is in the archive's copy but not in "
                                                 "the chain", chain_seq=d.chain_seq, window_start=d.window_start,
                                                 source=uri))
            elif mine.digest_hash != d.digest_hash:
                problems.append(IntegrityProblem("forged_digest", f"{mine.label()} differs from the archive's signed "
                                                 "copy", chain_seq=d.chain_seq, window_start=d.window_start,
                                                 source=uri))
        for d, leaves in copy.digests:
            problems += _leaf_problems(d, leaves, uri)
        return problems

    # -- proofs ------------------------------------------------------------------------------------------------

    def prove(self, event_time: Any, event_id: Any) -> InclusionProof:
        """The inclusion proof of one sealed event (its digest, leaf index and audit path), to hand to someone
        who checks it with :func:`verify_proof` and the public key. AuditValidationError when no digest holds it
        (no such event, or not sealed yet)."""
        ts = _aware(event_time, "event_time", "proof")
        try:
            eid = event_id if isinstance(event_id, uuid.UUID) else uuid.UUID(str(event_id))
        except ValueError:
            raise AuditValidationError("proof", [("event_id", "is not a UUID")]) from None
        with self._connections.connection(operation="integrity_prove") as conn:
            candidates = _load_digests(conn, sql.SQL(" WHERE window_start <= %(t)s AND window_end > %(t)s"), {"t": ts})
            leaves = _load_leaves(conn, [d.chain_seq for d in candidates])
        for d in candidates:
            items = leaves[d.chain_seq]
            for i, leaf in enumerate(items):
                if leaf.key == (ts, eid):
                    hashes = [x.hash() for x in items]
                    return InclusionProof(leaf, i, len(items), tuple(inclusion_path(hashes, i)), d)
        raise AuditValidationError("proof", [(
            "event", "is not in any digest (no such event, or it was ingested after the last seal)")])


class _HeldBack(Exception):
    pass


def _unique_leaves(rows: list[_Row]) -> list[Leaf]:
    out: list[Leaf] = []
    for r in rows:
        if out and out[-1].key == r.key:
            continue  # the same event in two tables (a detached partition and DEFAULT): sealed once
        out.append(Leaf(r.event_time.astimezone(dt.UTC), r.event_id, r.ingested_at.astimezone(dt.UTC),
                        r.content_hash))
    return out


def _anchor(value: Any) -> tuple[int, bytes]:
    try:
        if isinstance(value, str):
            seq_text, hash_text = value.split(":", 1)
            seq, raw = int(seq_text), bytes.fromhex(hash_text)
        else:
            seq, raw = int(value[0]), bytes.fromhex(value[1])
    except (ValueError, TypeError, IndexError):
        raise AuditValidationError("verify", [("anchor", "must be CHAIN_SEQ:DIGEST_HASH (hex)")]) from None
    if len(raw) != 32 or seq < 1:
        raise AuditValidationError("verify", [("anchor", "must be CHAIN_SEQ:DIGEST_HASH with 64 hex digits")])
    return seq, raw


def _elapsed(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


# -- archive copies ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArchiveCopy:
    """``integrity.json`` next to an archive: the partition's digests with their leaves, and the chain segment
    around them (from the digest before the first to the last) so their links can be checked offline."""

    partition: str
    digests: tuple[tuple[Digest, list[Leaf]], ...]
    chain: tuple[Digest, ...]
    unsealed: tuple[tuple[dt.datetime, dt.datetime], ...]


def read_archive_copy(data: bytes) -> ArchiveCopy:
    """Parse an ``integrity.json``; ValueError names what is wrong."""
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"not valid JSON ({exc})") from None
    if not isinstance(obj, dict) or obj.get("format_version") != ARCHIVE_COPY_VERSION:
        raise ValueError(f"format_version must be {ARCHIVE_COPY_VERSION}")
    try:
        digests = []
        for item in obj["digests"]:
            leaves_raw = _unb64(item["leaves"])
            if len(leaves_raw) % LEAF_SIZE:
                raise ValueError("leaves: not a whole number of 64-byte records")
            digests.append((Digest.from_dict(item["digest"]), _leaves_from_bytes(leaves_raw)))
        chain = tuple(Digest.from_dict(item) for item in obj["chain"])
        unsealed = tuple((_aware(a, "unsealed", "copy"), _aware(b, "unsealed", "copy")) for a, b in obj["unsealed"])
        partition = obj["partition"]
    except (KeyError, TypeError, binascii.Error, AuditValidationError) as exc:
        raise ValueError(f"missing or malformed field ({exc})") from None
    if [d.chain_seq for d in chain] != sorted(d.chain_seq for d in chain):
        raise ValueError("chain: not in chain_seq order")
    return ArchiveCopy(str(partition), tuple(digests), chain, unsealed)


def write_archive_copy(
    conn: psycopg.Connection[Any], bounds: PartitionBounds, store: Any, *, run_id: str | None = None
) -> str | None:
    """Write ``integrity.json`` next to the archive of ``bounds`` (in the archive's transaction, after its export
    verified) and record it in the ledger (operation ``integrity_copy``, its SHA-256). Returns the SHA-256, or
    None when no digest covers the period yet (nothing is written)."""
    mine = _load_digests(conn, sql.SQL(" WHERE window_start >= %s AND window_start < %s"), (bounds.start, bounds.end))
    if not mine:
        return None
    lo, hi = min(d.chain_seq for d in mine), max(d.chain_seq for d in mine)
    chain = _load_digests(conn, sql.SQL(" WHERE chain_seq BETWEEN %s AND %s"), (max(lo - 1, 1), hi))
    leaves = _load_leaves(conn, [d.chain_seq for d in mine])
    covered = sorted({d.window for d in mine})
    unsealed, cursor = [], bounds.start
    for start, end in covered:
        if start > cursor:
            unsealed.append((cursor, start))
        cursor = max(cursor, end)
    if cursor < bounds.end:
        unsealed.append((cursor, bounds.end))
    doc = {
        "format_version": ARCHIVE_COPY_VERSION,
        "partition": bounds.name,
        "range_start": format_time(bounds.start),
        "range_end": format_time(bounds.end),
        "digests": [{"digest": d.to_dict(), "leaves": _b64(b"".join(leaf.record() for leaf in leaves[d.chain_seq]))}
                    for d in mine],
        "chain": [d.to_dict() for d in chain],
        "unsealed": [[format_time(a), format_time(b)] for a, b in unsealed],
    }
    data = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    sha = store.write_sidecar(bounds.name, ARCHIVE_COPY_NAME, data)
    ledger.record(conn, "integrity_copy", bounds.name, run_id=run_id, rows=sum(d.event_count for d in mine),
                  checksum=sha, details={"uri": store.sidecar_uri(bounds.name, ARCHIVE_COPY_NAME),
                                         "digests": len(mine), "chain": [lo, hi], "unsealed_spans": len(unsealed)})
    return sha
