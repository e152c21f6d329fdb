"""Merkle trees as in RFC 6962 / RFC 9162 (Certificate Transparency), over SHA-256.

Leaves and interior nodes are hashed in separate domains — ``leaf = SHA-256(0x00 || data)``,
``node = SHA-256(0x01 || left || right)`` — so an interior node can never pass for a leaf (the second-preimage
attack on trees that hash both alike), and an odd node is promoted, never paired with a copy of itself (the
duplicated-leaf ambiguity of Bitcoin's tree, CVE-2012-2459). The root of no leaves is ``SHA-256(b"")``.

An *inclusion proof* (audit path) for leaf ``index`` of a tree of ``size`` leaves is the list of sibling hashes
from the leaf up; :func:`root_from_path` is RFC 9162's verification algorithm (section 2.1.3.2): it refuses an
index outside the tree and a path that is too short or too long, rather than computing some other root.

Example::

    leaves = [leaf_hash(b"a"), leaf_hash(b"b"), leaf_hash(b"c")]
    root = merkle_root(leaves)
    path = inclusion_path(leaves, 2)
    assert root_from_path(leaves[2], 2, 3, path) == root
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

HASH_SIZE = 32
_LEAF = b"\x00"
_NODE = b"\x01"
EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    """``SHA-256(0x00 || data)``."""
    return hashlib.sha256(_LEAF + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``SHA-256(0x01 || left || right)``."""
    return hashlib.sha256(_NODE + left + right).digest()


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """The RFC 6962 Merkle Tree Hash of ``leaves`` (already leaf-hashed), computed level by level: pairing from
    the left and promoting an odd last node gives the same left-balanced tree as the RFC's recursive split."""
    if not leaves:
        return EMPTY_ROOT
    level = list(leaves)
    while len(level) > 1:
        nxt = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def inclusion_path(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """The audit path of leaf ``index``: sibling hashes from the bottom up (a promoted node has no sibling at
    that level and adds nothing)."""
    if not 0 <= index < len(leaves):
        raise IndexError(f"leaf index {index} is outside a tree of {len(leaves)} leaves")
    path: list[bytes] = []
    level = list(leaves)
    i = index
    while len(level) > 1:
        sibling = i ^ 1
        if sibling < len(level):
            path.append(level[sibling])
        nxt = [node_hash(level[j], level[j + 1]) for j in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
        i >>= 1
    return path


def root_from_path(leaf: bytes, index: int, size: int, path: Sequence[bytes]) -> bytes | None:
    """The root that ``path`` proves ``leaf`` (at ``index`` of ``size`` leaves) belongs to, or ``None`` when the
    proof cannot be valid for any root: index out of range, a path of the wrong length, a hash of the wrong size.

    RFC 9162, section 2.1.3.2, step by step; the caller compares the result with the trusted root.
    """
    if not (isinstance(index, int) and isinstance(size, int)) or isinstance(index, bool) or isinstance(size, bool):
        return None
    if not 0 <= index < size or len(leaf) != HASH_SIZE:
        return None
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if len(p) != HASH_SIZE or sn == 0:
            return None
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        return None
    return r
