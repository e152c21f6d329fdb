"""``insert_many`` of plain dicts: each is checked and hashed as it streams to the server, and stored exactly as the
``AuditEvent`` built from it would be; an invalid one fails its batch, named by index and field."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import psycopg
import pytest

from audit_db_core import AuditDatabase, AuditEvent, AuditQuery, AuditSettings, AuditValidationError
from audit_db_core.events import EVENT_COLUMNS

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


def event_dict(i: int, **kw: Any) -> dict[str, Any]:
    """Event ``i`` as a plain dict, with its own id (re-sending it is then idempotent)."""
    return {
        "event_id": uuid.uuid5(uuid.NAMESPACE_URL, f"test-ingest-dicts/{i}"), "event_time": NOW - dt.timedelta(minutes=i), "action": "patient.record.read", "status": "success",
        "principal_id": f"u{i % 3}", "target_resource_type": "Patient", "target_resource_id": f"p-{i}",
        "data_classification": "PHI", "details": {"i": i, "score": 0.25, "fields": ["vitals"], "n": 2.0}, **kw,
    }


def stored_rows(url: str) -> dict[Any, tuple[Any, ...]]:
    columns = ", ".join([*EVENT_COLUMNS, "content_hash"])
    with psycopg.connect(url) as conn:
        conn.execute("SET TIME ZONE 'UTC'")
        rows = conn.execute(f"SELECT {columns}, details::text FROM audit_log").fetchall()  # noqa: S608 - fixed names
    return {row[0]: row for row in rows}


def test_a_dict_and_its_event_store_the_same_row_and_hash(db: AuditDatabase, fresh_database: str) -> None:
    dicts = [event_dict(i) for i in range(40)]
    events = [AuditEvent(**d) for d in dicts]
    assert db.insert_many(dicts[:20] + events[20:]) == 40
    assert db.insert_many(events[:20] + dicts[20:]) == 0  # the same events: already stored
    rows = stored_rows(fresh_database)
    for event in events:
        row = rows[event.event_id]
        assert row[: len(EVENT_COLUMNS) - 1] == event.row()[: len(EVENT_COLUMNS) - 1]
        assert bytes(row[len(EVENT_COLUMNS)]) == event.content_hash
    page = db.query(AuditQuery(limit=100))
    assert len(page) == 40 and all(back.hash_matches for back in page.events)
    assert {back.stored_content_hash for back in page.events} == {e.content_hash for e in events}


def test_an_invalid_dict_fails_its_batch_naming_index_and_field(settings: AuditSettings) -> None:
    with AuditDatabase(settings.with_overrides(ingest={"batch_size": 5})) as db:
        items: list[Any] = [event_dict(i) for i in range(12)]
        items[8] = event_dict(8, details={"note": "a\x00b"})
        with pytest.raises(AuditValidationError) as info:
            db.insert_many(items)
        assert info.value.fields == ["events[8].details"]
        assert "contains a NUL character" in str(info.value)
        assert "5 events before this batch are stored" in str(info.value)
        assert db.count(AuditQuery()) == 5  # the first batch; nothing of the second
        items[8] = event_dict(8)
        assert db.insert_many(items) == 7  # re-sending it all is safe


@pytest.mark.parametrize("bad,field", [
    ({"status": "done"}, "events[3].status"),
    ({"principal_id": "u\x00"}, "events[3].principal_id"),
    ({"details": {"x": float("nan")}}, "events[3].details"),
    ({"patient_name": "Jane"}, "events[3].patient_name"),
])
def test_the_error_of_an_invalid_dict_is_that_of_its_event(db: AuditDatabase, bad: dict[str, Any], field: str) -> None:
    items: list[Any] = [event_dict(i) for i in range(6)]
    items[3] = {**items[3], **bad}
    with pytest.raises(AuditValidationError) as direct:
        AuditEvent(**items[3])
    with pytest.raises(AuditValidationError) as info:
        db.insert_many(items)
    assert info.value.fields == [field]
    assert [p.reason for p in info.value.problems] == [p.reason for p in direct.value.problems]
    assert db.count(AuditQuery()) == 0


def test_an_invalid_dict_in_a_transaction_leaves_the_transaction_usable(db: AuditDatabase) -> None:
    with db.transaction() as tx:
        assert tx.insert_many([event_dict(i) for i in range(3)]) == 3
        with pytest.raises(AuditValidationError) as info:
            tx.insert_many([event_dict(10), event_dict(11, status="nope")])
        assert info.value.fields == ["events[1].status"]
        assert tx.insert_many([event_dict(20)]) == 1
    assert db.count(AuditQuery()) == 4


def test_dicts_written_are_seen_by_a_cached_query(db: AuditDatabase) -> None:
    window = AuditQuery(principal_id="u0", since=NOW - dt.timedelta(hours=1), until=NOW + dt.timedelta(hours=1))
    assert db.count(window) == 0
    assert len(db.query(window)) == 0  # cached now
    db.insert_many([event_dict(i) for i in range(9)])
    assert len(db.query(window)) == 3
    with db.transaction() as tx:
        tx.insert_many([event_dict(i) for i in range(9, 12)])
    assert len(db.query(window)) == 4
