"""The integrity model, with no database: leaves, signed digests and their chain, keys, inclusion proofs, problem
reports, and the digest copies kept next to archives. An auditor checks a proof (:func:`verify_proof`), a chain
(:func:`check_chain`) or an archive's copy (:func:`read_archive_copy`) with this module and a public key alone:
it imports neither psycopg nor any database module (tests/core/test_integrity_model.py keeps it so).

**Leaves.** 64-byte records ``event_time µs | event_id | ingested_at µs | content_hash``, hashed and combined as in
RFC 6962 (:mod:`audit_db_core.merkle`).

**Digests.** A digest's *statement* (canonical JSON of its fields, ``prev_hash`` included) is hashed into
``digest_hash`` and signed with Ed25519; ``prev_hash`` is the previous digest's ``digest_hash``, so the digests
form one chain in ``chain_seq`` order. Ed25519 rather than an HMAC: an auditor verifies with the public key alone,
and nobody who can verify can forge.

Example::

    from audit_db_core.integrity.model import verify_proof
    check = verify_proof(proof_json, public_key)       # no database at all
    check.ok, check.problems
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
import logging
import struct
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from audit_db_core.errors import AuditValidationError, ConfigurationError
from audit_db_core.events import format_time
from audit_db_core.merkle import leaf_hash, merkle_root, root_from_path

if TYPE_CHECKING:
    from audit_db_core.events import AuditEvent

logger = logging.getLogger("audit_db_core.integrity.model")

ALGORITHM = "ed25519"
DIGEST_VERSION = 1
PROOF_VERSION = 1
ARCHIVE_COPY_NAME = "integrity.json"
ARCHIVE_COPY_VERSION = 1
LEAF_SIZE = 64

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


def _hash32(value: Any, where: str) -> bytes:
    """A SHA-256 hash from 64 hex digits; ValueError naming ``where`` otherwise."""
    try:
        raw = bytes.fromhex(value) if isinstance(value, str) else b""
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise ValueError(f"{where}: must be 64 hex digits")
    return raw




def _elapsed(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


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
            return _hash32(obj[name], f"digest.{name}")

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
        path = [_hash32(item, f"proof.path[{i}]") for i, item in enumerate(obj["path"])]
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



def unsealed_spans(
    start: dt.datetime, end: dt.datetime, windows: Iterable[tuple[dt.datetime, dt.datetime]]
) -> list[tuple[dt.datetime, dt.datetime]]:
    """The parts of ``[start, end)`` that none of ``windows`` covers, in order."""
    spans, cursor = [], start
    for w_start, w_end in sorted(set(windows)):
        if w_start > cursor:
            spans.append((cursor, w_start))
        cursor = max(cursor, w_end)
    if cursor < end:
        spans.append((cursor, end))
    return spans


def archive_copy_bytes(
    partition: str, start: dt.datetime, end: dt.datetime, digests: Sequence[tuple[Digest, list[Leaf]]],
    chain: Sequence[Digest], unsealed: Sequence[tuple[dt.datetime, dt.datetime]],
) -> bytes:
    """The ``integrity.json`` of ``partition`` (``[start, end)``): its digests with their leaves, the chain
    segment around them, and the spans no digest covers; what :func:`read_archive_copy` parses."""
    doc = {
        "format_version": ARCHIVE_COPY_VERSION,
        "partition": partition,
        "range_start": format_time(start),
        "range_end": format_time(end),
        "digests": [{"digest": d.to_dict(), "leaves": _b64(b"".join(leaf.record() for leaf in leaves))}
                    for d, leaves in digests],
        "chain": [d.to_dict() for d in chain],
        "unsealed": [[format_time(a), format_time(b)] for a, b in unsealed],
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
