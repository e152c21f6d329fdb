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

**Layout.** :mod:`~audit_db_core.integrity.model` is the model with no database (leaves, digests, keys, proofs,
chain checks, archive copies; imports neither psycopg nor any database module, so an auditor checks offline);
:mod:`~audit_db_core.integrity.sealing` and :mod:`~audit_db_core.integrity.verification` do the work against the
database, :mod:`~audit_db_core.integrity.storage` reads and writes the digest tables and archive copies, and
:mod:`~audit_db_core.integrity.manager` holds :class:`IntegrityManager`. Every public name is importable from
``audit_db_core.integrity``; those that need the database are imported on first use, so that importing
``audit_db_core.integrity.model`` does not load them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from audit_db_core.exports import on_first_use
from audit_db_core.integrity.model import (
    ALGORITHM,
    ARCHIVE_COPY_NAME,
    ARCHIVE_COPY_VERSION,
    DIGEST_VERSION,
    LEAF_SIZE,
    PROBLEM_KINDS,
    PROOF_VERSION,
    ArchiveCopy,
    Digest,
    InclusionProof,
    IntegrityProblem,
    Leaf,
    ProofCheck,
    SealedDigest,
    SealResult,
    VerificationReport,
    check_chain,
    generate_key_pair,
    key_id_of,
    load_public_key,
    load_signing_key,
    public_key_text,
    read_archive_copy,
    verify_proof,
)

if TYPE_CHECKING:
    from audit_db_core.integrity.manager import IntegrityManager
    from audit_db_core.integrity.sealing import LOCK_SEAL
    from audit_db_core.integrity.storage import LEAVES_PER_CHUNK, write_archive_copy

#: Names that need the database, and the submodule each lives in: imported on first use (see the docstring).
_ON_FIRST_USE = {
    "IntegrityManager": "manager",
    "LOCK_SEAL": "sealing",
    "LEAVES_PER_CHUNK": "storage",
    "write_archive_copy": "storage",
}

__all__ = [
    "ALGORITHM",
    "ARCHIVE_COPY_NAME",
    "ARCHIVE_COPY_VERSION",
    "DIGEST_VERSION",
    "LEAF_SIZE",
    "LEAVES_PER_CHUNK",
    "LOCK_SEAL",
    "PROBLEM_KINDS",
    "PROOF_VERSION",
    "ArchiveCopy",
    "Digest",
    "InclusionProof",
    "IntegrityManager",
    "IntegrityProblem",
    "Leaf",
    "ProofCheck",
    "SealResult",
    "SealedDigest",
    "VerificationReport",
    "check_chain",
    "generate_key_pair",
    "key_id_of",
    "load_public_key",
    "load_signing_key",
    "public_key_text",
    "read_archive_copy",
    "verify_proof",
    "write_archive_copy",
]


__getattr__, __dir__ = on_first_use(__name__, _ON_FIRST_USE, globals())
