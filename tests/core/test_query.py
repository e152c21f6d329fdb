"""AuditQuery: validation, and the SQL builder's guarantee that values never enter the SQL text."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audit_db_core import AuditQuery, AuditValidationError
from audit_db_core.query import count_statement, page_size, select_statement

UTC = dt.UTC

BAD_QUERIES: list[tuple[str, dict[str, Any], str]] = [
    ("naive since", {"since": dt.datetime(2026, 1, 1)}, "since"),
    ("since after until", {"since": dt.datetime(2026, 2, 1, tzinfo=UTC), "until": dt.datetime(2026, 1, 1, tzinfo=UTC)}, "until"),
    ("limit zero", {"limit": 0}, "limit"),
    ("limit huge", {"limit": 1_000_000}, "limit"),
    ("unknown status", {"status": "done"}, "status"),
    ("empty action list", {"action": []}, "action"),
    ("unknown classification", {"data_classification": ["PHI", "TOP"]}, "data_classification"),
    ("details not an object", {"details_contains": ["x"]}, "details_contains"),
    ("empty details", {"details_contains": {}}, "details_contains"),
    ("NUL in principal", {"principal_id": "a\x00"}, "principal_id"),
    ("unknown filter", {"patient": "x"}, "patient"),
    ("empty principal", {"principal_id": ""}, "principal_id"),
]


@pytest.mark.parametrize("label,data,field", BAD_QUERIES, ids=[b[0] for b in BAD_QUERIES])
def test_bad_query_is_refused_naming_the_field(label: str, data: dict[str, Any], field: str) -> None:
    with pytest.raises(AuditValidationError) as info:
        AuditQuery(**data)
    assert any(f == field or f.startswith(field + ".") for f in info.value.fields), info.value.fields
    assert field in str(info.value)


def test_limit_above_the_configured_cap_names_limit() -> None:
    with pytest.raises(AuditValidationError) as info:
        page_size(AuditQuery(limit=5000), max_page_size=1000)
    assert info.value.fields == ["limit"]


def test_forged_cursor_is_refused() -> None:
    for cursor in ("not-a-cursor", "eyJ0IjoxfQ", "e30"):
        with pytest.raises(AuditValidationError) as info:
            select_statement(AuditQuery(cursor=cursor), 100)
        assert info.value.fields == ["cursor"]


# -- property tests: any input either fails validation or yields SQL whose text does not contain it -------------------

text = st.text(max_size=40)
times = st.datetimes(min_value=dt.datetime(1970, 1, 1), max_value=dt.datetime(2200, 1, 1), timezones=st.just(UTC))
query_data = st.fixed_dictionaries(
    {},
    optional={
        "since": times,
        "until": times,
        "principal_id": text,
        "organization_id": text,
        "action": st.one_of(text, st.lists(text, max_size=4)),
        "status": st.one_of(st.sampled_from(["attempt", "success", "failure"]), st.lists(st.sampled_from(["attempt", "success", "failure", "x"]), max_size=3)),
        "target_resource_type": text,
        "target_resource_id": text,
        "data_classification": st.lists(st.sampled_from(["PUBLIC", "INTERNAL", "CONFIDENTIAL", "PHI", "'; DROP TABLE audit_log; --"]), max_size=3),
        "correlation_id": text,
        "session_id": text,
        "details_contains": st.dictionaries(text, st.one_of(text, st.integers(), st.booleans()), max_size=3),
        "limit": st.integers(-5, 2000),
    },
)

MARKER = "x'\"); DROP TABLE audit_log; --"


def _build(data: dict[str, Any]) -> AuditQuery | None:
    try:
        return AuditQuery(**data)
    except AuditValidationError as err:
        assert err.problems and all(p.field for p in err.problems)
        return None


@pytest.fixture(scope="module")
def conn(shared_database: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(shared_database, autocommit=True) as c:
        yield c


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(query_data)
def test_sql_text_depends_only_on_which_filters_are_set(conn: psycopg.Connection, data: dict[str, Any]) -> None:
    q = _build(data)
    if q is None:
        return
    try:
        stmt, params = select_statement(q, page_size(q, max_page_size=1000))
    except AuditValidationError as err:
        assert err.fields == ["limit"]
        return
    text_sql = stmt.as_string(conn)
    # Replace every string value with a hostile marker: the SQL text must not change, and must not contain it.
    hostile = {k: _hostile(v) for k, v in data.items()}
    q2 = _build(hostile)
    if q2 is not None:
        stmt2, params2 = select_statement(q2, page_size(q2, max_page_size=1000))
        assert stmt2.as_string(conn) == text_sql
        assert MARKER not in text_sql and len(params2) == len(params)
    # And PostgreSQL accepts it (plans it with the parameters), whatever the values.
    conn.execute(psycopg.sql.SQL("EXPLAIN ") + stmt, params)
    cstmt, cparams = count_statement(q)
    conn.execute(cstmt, cparams)


def _hostile(value: Any) -> Any:
    """Same shape, hostile text; equal values stay equal and distinct ones distinct (lists are de-duplicated)."""
    if isinstance(value, str) and value not in ("attempt", "success", "failure", "PUBLIC", "INTERNAL", "CONFIDENTIAL", "PHI"):
        return MARKER + value.encode("utf-8", "surrogatepass").hex()[:24]
    if isinstance(value, list):
        return [_hostile(v) for v in value]
    if isinstance(value, dict):
        return {MARKER + str(i): _hostile(v) for i, v in enumerate(value.values())}
    return value


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text, text)
def test_hostile_strings_are_plain_data(conn: psycopg.Connection, principal: str, action: str) -> None:
    q = _build({"principal_id": principal + MARKER, "action": [action + MARKER, "x"]})
    if q is None:
        return
    stmt, params = select_statement(q, 100)
    rows = conn.execute(stmt, params).fetchall()
    assert rows == []
    assert conn.execute("SELECT to_regclass('audit_log') IS NOT NULL").fetchone() == (True,)
