"""AuditEvent: defaults, validation (every refusal names the field), canonical form and content hash."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audit_db_core import AuditEvent, AuditValidationError, DataClassification, EventStatus
from audit_db_core.events import MAX_DETAILS_BYTES, MAX_DETAILS_DEPTH, canonical_json

BASE: dict[str, Any] = {"action": "patient.record.read", "status": "success", "principal_id": "dr.house"}


def test_library_fills_id_and_time() -> None:
    before = dt.datetime.now(dt.UTC)
    a, b = AuditEvent(**BASE), AuditEvent(**BASE)
    assert a.event_id.version == 7 and b.event_id.version == 7
    assert a.event_id != b.event_id
    assert a.event_time.tzinfo is dt.UTC and before <= a.event_time <= dt.datetime.now(dt.UTC)
    # UUIDv7 embeds the creation time in its first 48 bits (milliseconds since the epoch).
    embedded = dt.datetime.fromtimestamp((a.event_id.int >> 80) / 1000, dt.UTC)
    assert abs(embedded - before) < dt.timedelta(seconds=5)


def test_times_are_stored_in_utc() -> None:
    plus2 = dt.timezone(dt.timedelta(hours=2))
    ev = AuditEvent(**BASE, event_time=dt.datetime(2026, 3, 1, 1, 30, tzinfo=plus2))
    assert ev.event_time == dt.datetime(2026, 2, 28, 23, 30, tzinfo=dt.UTC)
    assert ev.event_time.utcoffset() == dt.timedelta(0)
    assert AuditEvent(**BASE, event_time="2026-03-01T00:00:00Z").event_time.year == 2026


def test_enums_accept_their_values() -> None:
    ev = AuditEvent(**{**BASE, "status": "failure"}, data_classification="PHI")
    assert ev.status is EventStatus.FAILURE and ev.data_classification is DataClassification.PHI


def test_events_are_immutable() -> None:
    ev = AuditEvent(**BASE)
    with pytest.raises(Exception):
        ev.action = "other"  # type: ignore[misc]


BAD_EVENTS: list[tuple[str, dict[str, Any], str]] = [
    ("missing action", {"status": "success", "principal_id": "u"}, "action"),
    ("missing status", {"action": "a", "principal_id": "u"}, "status"),
    ("missing principal", {"action": "a", "status": "success"}, "principal_id"),
    ("unknown status", {**BASE, "status": "ok"}, "status"),
    ("unknown classification", {**BASE, "data_classification": "SECRET"}, "data_classification"),
    ("lower-case classification", {**BASE, "data_classification": "phi"}, "data_classification"),
    ("empty principal", {**BASE, "principal_id": ""}, "principal_id"),
    ("principal too long", {**BASE, "principal_id": "u" * 257}, "principal_id"),
    ("action with spaces", {**BASE, "action": "read record"}, "action"),
    ("action too long", {**BASE, "action": "a" * 129}, "action"),
    ("naive event_time", {**BASE, "event_time": dt.datetime(2026, 1, 1)}, "event_time"),
    ("unparseable event_time", {**BASE, "event_time": "yesterday"}, "event_time"),
    ("event_id not a uuid", {**BASE, "event_id": "1234"}, "event_id"),
    ("details a list", {**BASE, "details": [1, 2]}, "details"),
    ("details a string", {**BASE, "details": "{}"}, "details"),
    ("details with NaN", {**BASE, "details": {"x": float("nan")}}, "details"),
    ("details with a non-JSON type", {**BASE, "details": {"when": dt.datetime.now(dt.UTC)}}, "details"),
    ("details with a NUL", {**BASE, "details": {"note": "a\x00b"}}, "details"),
    ("details too deep", {**BASE, "details": {"a": [[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]}}, "details"),
    ("details too large", {**BASE, "details": {"blob": "x" * (MAX_DETAILS_BYTES + 1)}}, "details"),
    ("NUL in a text field", {**BASE, "target_resource_id": "p\x001"}, "target_resource_id"),
    ("lone surrogate", {**BASE, "principal_id": "u\ud800"}, "principal_id"),
    ("negative latency", {**BASE, "processing_latency_ms": -1}, "processing_latency_ms"),
    ("latency as text", {**BASE, "processing_latency_ms": "fast"}, "processing_latency_ms"),
    ("unknown field", {**BASE, "patient_name": "John"}, "patient_name"),
    ("principal not a string", {**BASE, "principal_id": 42}, "principal_id"),
    ("retention policy with spaces", {**BASE, "retention_policy": "seven years"}, "retention_policy"),
    ("outcome too long", {**BASE, "outcome_description": "x" * 4001}, "outcome_description"),
]


@pytest.mark.parametrize("label,data,field", BAD_EVENTS, ids=[b[0] for b in BAD_EVENTS])
def test_bad_event_is_refused_naming_the_field(label: str, data: dict[str, Any], field: str) -> None:
    with pytest.raises(AuditValidationError) as info:
        AuditEvent(**data)
    err = info.value
    assert any(f == field or f.startswith(field + ".") for f in err.fields), err.fields
    assert field in str(err)
    assert err.category.value == "validation"


def test_errors_do_not_echo_values() -> None:
    secret = "Jane Doe, DOB 1970-01-01"
    with pytest.raises(AuditValidationError) as info:
        AuditEvent(**{**BASE, "principal_id": secret * 20})
    assert secret not in str(info.value)


def test_model_validate_raises_the_library_error() -> None:
    with pytest.raises(AuditValidationError) as info:
        AuditEvent.model_validate({"action": "a"})
    assert set(info.value.fields) >= {"status", "principal_id"}


def test_canonical_form_covers_every_field() -> None:
    ev = AuditEvent(
        **BASE,
        organization_id="org-1",
        target_resource_type="Patient",
        target_resource_id="p-1",
        outcome_description="ok",
        data_classification="PHI",
        retention_policy="hipaa",
        correlation_id="c-1",
        session_id="s-1",
        source="ehr",
        event_version="2",
        processing_latency_ms=12,
        details={"b": 1, "a": {"z": [1, 2.5]}},
    )
    canon = json.loads(ev.canonical_bytes())
    assert set(canon) == set(AuditEvent.model_fields)
    assert canon["details"] == {"a": {"z": [1, 2.5]}, "b": 1}
    assert canon["event_time"].endswith("Z")
    assert ev.content_hash == hashlib.sha256(ev.canonical_bytes()).digest()
    # Changing any one field changes the hash, details included.
    for change in ({"details": {"b": 2, "a": {"z": [1, 2.5]}}}, {"source": "other"}, {"processing_latency_ms": 13}):
        other = AuditEvent(**{**ev.model_dump(), **change})
        assert other.content_hash != ev.content_hash


def test_canonical_numbers_do_not_depend_on_spelling() -> None:
    assert canonical_json({"n": 1}) == canonical_json({"n": 1.0}) == '{"n":1}'
    assert canonical_json({"n": 1e100}) == '{"n":1' + "0" * 100 + "}"
    assert canonical_json({"n": -0.0}) == '{"n":0}'
    assert canonical_json({"b": True, "a": None}) == '{"a":null,"b":true}'


json_scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False) | st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=8), inner, max_size=4),
    max_leaves=20,
)
details_strategy = st.dictionaries(st.text(max_size=8).filter(lambda s: "\x00" not in s and _encodable(s)), json_values, max_size=5)


def _encodable(s: str) -> bool:
    try:
        s.encode()
        return True
    except UnicodeEncodeError:
        return False


@settings(max_examples=200, deadline=None)
@given(details_strategy)
def test_hash_survives_a_json_round_trip(details: dict[str, Any]) -> None:
    ev = AuditEvent(**BASE, details=details)
    again = AuditEvent(**{**ev.model_dump(), "details": json.loads(ev.details_json())})
    assert again.content_hash == ev.content_hash


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=5), st.one_of(st.text(max_size=5), st.integers(), st.floats()), max_size=4))
def test_validator_either_accepts_or_names_details(details: dict[str, Any]) -> None:
    try:
        ev = AuditEvent(**BASE, details=details)
    except AuditValidationError as err:
        assert all(f.startswith("details") for f in err.fields)
    else:
        json.loads(ev.details_json())  # what is accepted is valid JSON
        canonical_json(ev.details)


def test_depth_limit_is_exact() -> None:
    ok: Any = 1
    for _ in range(MAX_DETAILS_DEPTH - 1):
        ok = [ok]
    AuditEvent(**BASE, details={"a": ok})
    with pytest.raises(AuditValidationError):
        AuditEvent(**BASE, details={"a": [ok]})


def test_explicit_event_id_is_kept() -> None:
    given_id = uuid.UUID("01890a5d-ac96-774b-bcce-b302099a8057")
    assert AuditEvent(**BASE, event_id=str(given_id)).event_id == given_id


def test_pool_timeout_is_a_timeout() -> None:
    from psycopg_pool import PoolTimeout

    from audit_db_core import AuditTimeoutError, classify

    assert isinstance(classify(PoolTimeout("couldn't get a connection after 1.00 sec")), AuditTimeoutError)


def test_details_are_the_events_own_copy() -> None:
    mine = {"fields": ["allergies"], "n": 1.0}
    ev = AuditEvent(**BASE, details=mine)
    before = ev.content_hash
    mine["fields"].append("meds")  # the caller keeps mutating its dict
    assert ev.details == {"fields": ["allergies"], "n": 1} and ev.content_hash == before
    assert json.loads(ev.canonical_bytes())["details"] == ev.details


class _Float(float):
    def __repr__(self) -> str:  # like numpy.float64: a repr that is not a JSON number
        return f"_Float({float(self)!r})"


def test_float_subclasses_hash_like_plain_floats() -> None:
    plain = AuditEvent(**BASE, event_id="01890a5d-ac96-774b-bcce-b302099a8057", details={"x": 3.0, "y": 1e100, "z": 0.5})
    sub = AuditEvent(**{**plain.model_dump(), "details": {"x": _Float(3.0), "y": _Float(1e100), "z": _Float(0.5)}})
    assert sub.content_hash == plain.content_hash


@settings(max_examples=100, deadline=None)
@given(details_strategy, st.text(min_size=1, max_size=30).filter(lambda s: "\x00" not in s and _encodable(s)))
def test_canonical_text_is_the_sorted_json_of_canonical_dict(details: dict[str, Any], source: str) -> None:
    ev = AuditEvent(**BASE, details=details, source=source, correlation_id="c", processing_latency_ms=5)
    assert ev.canonical_bytes().decode() == canonical_json(ev.canonical_dict())


TEXT_FIELDS = ["action", "principal_id", "organization_id", "target_resource_type", "target_resource_id",
               "outcome_description", "retention_policy", "correlation_id", "session_id", "source", "event_version"]


@pytest.mark.parametrize("field", TEXT_FIELDS)
def test_every_text_field_refuses_nul(field: str) -> None:
    assert set(TEXT_FIELDS) == {n for n, f in AuditEvent.model_fields.items() if f.annotation in (str, "str", str | None, "str | None")}
    with pytest.raises(AuditValidationError) as info:
        AuditEvent(**{**BASE, field: "ab\x00c"})
    assert field in info.value.fields
