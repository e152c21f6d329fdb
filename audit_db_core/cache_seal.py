"""Sealing what the query cache keeps in Redis (see :mod:`audit_db_core.cache` for why Redis is not trusted):
AES-256-GCM values bound to their Redis key, and HMAC-tagged counters, messages and breaker states. Whatever fails
here is a :class:`Refused` value — a cache miss, never an error.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

#: Format of an L2 value (the first byte of its header); 1 was plain zlib JSON, before values were sealed.
_FORMAT = 2
_HEADER = struct.Struct(">BQQ")  # format, created (ms since the Unix epoch), TTL (ms)
_NONCE_BYTES = 12
_GCM_TAG_BYTES = 16
SEAL_OVERHEAD = _HEADER.size + _NONCE_BYTES + _GCM_TAG_BYTES
_TAG_HEX = 32  # HMAC-SHA256 truncated to 128 bits, as hex


class Refused(Exception):
    """A value from Redis that must not be used; ``reason`` says why, without the value."""

    def __init__(self, reason: str, *, suspicious: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.suspicious = suspicious  # False: an honest miss (e.g. just expired), not counted as rejected


class CacheSeal:
    """Seals what the cache keeps in Redis, with keys derived (HKDF-SHA256) from ``AUDIT_CACHE__KEY``.

    Values: AES-256-GCM, the header and the Redis key as associated data. Counters, messages and breaker states:
    HMAC-SHA256 truncated to 128 bits, over a purpose, the Redis key (or channel) and the data.

    Example::

        seal = CacheSeal(settings.cache.key_bytes)
        blob = seal.seal("k", b"...", created_ms=now_ms, ttl_ms=60_000)
        seal.unseal("k", blob)            # (b"...", created_ms, ttl_ms); another key or a changed byte: refused
    """

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("the cache key must be 32 bytes")
        self._aead = AESGCM(self._derive(key, b"values"))
        self._mac_key = self._derive(key, b"control")

    @staticmethod
    def _derive(key: bytes, purpose: bytes) -> bytes:
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                    info=b"audit_db_core cache v2 " + purpose).derive(key)

    def seal(self, redis_key: str, plaintext: bytes, *, created_ms: int, ttl_ms: int) -> bytes:
        header = _HEADER.pack(_FORMAT, created_ms, ttl_ms)
        nonce = os.urandom(_NONCE_BYTES)  # random 96-bit nonces: safe far beyond any cache's number of writes
        return header + nonce + self._aead.encrypt(nonce, plaintext, header + redis_key.encode())

    def unseal(self, redis_key: str, blob: bytes) -> tuple[bytes, int, int]:
        """``(plaintext, created_ms, ttl_ms)``; raises :class:`Refused` unless ``blob`` was sealed for this key."""
        if len(blob) < SEAL_OVERHEAD:
            raise Refused("not a sealed value")
        header = blob[:_HEADER.size]
        version, created_ms, ttl_ms = _HEADER.unpack(header)
        if version != _FORMAT:
            raise Refused("not a sealed value of this format")
        nonce = blob[_HEADER.size:_HEADER.size + _NONCE_BYTES]
        try:
            plaintext = self._aead.decrypt(nonce, blob[_HEADER.size + _NONCE_BYTES:], header + redis_key.encode())
        except InvalidTag:
            raise Refused("failed authentication (another key, another Redis key, or altered)") from None
        return plaintext, created_ms, ttl_ms

    def digest(self, purpose: str, where: str, data: str) -> str:
        """HMAC-SHA256 (hex) of ``data`` for ``purpose`` at ``where``."""
        msg = b"\x00".join((purpose.encode(), where.encode(), data.encode()))
        return hmac.new(self._mac_key, msg, hashlib.sha256).hexdigest()

    def tag(self, purpose: str, where: str, data: str) -> str:
        return self.digest(purpose, where, data)[:_TAG_HEX]

    def sign(self, purpose: str, where: str, data: str) -> str:
        """``tag.data``: ``data`` with its tag, for ``where`` (a Redis key or channel)."""
        return f"{self.tag(purpose, where, data)}.{data}"

    def verify(self, purpose: str, where: str, signed: bytes | str) -> str:
        """The data of a :meth:`sign` output; raises :class:`Refused` when its tag does not match."""
        text = signed.decode("utf-8", "replace") if isinstance(signed, bytes) else str(signed)
        tag, sep, data = text.partition(".")
        if not sep or not hmac.compare_digest(tag, self.tag(purpose, where, data)):
            raise Refused(f"{purpose} failed authentication")
        return data

    def generation(self, gen_key: str, scope: str, lsn: int) -> str:
        """A counter as stored in Redis: ``lsn:tag``."""
        return f"{lsn}:{self.tag('gen', gen_key, f'{scope}={lsn}')}"

    def read_generation(self, gen_key: str, scope: str, value: bytes | str) -> int:
        text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
        lsn, sep, tag = text.partition(":")
        if not sep or not lsn.isdigit() or not hmac.compare_digest(tag, self.tag("gen", gen_key, f"{scope}={lsn}")):
            raise Refused("generation counter failed authentication")
        return int(lsn)
