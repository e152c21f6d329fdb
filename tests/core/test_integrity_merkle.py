"""RFC 6962 Merkle trees: the roots and audit paths match the RFC's recursive definitions, and forged proofs —
swapped siblings, another index, another tree size, a truncated or padded path, an interior node passed off as a
leaf — are refused. Verification code is security-critical: most of these tests are forgeries."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audit_db_core.merkle import EMPTY_ROOT, inclusion_path, leaf_hash, merkle_root, node_hash, root_from_path


def rfc_mth(leaves: list[bytes]) -> bytes:
    """RFC 6962 section 2.1, literally: MTH({d(0)}) = leaf; MTH(D[n]) = node(MTH(D[0:k]), MTH(D[k:n]))."""
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return leaves[0]
    k = 1 << ((n - 1).bit_length() - 1)  # the largest power of two smaller than n
    return node_hash(rfc_mth(leaves[:k]), rfc_mth(leaves[k:]))


def rfc_path(m: int, leaves: list[bytes]) -> list[bytes]:
    """RFC 6962 section 2.1.1: PATH(m, D[n])."""
    n = len(leaves)
    if n == 1:
        return []
    k = 1 << ((n - 1).bit_length() - 1)
    if m < k:
        return rfc_path(m, leaves[:k]) + [rfc_mth(leaves[k:])]
    return rfc_path(m - k, leaves[k:]) + [rfc_mth(leaves[:k])]


def tree(n: int, salt: bytes = b"") -> list[bytes]:
    return [leaf_hash(salt + i.to_bytes(4, "big")) for i in range(n)]


@settings(max_examples=150, deadline=None)
@given(st.integers(min_value=0, max_value=300))
def test_root_is_the_rfc_tree_hash(n: int) -> None:
    assert merkle_root(tree(n)) == rfc_mth(tree(n))


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=1, max_value=130), st.data())
def test_every_path_is_the_rfc_path_and_verifies(n: int, data: st.DataObject) -> None:
    leaves = tree(n)
    root = merkle_root(leaves)
    index = data.draw(st.integers(min_value=0, max_value=n - 1))
    path = inclusion_path(leaves, index)
    assert path == rfc_path(index, leaves)
    assert root_from_path(leaves[index], index, n, path) == root


@settings(max_examples=80, deadline=None)
@given(st.integers(min_value=2, max_value=130), st.data())
def test_a_proof_checked_against_another_index_or_size_fails(n: int, data: st.DataObject) -> None:
    leaves = tree(n)
    root = merkle_root(leaves)
    index = data.draw(st.integers(min_value=0, max_value=n - 1))
    path = inclusion_path(leaves, index)
    other = data.draw(st.integers(min_value=0, max_value=n - 1).filter(lambda i: i != index))
    assert root_from_path(leaves[index], other, n, path) != root  # wrong index
    assert root_from_path(leaves[other], index, n, path) != root  # another leaf at this position
    # The path alone does not pin the tree size (a leaf of the left 64 has the same path in trees of 65..128):
    # the size is authenticated by the signed digest's event_count, which verify_proof compares.
    assert root_from_path(leaves[index], index, index, path) is None  # no tree of `index` leaves holds `index`


@settings(max_examples=80, deadline=None)
@given(st.integers(min_value=2, max_value=130), st.data())
def test_a_path_with_one_hash_flipped_dropped_or_added_fails(n: int, data: st.DataObject) -> None:
    leaves = tree(n)
    root = merkle_root(leaves)
    index = data.draw(st.integers(min_value=0, max_value=n - 1))
    path = inclusion_path(leaves, index)
    i = data.draw(st.integers(min_value=0, max_value=len(path) - 1))
    bit = data.draw(st.integers(min_value=0, max_value=255))
    flipped = list(path)
    flipped[i] = bytes(b ^ (1 << (bit % 8)) if j == bit // 8 else b for j, b in enumerate(path[i]))
    assert root_from_path(leaves[index], index, n, flipped) != root
    assert root_from_path(leaves[index], index, n, path[:-1]) is None  # truncated
    assert root_from_path(leaves[index], index, n, [*path, leaf_hash(b"x")]) is None  # padded


def test_swapped_siblings_fail() -> None:
    leaves = tree(16)
    root = merkle_root(leaves)
    path = inclusion_path(leaves, 5)
    assert len(path) == 4
    for i in range(len(path) - 1):
        swapped = list(path)
        swapped[i], swapped[i + 1] = swapped[i + 1], swapped[i]
        assert root_from_path(leaves[5], 5, 16, swapped) != root


def test_index_outside_the_tree_and_bad_hash_sizes_are_refused() -> None:
    leaves = tree(5)
    path = inclusion_path(leaves, 4)
    assert root_from_path(leaves[4], 5, 5, path) is None
    assert root_from_path(leaves[4], -1, 5, path) is None
    assert root_from_path(leaves[4], 4, 0, path) is None
    assert root_from_path(leaves[4][:31], 4, 5, path) is None
    assert root_from_path(leaves[4], 4, 5, [p[:16] for p in path]) is None
    assert root_from_path(leaves[4], True, 5, path) is None  # a bool is not an index
    with pytest.raises(IndexError):
        inclusion_path(leaves, 5)


def test_a_proof_for_another_tree_fails() -> None:
    a, b = tree(8, b"a"), tree(8, b"b")
    assert root_from_path(a[3], 3, 8, inclusion_path(a, 3)) == merkle_root(a)
    assert root_from_path(a[3], 3, 8, inclusion_path(a, 3)) != merkle_root(b)


def test_an_interior_node_cannot_pass_for_a_leaf() -> None:
    """The second-preimage attack: claim that the 64 bytes ``left || right`` of an interior node are a leaf of a
    tree half the size. Leaves are hashed with 0x00 and nodes with 0x01, so the forged leaf hashes differently."""
    data = [bytes([i]) * 32 for i in range(4)]  # 32-byte leaf data, so two children are 64 bytes like a leaf record
    leaves = [leaf_hash(d) for d in data]
    root = merkle_root(leaves)
    left, right = leaves[0], leaves[1]
    forged_leaf = leaf_hash(left + right)  # the verifier hashes the claimed leaf data as a leaf
    assert root_from_path(forged_leaf, 0, 2, [node_hash(leaves[2], leaves[3])]) != root

    # Without domain separation the same forgery would pass: what the prefixes prevent.
    def plain(x: bytes) -> bytes:
        return hashlib.sha256(x).digest()

    naive = [plain(d) for d in data]
    naive_root = plain(plain(naive[0] + naive[1]) + plain(naive[2] + naive[3]))
    forged_naive_leaf = plain(naive[0] + naive[1])  # "leaf data" naive[0] || naive[1], at index 0 of 2
    assert plain(forged_naive_leaf + plain(naive[2] + naive[3])) == naive_root


def test_an_odd_last_node_is_promoted_not_duplicated() -> None:
    """Bitcoin's tree pairs an odd node with itself, so [a, b, c] and [a, b, c, c] share a root (CVE-2012-2459)."""
    leaves = tree(3)
    assert merkle_root(leaves) != merkle_root([*leaves, leaves[-1]])
    assert merkle_root([]) == EMPTY_ROOT and merkle_root(leaves[:1]) == leaves[0]
