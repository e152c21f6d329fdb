"""The integrity API of one database (``db.integrity``): configuration (window, keys) and the entry points to
sealing, verification and proofs, which live in :mod:`~audit_db_core.integrity.sealing` and
:mod:`~audit_db_core.integrity.verification`.

Example::

    manager = IntegrityManager(connections, settings)
    manager.seal().status, manager.verify().status
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from psycopg import sql

from audit_db_core import telemetry
from audit_db_core.config import AuditSettings, Period
from audit_db_core.errors import AuditValidationError, ConfigurationError
from audit_db_core.integrity import sealing, verification
from audit_db_core.integrity.model import (
    Digest,
    InclusionProof,
    SealResult,
    VerificationReport,
    _aware,
    _trusted,
    load_signing_key,
    public_key_text,
)
from audit_db_core.integrity.storage import HEAD, load_digests
from audit_db_core.partitions import PartitionBounds, PartitionManager, bounds_for
from audit_db_core.retention import add_period

logger = logging.getLogger("audit_db_core.integrity.manager")


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
        return sealing.checked_window(self.settings)

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
            found = load_digests(conn, HEAD)
        return found[-1] if found else None

    def digests(self, since: Any = None, until: Any = None) -> list[Digest]:
        """Digests whose window overlaps ``[since, until)`` (all by default), in chain order."""
        lo = _aware(since, "since", "integrity") if since is not None else None
        hi = _aware(until, "until", "integrity") if until is not None else None
        with self._connections.connection(operation="integrity_digests") as conn:
            return load_digests(
                conn, sql.SQL(" WHERE (%(lo)s::timestamptz IS NULL OR window_end > %(lo)s)"
                              " AND (%(hi)s::timestamptz IS NULL OR window_start < %(hi)s)"), {"lo": lo, "hi": hi})

    # -- sealing, verification, proofs -------------------------------------------------------------------------

    def seal(self, *, until: Any = None, run_id: str | None = None) -> SealResult:
        """Make the digests that are due: a first digest for every window closed since the last seal (an empty one
        too), and a supplement for every sealed window that received events since the last seal's cutoff.
        ``until`` seals only windows that end at or before it. One seal runs at a time (an advisory lock); a second
        one returns ``busy``. Every run is recorded in the lifecycle ledger (operation ``seal``).

        Example::

            result = db.integrity.seal()
            result.status, result.events, [d.chain_seq for d in result.digests]
        """
        with telemetry.integrity_run("seal") as recorded:
            key = self._signing_key()
            window = self.window
            limit = _aware(until, "until", "seal") if until is not None else None
            result = sealing.seal(self._connections, self.settings, self._pm, key=key, window=window, until=limit,
                                  run_id=run_id)
            recorded.status, recorded.sealed = result.status, result.events
        return result

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
        lo = _aware(since, "since", "verify") if since is not None else None
        hi = _aware(until, "until", "verify") if until is not None else None
        if lo is not None and hi is not None and lo >= hi:
            raise AuditValidationError("verify", [("until", "must be later than since")])
        anchor_list = [verification.parse_anchor(a) for a in anchors]
        with telemetry.integrity_run("verify") as recorded:
            report = verification.verify(self._connections, self._pm, self.trusted_keys(), lo, hi, rows=rows,
                                         anchors=anchor_list, run_id=run_id, record=record)
            recorded.status, recorded.findings = report.status, [p.kind for p in report.problems]
        return report

    def prove(self, event_time: Any, event_id: Any) -> InclusionProof:
        """The inclusion proof of one sealed event (its digest, leaf index and audit path), to hand to someone
        who checks it with :func:`~audit_db_core.integrity.model.verify_proof` and the public key.
        AuditValidationError when no digest holds it (no such event, or not sealed yet)."""
        return verification.prove(self._connections, event_time, event_id)
