"""The integrity model works offline: an auditor with the package and a public key checks proofs, chains and archive
copies without a database driver. Each check runs in a fresh interpreter, so that nothing another test imported
hides an import of psycopg or of a database module."""

from __future__ import annotations

import subprocess
import sys
import textwrap

DATABASE_MODULES = ("psycopg", "psycopg_pool", "audit_db_core.database", "audit_db_core.connections",
                    "audit_db_core.partitions", "audit_db_core.period_rows", "audit_db_core.integrity.storage")


def run_offline(body: str) -> str:
    """Run ``body`` after importing only the model; fail with its output if it fails or loaded a database
    module; return what it printed."""
    script = "import sys\nimport audit_db_core.integrity.model as model\n" + textwrap.dedent(body) + textwrap.dedent(f"""
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in {{"psycopg", "psycopg_pool"}}
                        or m in {DATABASE_MODULES!r})
        print("loaded:", ",".join(loaded))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "loaded: ", done.stdout
    return done.stdout


def test_importing_the_model_loads_no_database_module() -> None:
    run_offline("")


def test_a_proof_and_a_chain_are_checked_offline() -> None:
    """Sign two digests with the model alone, prove a leaf of the second, and check both the proof and the chain;
    then the same with one forged byte each, which must be caught."""
    out = run_offline("""
        import dataclasses, datetime as dt, uuid
        from audit_db_core.merkle import inclusion_path, merkle_root

        private, public = model.generate_key_pair()
        key = model.load_signing_key(private)
        t0 = dt.datetime(2026, 11, 2, tzinfo=dt.UTC)
        leaves = [model.Leaf(t0 + dt.timedelta(hours=h), uuid.UUID(int=h), t0 + dt.timedelta(days=1, hours=h),
                             bytes([h]) * 32) for h in range(3)]

        def signed(seq, prev, items):
            d = model.Digest(seq, t0 - dt.timedelta(days=2 - seq), t0 - dt.timedelta(days=1 - seq), 1, None,
                             t0 + dt.timedelta(days=2), len(items), merkle_root([x.hash() for x in items]), prev,
                             model.ALGORITHM, model.key_id_of(public), t0 + dt.timedelta(days=2))
            return dataclasses.replace(d, digest_hash=d.computed_hash(), signature=key.sign(d.statement()))

        first = signed(1, bytes(32), [])
        second = signed(2, first.digest_hash, leaves)
        hashes = [x.hash() for x in leaves]
        proof = model.InclusionProof(leaves[1], 1, 3, tuple(inclusion_path(hashes, 1)), second)
        trusted = {model.key_id_of(public): model.load_public_key(public)}
        print("proof:", model.verify_proof(proof.to_json(), public).ok)
        print("chain:", [p.kind for p in model.check_chain([first, second], trusted)])
        forged_leaf = dataclasses.replace(leaves[1], content_hash=bytes(32))
        print("forged proof:", model.verify_proof(dataclasses.replace(proof, leaf=forged_leaf), public).ok)
        relinked = dataclasses.replace(second, prev_hash=bytes(32))  # unlinked, its hash and signature now stale
        print("forged chain:", sorted({p.kind for p in model.check_chain([first, relinked], trusted)}))
    """)
    assert "proof: True" in out
    assert "chain: []" in out
    assert "forged proof: False" in out
    assert "forged chain: ['bad_signature', 'broken_chain', 'forged_digest']" in out


def test_an_archive_copy_round_trips_offline() -> None:
    out = run_offline("""
        import datetime as dt, uuid

        t0 = dt.datetime(2026, 11, 2, tzinfo=dt.UTC)
        t1 = t0 + dt.timedelta(days=7)
        spans = model.unsealed_spans(t0, t1, [(t0 + dt.timedelta(days=1), t0 + dt.timedelta(days=2))])
        data = model.archive_copy_bytes("audit_log_p20261102", t0, t1, [], [], spans)
        copy = model.read_archive_copy(data)
        print("copy:", copy.partition, len(copy.unsealed), copy.unsealed[0] == (t0, t0 + dt.timedelta(days=1)))
        try:
            model.read_archive_copy(data.replace(b'"format_version":1', b'"format_version":2'))
        except ValueError as exc:
            print("refused:", exc)
    """)
    assert "copy: audit_log_p20261102 2 True" in out
    assert "refused: format_version must be 1" in out
