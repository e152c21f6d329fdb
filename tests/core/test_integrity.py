"""Digests, their verification and inclusion proofs, against real PostgreSQL.

Every forgery is made for real — as the superuser, with triggers off (``session_replication_role = replica``), or by
editing archive files — and the test checks that verification names it and where. Honest data must verify clean.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pyarrow.parquet as pq
import pytest

from audit_db_core import AuditDatabase, AuditEvent, AuditSettings, AuditValidationError, ConfigurationError
from audit_db_core.integrity import (
    ARCHIVE_COPY_NAME,
    LOCK_SEAL,
    Digest,
    InclusionProof,
    Leaf,
    generate_key_pair,
    key_id_of,
    load_signing_key,
    verify_proof,
)
from audit_db_core.events import EVENT_COLUMNS
from audit_db_core.ledger import entries
from audit_db_core.merkle import leaf_hash, merkle_root, node_hash
from audit_db_core.migrate import LOCK_CLASS
from tests.conftest import archive_dir

UTC = dt.UTC
GRACE = 0.05
TODAY = dt.datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


@pytest.fixture
def keys() -> tuple[str, str]:
    return generate_key_pair()


def make_settings(url: str, private: str | None, tmp: Path, **integrity: Any) -> AuditSettings:
    section: dict[str, Any] = {"cutoff_grace_seconds": GRACE, "seal_delay_seconds": 0, **integrity}
    if private is not None:
        section["signing_key"] = private
    return AuditSettings(database_url=url, integrity=section, archive={"root_uri": str(tmp / "archive")},
                         retention={"default": "1 year"})


@pytest.fixture
def db(fresh_database: str, keys: tuple[str, str], tmp_path: Path) -> Iterator[AuditDatabase]:
    with AuditDatabase(make_settings(fresh_database, keys[0], tmp_path)) as database:
        yield database


def event(when: dt.datetime, i: int = 0, **fields: Any) -> AuditEvent:
    values = {"action": "patient.record.read", "status": "success", "principal_id": f"dr.{i}",
              "target_resource_type": "Patient", "target_resource_id": f"p-{i}", "data_classification": "PHI",
              "details": {"i": i}, "event_time": when, **fields}
    return AuditEvent(**values)


def day(n: int, hour: int = 12) -> dt.datetime:
    """``n`` days ago at ``hour`` UTC."""
    return TODAY - dt.timedelta(days=n) + dt.timedelta(hours=hour)


def seal(db: AuditDatabase, **kwargs: Any) -> Any:
    time.sleep(GRACE * 3)  # rows written just now are inside the cutoff's grace margin
    return db.integrity.seal(**kwargs)


def superuser(url: str) -> psycopg.Connection[Any]:
    """A superuser session with triggers off: the attacker the chain is there to catch."""
    conn = psycopg.connect(url, autocommit=True)
    conn.execute("SET session_replication_role = replica")
    return conn


def kinds(report: Any) -> set[str]:
    return {p.kind for p in report.problems}


def sealed_keys(url: str) -> list[tuple[dt.datetime, uuid.UUID]]:
    with psycopg.connect(url) as conn:
        data = b"".join(bytes(r[0]) for r in conn.execute(
            "SELECT leaves FROM audit_digest_leaves ORDER BY chain_seq, chunk"))
    return [Leaf.from_record(data[i:i + 64]).key for i in range(0, len(data), 64)]


@pytest.fixture
def honest(db: AuditDatabase) -> list[AuditEvent]:
    """Events on three past days (and none on the day between two of them), sealed."""
    events = [event(day(4, h), i) for i, h in enumerate((1, 5, 9))] + [event(day(2, h), 10 + h) for h in (3, 4)]
    events.append(event(day(1, 23), 99))
    assert db.insert_many(events) == 6
    result = seal(db)
    assert result.status == "sealed", result
    return events


# -- honest data -----------------------------------------------------------------------------------------------


def test_honest_data_verifies_clean(db: AuditDatabase, honest: list[AuditEvent], fresh_database: str) -> None:
    digests = db.integrity.digests()
    # One digest per window from the first event's day to yesterday, the empty day included (it proves emptiness).
    assert [d.window_start for d in digests] == [TODAY - dt.timedelta(days=n) for n in (4, 3, 2, 1)]
    assert [d.event_count for d in digests] == [3, 0, 2, 1]
    assert [d.seq for d in digests] == [1, 1, 1, 1] and [d.chain_seq for d in digests] == [1, 2, 3, 4]
    assert digests[1].merkle_root == merkle_root([])
    report = db.integrity.verify()
    assert report.status == "verified" and report.ok, report.summary()
    assert report.events_checked == 6 and report.windows_checked == 4 and report.digests_checked == 4
    assert report.head_chain_seq == 4 and report.head_digest_hash == digests[-1].digest_hash.hex()
    assert sorted(sealed_keys(fresh_database)) == sorted((e.event_time, e.event_id) for e in honest)
    with psycopg.connect(fresh_database) as conn:
        (seal_entry,) = entries(conn, operation="seal")
        (verify_entry,) = entries(conn, operation="integrity_verify")
    assert seal_entry.outcome == "ok" and seal_entry.checksum == digests[-1].digest_hash.hex()
    assert seal_entry.row_count == 6 and seal_entry.details["digests"] == 4
    assert verify_entry.outcome == "ok" and verify_entry.details["status"] == "verified"
    # Nothing new: the next seal adds nothing, and says so in the ledger.
    again = seal(db)
    assert again.status == "nothing_to_seal" and len(db.integrity.digests()) == 4


def test_digest_tables_are_append_only(db: AuditDatabase, honest: list[AuditEvent], fresh_database: str) -> None:
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        for stmt in ("UPDATE audit_digests SET event_count = 0", "DELETE FROM audit_digest_leaves",
                     "TRUNCATE audit_digests"):
            with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
                conn.execute(stmt)


# -- forged rows -------------------------------------------------------------------------------------------------


def test_modified_row_is_caught_and_located(db: AuditDatabase, honest: list[AuditEvent], fresh_database: str) -> None:
    target, other = honest[1], honest[3]
    forged = target.model_copy(update={"principal_id": "someone.else"})
    with superuser(fresh_database) as conn:
        # A clumsy edit: the content hash is left as it was.
        conn.execute("UPDATE audit_log SET action = 'patient.record.write' WHERE event_id = %s", (target.event_id,))
        # A careful one: the content hash is recomputed, so the row is consistent with itself.
        conn.execute("UPDATE audit_log SET principal_id = 'someone.else', content_hash = %s WHERE event_id = %s",
                     (event(other.event_time, 10 + 3, event_id=other.event_id, principal_id="x").content_hash,
                      other.event_id))
    assert forged.content_hash != target.content_hash
    report = db.integrity.verify()
    assert report.status == "failed" and not report.ok
    modified = {p.event_id: p for p in report.of("modified_row")}
    assert set(modified) == {str(target.event_id), str(other.event_id)} and kinds(report) == {"modified_row"}
    assert "no longer match its content_hash" in modified[str(target.event_id)].detail
    assert "differs from the one sealed" in modified[str(other.event_id)].detail
    assert modified[str(target.event_id)].event_time == target.event_time
    assert modified[str(target.event_id)].source and modified[str(target.event_id)].source.startswith("audit_log")
    assert modified[str(target.event_id)].chain_seq == 1
    shown = json.dumps(report.to_dict()) + " ".join(str(p) for p in report.problems)
    assert "someone.else" not in shown and "patient.record.write" not in shown  # values may be PHI: never shown


def test_ingested_at_is_sealed_too(db: AuditDatabase, honest: list[AuditEvent], fresh_database: str) -> None:
    with superuser(fresh_database) as conn:
        conn.execute("UPDATE audit_log SET ingested_at = ingested_at - interval '1 hour' WHERE event_id = %s",
                     (honest[0].event_id,))
    (problem,) = db.integrity.verify().problems
    assert problem.kind == "modified_row" and "ingested_at differs" in problem.detail
    assert problem.event_id == str(honest[0].event_id)


def test_deleted_row_is_caught_and_located(db: AuditDatabase, honest: list[AuditEvent], fresh_database: str) -> None:
    gone = honest[4]
    with superuser(fresh_database) as conn:
        conn.execute("DELETE FROM audit_log WHERE event_id = %s", (gone.event_id,))
    report = db.integrity.verify()
    (problem,) = report.problems
    assert problem.kind == "deleted_row" and problem.event_id == str(gone.event_id)
    assert problem.event_time == gone.event_time and problem.chain_seq == 3
    assert problem.window_start == TODAY - dt.timedelta(days=2)


def test_inserted_row_with_a_valid_content_hash_is_caught(
    db: AuditDatabase, honest: list[AuditEvent], fresh_database: str
) -> None:
    # A well-formed event (its content hash is right) slipped into a sealed day with a back-dated ingestion time:
    # any writer can do this, no superuser needed.
    forged = event(day(3, 10), 7)
    future = event(day(3, 11), 8)
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        conn.execute(*_insert_statement(forged, ingested_at=day(3, 10)))
        conn.execute(*_insert_statement(future, ingested_at=dt.datetime.now(UTC) + dt.timedelta(days=30)))
    report = db.integrity.verify()
    inserted = {p.event_id: p for p in report.problems}
    assert kinds(report) == {"inserted_row"} and set(inserted) == {str(forged.event_id), str(future.event_id)}
    assert "ingested before the last seal's cutoff" in inserted[str(forged.event_id)].detail
    assert "future" in inserted[str(future.event_id)].detail
    assert inserted[str(forged.event_id)].window_start == TODAY - dt.timedelta(days=3)  # the day sealed as empty


# -- forged digests and the chain --------------------------------------------------------------------------------


def test_reordered_chain_is_caught(db: AuditDatabase, honest: list[AuditEvent], fresh_database: str) -> None:
    with superuser(fresh_database) as conn:
        for table in ("audit_digests", "audit_digest_leaves"):  # swap #2 and #3, leaves and all
            conn.execute(f"UPDATE {table} SET chain_seq = 100 WHERE chain_seq = 2")
            conn.execute(f"UPDATE {table} SET chain_seq = 2 WHERE chain_seq = 3")
            conn.execute(f"UPDATE {table} SET chain_seq = 3 WHERE chain_seq = 100")
    report = db.integrity.verify()
    broken = {p.chain_seq: p for p in report.of("broken_chain")}
    assert {2, 3} <= set(broken) and "re-ordered" in broken[2].detail
    assert {p.chain_seq for p in report.of("bad_signature")} == {2, 3}  # chain_seq is signed
    assert not report.of("deleted_row") and not report.of("inserted_row")


def test_removed_digests_are_caught_in_the_middle_and_at_the_tail(
    db: AuditDatabase, honest: list[AuditEvent], fresh_database: str
) -> None:
    with superuser(fresh_database) as conn:
        conn.execute("DELETE FROM audit_digests WHERE chain_seq IN (2, 4)")
        conn.execute("DELETE FROM audit_digest_leaves WHERE chain_seq IN (2, 4)")
    report = db.integrity.verify()
    missing = report.of("missing_digest")
    details = " | ".join(p.detail for p in missing)
    assert "#2..#2 are missing" in details  # a gap in chain_seq
    assert "ledger records digest #4" in details  # the tail: only the ledger (or an anchor) remembers it
    assert any(p.window_start == TODAY - dt.timedelta(days=3) for p in missing)  # a window without a digest
    assert report.status == "failed"


def test_forged_digest_row_is_caught(db: AuditDatabase, honest: list[AuditEvent], fresh_database: str) -> None:
    """Hide a deletion: delete an event, rewrite its digest's leaves, count and root so that they agree, and even
    recompute the digest hash. Only the signature (and the next digest's link) still tell."""
    gone = honest[0]
    with superuser(fresh_database) as conn:
        conn.execute("DELETE FROM audit_log WHERE event_id = %s", (gone.event_id,))
        (data,) = conn.execute("SELECT leaves FROM audit_digest_leaves WHERE chain_seq = 1").fetchone()
        leaves = [Leaf.from_record(bytes(data)[i:i + 64]) for i in range(0, len(bytes(data)), 64)]
        kept = [leaf for leaf in leaves if leaf.event_id != gone.event_id]
        row = conn.execute("SELECT * FROM audit_digests WHERE chain_seq = 1").fetchone()
        names = [c.name for c in conn.execute("SELECT * FROM audit_digests LIMIT 0").description]
        original = Digest.from_row(dict(zip(names, row)))
        forged = Digest(**{**original.__dict__, "event_count": 2, "merkle_root": merkle_root([x.hash() for x in kept])})
        conn.execute("UPDATE audit_digest_leaves SET leaves = %s WHERE chain_seq = 1",
                     (b"".join(x.record() for x in kept),))
        conn.execute("UPDATE audit_digests SET event_count = 2, merkle_root = %s, digest_hash = %s WHERE chain_seq = 1",
                     (forged.merkle_root, forged.computed_hash()))
    report = db.integrity.verify()
    assert {p.chain_seq for p in report.of("bad_signature")} == {1}
    assert {p.chain_seq for p in report.of("broken_chain")} == {2}
    assert not report.of("deleted_row")  # the leaves were rewritten: the signature is what catches it


def test_bad_signature_and_wrong_keys(
    db: AuditDatabase, honest: list[AuditEvent], fresh_database: str, keys: tuple[str, str], tmp_path: Path
) -> None:
    with superuser(fresh_database) as conn:
        conn.execute("UPDATE audit_digests SET signature = set_byte(signature, 0, get_byte(signature, 0) # 1)"
                     " WHERE chain_seq = 3")
    report = db.integrity.verify()
    (bad,) = report.problems
    assert bad.kind == "bad_signature" and bad.chain_seq == 3
    # An auditor with only the right public key sees the same; one with another key trusts nothing.
    auditor = make_settings(fresh_database, None, tmp_path, public_keys=keys[1])
    with AuditDatabase(auditor) as other:
        assert {p.chain_seq for p in other.integrity.verify(record=False).of("bad_signature")} == {3}
    stranger = make_settings(fresh_database, None, tmp_path, public_keys=generate_key_pair()[1])
    with AuditDatabase(stranger) as other:
        wrong = other.integrity.verify(record=False)
    assert {p.chain_seq for p in wrong.of("unknown_key")} == {1, 2, 3, 4} and not wrong.ok
    nobody = make_settings(fresh_database, None, tmp_path)
    with AuditDatabase(nobody) as other, pytest.raises(ConfigurationError, match="AUDIT_INTEGRITY__PUBLIC_KEYS"):
        other.integrity.verify()


def test_a_chain_resigned_with_another_key_is_not_trusted(
    db: AuditDatabase, honest: list[AuditEvent], fresh_database: str
) -> None:
    attacker = load_signing_key(generate_key_pair()[0])
    with superuser(fresh_database) as conn:
        names = [c.name for c in conn.execute("SELECT * FROM audit_digests LIMIT 0").description]
        rows = [Digest.from_row(dict(zip(names, r))) for r in conn.execute("SELECT * FROM audit_digests ORDER BY 1")]
        prev = bytes(32)
        for d in rows:  # a perfectly consistent chain, under the attacker's key
            forged = Digest(**{**d.__dict__, "prev_hash": prev, "key_id": key_id_of(attacker)})
            forged = Digest(**{**forged.__dict__, "digest_hash": forged.computed_hash(),
                               "signature": attacker.sign(forged.statement())})
            conn.execute("UPDATE audit_digests SET prev_hash = %s, key_id = %s, digest_hash = %s, signature = %s"
                         " WHERE chain_seq = %s",
                         (forged.prev_hash, forged.key_id, forged.digest_hash, forged.signature, d.chain_seq))
            prev = forged.digest_hash
    report = db.integrity.verify()
    assert {p.chain_seq for p in report.of("unknown_key")} == {1, 2, 3, 4}
    assert report.of("forged_digest")  # the ledger recorded the head's real hash


def test_a_read_only_auditor_verifies_with_the_public_key_alone(
    db: AuditDatabase, honest: list[AuditEvent], fresh_database: str, keys: tuple[str, str], tmp_path: Path
) -> None:
    from urllib.parse import urlsplit, urlunsplit

    role = f"auditor_{uuid.uuid4().hex[:10]}"  # SELECT on the audit tables, nothing else: no ledger writes
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute(f"GRANT SELECT ON audit_log, audit_partitions, audit_lifecycle_ledger, audit_digests,"
                     f" audit_digest_leaves TO {role}")
    parts = urlsplit(fresh_database)
    url = urlunsplit(parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port}"))
    try:
        with AuditDatabase(make_settings(url, None, tmp_path, public_keys=keys[1])) as auditor:
            report = auditor.integrity.verify()
            assert report.ok and report.events_checked == 6, report.summary()
            with pytest.raises(ConfigurationError, match="AUDIT_INTEGRITY__SIGNING_KEY"):
                auditor.integrity.seal()
    finally:
        with psycopg.connect(fresh_database, autocommit=True) as conn:
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")
    with psycopg.connect(fresh_database) as conn:
        assert entries(conn, operation="integrity_verify") == []  # it could not write the ledger, and said so


def test_anchors_pin_the_chain(db: AuditDatabase, honest: list[AuditEvent]) -> None:
    head = db.integrity.head()
    assert head is not None
    assert db.integrity.verify(anchors=[f"{head.chain_seq}:{head.digest_hash.hex()}"]).ok
    wrong = db.integrity.verify(anchors=[(head.chain_seq, "00" * 32), (99, "11" * 32)])
    assert {p.kind for p in wrong.problems} == {"forged_digest", "missing_digest"}
    with pytest.raises(AuditValidationError, match="anchor"):
        db.integrity.verify(anchors=["4:nothex"])


# -- late events and transactions in flight --------------------------------------------------------------------


def test_late_event_is_covered_by_a_supplement(db: AuditDatabase, honest: list[AuditEvent], fresh_database: str) -> None:
    late = event(day(3, 15), 42)  # for the day sealed as empty
    assert db.insert(late)
    pending = db.integrity.verify()
    assert pending.ok and pending.pending_events == 1  # not yet sealed, and not a problem
    result = seal(db)
    assert result.status == "sealed" and [(d.seq, d.event_count) for d in result.digests] == [(2, 1)]
    (supplement,) = result.digests
    assert supplement.window_start == TODAY - dt.timedelta(days=3) and supplement.chain_seq == 5
    digest = db.integrity.digests()[-1]
    assert digest.ingested_from is not None and digest.ingested_from == db.integrity.digests()[-2].ingested_to
    report = db.integrity.verify()
    assert report.ok and report.pending_events == 0 and report.events_checked == 7
    keys = sealed_keys(fresh_database)
    assert len(keys) == len(set(keys)) == 7  # every event in exactly one digest
    assert db.integrity.prove(late.event_time, late.event_id).digest.seq == 2


def test_one_seal_at_a_time(db: AuditDatabase, fresh_database: str) -> None:
    db.insert(event(day(2)))
    with psycopg.connect(fresh_database, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s, %s)", (LOCK_CLASS, LOCK_SEAL))  # a seal in progress elsewhere
        busy = seal(db)
        assert busy.status == "busy" and busy.digests == () and db.integrity.digests() == []
    assert seal(db).status == "sealed"


def test_history_arriving_before_the_first_window_extends_the_chain_backwards(
    db: AuditDatabase, honest: list[AuditEvent]
) -> None:
    old = event(day(7, 8), 77)
    assert db.insert(old)
    result = seal(db)
    assert [(d.window_start, d.seq, d.event_count) for d in result.digests] == [
        (TODAY - dt.timedelta(days=n), 1, 1 if n == 7 else 0) for n in (7, 6, 5)]
    assert db.integrity.verify().ok


def _writer_session(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(url, autocommit=False)


def test_an_open_transaction_across_a_seal_is_sealed_once_by_the_next(db: AuditDatabase, fresh_database: str) -> None:
    first = event(day(3, 6), 1)
    assert db.insert(first)
    # Two writers whose transactions straddle the seal: one has already written, one has only read so far (no xid
    # yet, but its rows will carry its start time, which is before the seal).
    wrote, reads = _writer_session(fresh_database), _writer_session(fresh_database)
    try:
        early = event(day(3, 7), 2)
        wrote.execute(*_insert_statement(early))
        reads.execute("SELECT count(*) FROM audit_log").fetchone()
        result = seal(db)
        assert result.status == "sealed" and result.events == 1  # only `first`: the others are in flight
        assert "transaction open since" in result.reason
        # Still open: the cutoff cannot move, and the seal says why instead of guessing.
        held = seal(db)
        assert held.status == "held_back" and "pid" in held.reason
        # Out of order: the later transaction commits first, then the earlier one.
        late = event(day(2, 9), 3)
        reads.execute(*_insert_statement(late))
        reads.commit()
        wrote.commit()
    finally:
        wrote.close()
        reads.close()
    between = db.integrity.verify()
    assert between.ok and between.pending_events == 2, between.summary()  # not "inserted": they were in flight
    result = seal(db)
    assert result.status == "sealed" and result.events == 2
    assert {(d.window_start, d.seq) for d in result.digests} == {(TODAY - dt.timedelta(days=n), 2) for n in (3, 2)}
    report = db.integrity.verify()
    assert report.ok and report.pending_events == 0 and report.events_checked == 3
    keys = sealed_keys(fresh_database)
    assert sorted(keys) == sorted((e.event_time, e.event_id) for e in (first, early, late))


def _insert_statement(ev: AuditEvent, ingested_at: dt.datetime | None = None) -> tuple[str, tuple[Any, ...]]:
    """A plain INSERT of ``ev`` as the library writes it (``ingested_at`` left to the server unless given)."""
    columns = [*EVENT_COLUMNS, "content_hash"] + (["ingested_at"] if ingested_at is not None else [])
    values = (*ev.row(), *([ingested_at] if ingested_at is not None else []))
    return (f"INSERT INTO audit_log ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))})", values)


def test_concurrent_writers_and_seals_cover_every_event_exactly_once(db: AuditDatabase, fresh_database: str) -> None:
    """Writers insert into past days while seals run back to back; at the end every event is in one digest."""
    stop = threading.Event()
    written: list[AuditEvent] = []
    errors: list[BaseException] = []

    def writer(k: int) -> None:
        try:
            with AuditDatabase(db.settings) as own:
                i = 0
                while not stop.is_set() and i < 60:
                    batch = [event(day(1 + (i + j) % 3, (i + j) % 24), 1000 * k + i + j) for j in range(3)]
                    own.insert_many(batch)
                    written.extend(batch)
                    i += 3
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    statuses = []
    try:
        for _ in range(6):
            statuses.append(seal(db).status)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert not errors, errors
    assert set(statuses) <= {"sealed", "nothing_to_seal", "held_back"}
    while seal(db).status == "sealed":
        pass
    report = db.integrity.verify()
    assert report.ok and report.pending_events == 0, report.summary()
    keys = sealed_keys(fresh_database)
    assert len(keys) == len(set(keys)) and set(keys) == {(e.event_time, e.event_id) for e in written}


# -- inclusion proofs ------------------------------------------------------------------------------------------------


def test_inclusion_proof_verifies_alone_and_every_forgery_fails(
    db: AuditDatabase, honest: list[AuditEvent], keys: tuple[str, str]
) -> None:
    target = honest[1]
    proof = db.integrity.prove(target.event_time, target.event_id)
    text = proof.to_json()
    public = keys[1]
    check = verify_proof(text, public)
    assert check.ok and check.problems == () and check.digest_hash == proof.digest.digest_hash.hex()
    assert verify_proof(text, public, event=target).ok
    assert verify_proof(text, public, digest_hash=proof.digest.digest_hash.hex()).ok

    def forged(**changes: Any) -> dict[str, Any]:
        doc = json.loads(text)
        for path, value in changes.items():
            node = doc
            *parents, last = path.split("__")
            for p in parents:
                node = node[p]
            node[last] = value
        return doc

    doc = json.loads(text)
    path = doc["path"]
    assert len(path) == 2  # three leaves: the target (index 1) has a sibling and an uncle
    other_root = db.integrity.prove(honest[4].event_time, honest[4].event_id)
    cases = {
        "wrong sibling order": forged(path=list(reversed(path))),
        "wrong index": forged(leaf_index=0),
        "index outside the tree": forged(leaf_index=3),
        "truncated path": forged(path=path[:1]),
        "padded path": forged(path=[*path, "ab" * 32]),
        "smaller tree": forged(tree_size=2),
        "another content hash": forged(leaf__content_hash=honest[0].content_hash.hex()),
        "another event id": forged(leaf__event_id=str(uuid.uuid4())),
        "proof for another root": {**doc, "digest": other_root.to_dict()["digest"]},
        "altered digest root": forged(digest__merkle_root="00" * 32),
        "altered digest count": forged(digest__event_count=2, tree_size=2),
        "forged signature": forged(digest__signature=json.loads(other_root.to_json())["digest"]["signature"]),
    }
    for name, bad in cases.items():
        result = verify_proof(bad, public)
        assert not result.ok and result.problems, name
    assert not verify_proof(text, generate_key_pair()[1]).ok  # wrong key
    assert not verify_proof(text, public, event=honest[0]).ok  # another event
    assert not verify_proof(text, public, event=target.model_copy(update={"action": "patient.record.write"})).ok
    assert not verify_proof(text, public, digest_hash="ab" * 32).ok  # not the anchored digest
    for junk in ("{", "[]", json.dumps({**doc, "version": 9}), json.dumps({**doc, "path": "x"}), b"\xff"):
        malformed = verify_proof(junk, public)
        assert not malformed.ok and malformed.problems[0].startswith("malformed proof")
    with pytest.raises(AuditValidationError, match="public_keys"):
        verify_proof(text, "not a key")


def test_an_interior_node_cannot_be_proved_as_an_event(
    db: AuditDatabase, fresh_database: str, keys: tuple[str, str]
) -> None:
    """Second preimage: a 64-byte leaf record has the size of two child hashes. Claim the two children of the left
    interior node of a 4-event digest as the record of a leaf in a 2-leaf tree, with the right node as its path."""
    four = [event(day(2, h), h) for h in (1, 2, 3, 4)]
    db.insert_many(four)
    seal(db)
    proof = db.integrity.prove(four[0].event_time, four[0].event_id)
    assert proof.tree_size == 4
    leaves = sorted((db.integrity.prove(e.event_time, e.event_id).leaf for e in four), key=lambda x: x.key)
    h = [leaf.hash() for leaf in leaves]
    left, right = node_hash(h[0], h[1]), node_hash(h[2], h[3])
    assert node_hash(left, right) == proof.digest.merkle_root

    class RawLeaf(Leaf):  # the 64 bytes as a verifier would receive them, whatever fields they would parse to
        def record(self) -> bytes:
            return h[0] + h[1]

    fake = RawLeaf(leaves[0].event_time, leaves[0].event_id, leaves[0].ingested_at, leaves[0].content_hash)
    forged = InclusionProof(fake, 0, 2, (right,), proof.digest)
    result = verify_proof(forged, keys[1])
    assert not result.ok and any("another root" in p for p in result.problems)
    assert leaf_hash(fake.record()) != left  # 0x00 vs 0x01: the leaf and the node hash apart


def test_prove_refuses_unsealed_and_unknown_events(db: AuditDatabase, honest: list[AuditEvent]) -> None:
    pending = event(day(1, 1), 5)
    db.insert(pending)
    with pytest.raises(AuditValidationError, match="not in any digest"):
        db.integrity.prove(pending.event_time, pending.event_id)
    with pytest.raises(AuditValidationError, match="event_id"):
        db.integrity.prove(pending.event_time, "nope")
    with pytest.raises(AuditValidationError, match="timezone-aware"):
        db.integrity.prove(dt.datetime(2026, 1, 1), pending.event_id)


# -- empty periods and bad input ------------------------------------------------------------------------------------


def test_periods_with_no_data_have_a_clear_outcome(db: AuditDatabase) -> None:
    nothing = db.integrity.verify()
    assert nothing.status == "incomplete" and not nothing.ok and "nothing has been sealed yet" in nothing.summary()
    assert db.integrity.seal().status == "nothing_to_seal"  # an empty log: no window to start the chain from
    db.insert(event(day(3, 1)))
    seal(db)
    empty_day = db.integrity.verify(since=TODAY - dt.timedelta(days=2), until=TODAY - dt.timedelta(days=1))
    assert empty_day.ok and empty_day.events_checked == 0 and empty_day.windows_checked == 1  # sealed as empty
    future = db.integrity.verify(since=TODAY + dt.timedelta(days=10), until=TODAY + dt.timedelta(days=11))
    assert future.status == "incomplete" and "not sealed yet" in future.summary() and future.windows_checked == 0
    past = db.integrity.verify(since=dt.datetime(2001, 1, 1, tzinfo=UTC), until=dt.datetime(2001, 1, 2, tzinfo=UTC))
    assert past.status == "incomplete" and "before the first sealed window" in past.summary()
    with pytest.raises(AuditValidationError, match="until"):
        db.integrity.verify(since=TODAY, until=TODAY - dt.timedelta(days=1))
    with pytest.raises(AuditValidationError, match="since"):
        db.integrity.verify(since=dt.datetime(2026, 1, 1))


def test_settings_are_checked(fresh_database: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="AUDIT_INTEGRITY__SIGNING_KEY"):
        make_settings(fresh_database, "c2hvcnQ=", tmp_path)
    with pytest.raises(ConfigurationError, match="AUDIT_INTEGRITY__WINDOW"):
        make_settings(fresh_database, None, tmp_path, window="1 month")
    with pytest.raises(ConfigurationError, match="AUDIT_INTEGRITY__PUBLIC_KEYS"):
        make_settings(fresh_database, None, tmp_path, public_keys="abc,def")
    with AuditDatabase(make_settings(fresh_database, None, tmp_path)) as db:
        with pytest.raises(ConfigurationError, match="AUDIT_INTEGRITY__SIGNING_KEY"):
            db.integrity.seal()
    # Two-day windows do not nest in monthly partitions.
    with AuditDatabase(make_settings(fresh_database, generate_key_pair()[0], tmp_path, window="2 days")) as db:
        with pytest.raises(ConfigurationError, match="AUDIT_INTEGRITY__WINDOW"):
            db.integrity.seal()


def test_the_private_key_never_shows(fresh_database: str, tmp_path: Path, keys: tuple[str, str]) -> None:
    settings = make_settings(fresh_database, keys[0], tmp_path)
    assert keys[0] not in repr(settings) and keys[0] not in str(settings.model_dump())
    with AuditDatabase(settings) as db:
        db.insert(event(day(2)))
        seal(db)
        with psycopg.connect(fresh_database) as conn:
            ledger_text = json.dumps([e.details for e in entries(conn)], default=str)
    assert keys[0] not in ledger_text


# -- archives ----------------------------------------------------------------------------------------------------


@pytest.fixture
def archived(db: AuditDatabase) -> list[AuditEvent]:
    """January 2021: events on three days, sealed (only January), archived with its digest copy."""
    db.partitions.create_partition("2021-01")
    jan = [event(dt.datetime(2021, 1, d, h, tzinfo=UTC), 100 * d + h) for d in (5, 6, 20) for h in (1, 13)]
    db.insert_many(jan)
    result = seal(db, until=dt.datetime(2021, 2, 1, tzinfo=UTC))
    assert result.status == "sealed" and len(result.digests) == 27  # Jan 5 .. Jan 31
    db.partitions.archive("2021-01")
    return jan


def test_archival_writes_the_digests_next_to_the_archive(
    db: AuditDatabase, archived: list[AuditEvent], tmp_path: Path, fresh_database: str
) -> None:
    copy = archive_dir(tmp_path / "archive", "audit_log_p2021_01") / ARCHIVE_COPY_NAME
    doc = json.loads(copy.read_bytes())
    assert len(doc["digests"]) == 27 and doc["chain"][0]["chain_seq"] == 1
    assert doc["unsealed"] == [["2021-01-01T00:00:00.000000Z", "2021-01-05T00:00:00.000000Z"]]
    with psycopg.connect(fresh_database) as conn:
        (entry,) = entries(conn, operation="integrity_copy")
    assert entry.partition_name == "audit_log_p2021_01" and entry.row_count == 6
    report = db.integrity.verify()
    assert report.ok and report.events_checked == 6, report.summary()


def test_verification_survives_purge_and_reads_the_archive(db: AuditDatabase, archived: list[AuditEvent]) -> None:
    purged = db.partitions.purge(dry_run=False)
    assert purged.purged == ["audit_log_p2021_01"]
    report = db.integrity.verify()
    assert report.ok and report.events_checked == 6, report.summary()
    proof = db.integrity.prove(archived[0].event_time, archived[0].event_id)
    assert verify_proof(proof, db.integrity.public_key() or "").ok


def _rewrite_archive(path: Path, change: Any) -> None:
    table = pq.read_table(path)
    rows = table.to_pylist()
    change(rows)
    import pyarrow as pa

    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), path, compression="zstd")


def test_an_edited_archive_file_is_caught_and_the_row_located(
    db: AuditDatabase, archived: list[AuditEvent], tmp_path: Path
) -> None:
    db.partitions.purge(dry_run=False)
    data = archive_dir(tmp_path / "archive", "audit_log_p2021_01") / "data-00000.parquet"
    victim = archived[2]

    def edit(rows: list[dict[str, Any]]) -> None:
        for row in rows:
            if row["event_id"] == str(victim.event_id):
                row["principal_id"] = "nobody"

    _rewrite_archive(data, edit)
    report = db.integrity.verify()
    assert report.status == "failed"
    assert any("sha256 differs" in p.detail for p in report.of("archive"))
    (modified,) = report.of("modified_row")
    assert modified.event_id == str(victim.event_id) and modified.source == "audit_log_p2021_01/data-00000.parquet"


def test_a_truncated_archive_is_reported_not_a_crash(
    db: AuditDatabase, archived: list[AuditEvent], tmp_path: Path
) -> None:
    db.partitions.purge(dry_run=False)
    data = archive_dir(tmp_path / "archive", "audit_log_p2021_01") / "data-00000.parquet"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    report = db.integrity.verify()
    assert report.status == "failed" and not report.ok
    assert kinds(report) == {"archive"}
    unreadable = [p for p in report.of("archive") if "cannot be read from the archive" in p.detail]
    assert {p.window_start for p in unreadable} == {dt.datetime(2021, 1, d, tzinfo=UTC) for d in range(5, 32)}


def test_a_forged_digest_copy_in_the_archive_is_caught(
    db: AuditDatabase, archived: list[AuditEvent], tmp_path: Path
) -> None:
    copy = archive_dir(tmp_path / "archive", "audit_log_p2021_01") / ARCHIVE_COPY_NAME
    doc = json.loads(copy.read_bytes())
    doc["digests"][0]["digest"]["event_count"] = 1
    doc["chain"][0]["event_count"] = 1
    copy.write_bytes(json.dumps(doc).encode())
    report = db.integrity.verify()
    details = " | ".join(p.detail for p in report.problems)
    assert "differs from the one written at archival" in details
    assert {p.chain_seq for p in report.of("forged_digest")} >= {1} and report.of("bad_signature")
    copy.unlink()
    assert any("missing" in p.detail for p in db.integrity.verify().of("archive"))
