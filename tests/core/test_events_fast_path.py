"""AuditEvent's fast construction (what ``AuditEvent(**d)`` and ``insert_many`` of dicts take) against its checked
construction, which applies every rule one by one: for every input, the same event, canonical form, hash and row,
or the same refusal naming the same fields for the same reasons."""

from __future__ import annotations

import datetime as dt
import enum
import json
import math
import random
import struct
import sys
import uuid
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audit_db_core import AuditEvent, AuditValidationError
from audit_db_core.events import MAX_DETAILS_BYTES, MAX_DETAILS_DEPTH, _fast_event, event_row, format_time

BASE: dict[str, Any] = {
    "event_id": uuid.UUID("01890a5d-ac96-774b-bcce-b302099a8057"),
    "event_time": dt.datetime(2026, 3, 1, 12, 30, 5, 123456, tzinfo=dt.UTC),
    "action": "patient.record.read",
    "status": "success",
    "principal_id": "dr.house",
}


def checked(data: dict[str, Any]) -> AuditEvent:
    """The checked construction alone (what the fast one falls back to)."""
    event = AuditEvent.__new__(AuditEvent)
    event._init_checked(dict(data))
    return event


def outcome(build: Any, data: dict[str, Any]) -> tuple[Any, ...]:
    try:
        event = build(data)
    except AuditValidationError as exc:
        return ("refused", [(p.field, p.reason) for p in exc.problems])
    except Exception as exc:  # noqa: BLE001 - whatever the checked path raises, the fast one must raise too
        return ("error", type(exc).__name__)
    private = event.__pydantic_private__
    return ("event", event.__dict__, event.__pydantic_fields_set__, private["_canonical"], private["_details_json"],
            private["_hash"], event.row())


def assert_same(data: dict[str, Any]) -> tuple[Any, ...]:
    expected = outcome(checked, data)
    assert outcome(lambda d: AuditEvent(**d), data) == expected
    assert outcome(AuditEvent.model_validate, data) == expected
    try:
        row = event_row(data)
    except AuditValidationError as exc:
        assert expected == ("refused", [(p.field, p.reason) for p in exc.problems])
    except Exception as exc:  # noqa: BLE001
        assert expected == ("error", type(exc).__name__)
    else:
        assert expected[0] == "event" and row == expected[-1]
    return expected


def fast_path_taken(data: dict[str, Any]) -> bool:
    return _fast_event(dict(data)) is not None


# -- typical events take the fast path and give the checked path's event ------------------------------------------------


TYPICAL: list[dict[str, Any]] = [
    {**BASE, "details": {"fields": ["allergies", "vitals"], "reason": "treatment",
                         "client": {"ip": "10.0.12.3", "user_agent": "Mozilla/5.0 (X11) Chrome/131.0"}}},
    {**BASE, "details": {"format": "pdf", "records": 12, "size_mb": 3.25, "destination": {"encrypted": True}}},
    {**BASE, "organization_id": "org-1", "target_resource_type": "Patient", "target_resource_id": "p-1",
     "outcome_description": "", "data_classification": "PHI", "retention_policy": "hipaa-6y",
     "correlation_id": "c", "session_id": "s", "source": "ehr", "event_version": "2", "processing_latency_ms": 0,
     "details": {"ü": "naïve — 😀", "quote\"back\\slash": "tab\tnewline\n\x01\x1f\x7f", "none": None}},
    {**BASE, "event_id": str(BASE["event_id"]), "event_time": "2026-03-01T12:30:05.123456Z", "status": "failure"},
    {**BASE, "event_time": dt.datetime(2026, 3, 1, 14, 30, tzinfo=dt.timezone(dt.timedelta(hours=2)))},
    {**BASE, "details": {"n": -17, "big": 2**63 - 1, "small": 0.0001, "tiny": 0.00001234, "x": 123456789012345.6}},
    {**BASE, "details": {"a": {"b": {"c": [[[1]]]}}, "list": [{"k": "v"}, {"k": "w"}] * 8}},  # > 16 containers
]


@pytest.mark.parametrize("data", TYPICAL, ids=range(len(TYPICAL)))
def test_typical_events_take_the_fast_path_and_match_the_checked_one(data: dict[str, Any]) -> None:
    assert fast_path_taken(data)
    assert assert_same(data)[0] == "event"


def test_defaults_are_filled_alike() -> None:
    data = {"action": "user.login", "status": "success", "principal_id": "u1"}
    fast, slow = AuditEvent(**data), checked(data)
    assert fast.__pydantic_fields_set__ == slow.__pydantic_fields_set__ == set(data)
    assert fast.event_id.version == 7 and fast.event_time.tzinfo is dt.UTC
    same = {**data, "event_id": fast.event_id, "event_time": fast.event_time}
    assert AuditEvent(**same).content_hash == checked(same).content_hash == fast.content_hash


# -- what only the checked path can tell: the fast path steps aside ---------------------------------------------------------


class _Str(str):
    pass


class _Color(str, enum.Enum):
    RED = "red"


class _Level(enum.IntEnum):
    HIGH = 3


class _Float(float):
    def __repr__(self) -> str:
        return f"_Float({float(self)!r})"


AWKWARD: list[tuple[str, Any]] = [
    ("integral float", {"x": 3.0}),
    ("negative zero", {"x": -0.0}),
    ("exponent float", {"x": 1e-7, "y": 1e16, "z": 1.5e300}),
    ("nan", {"x": math.nan}),
    ("infinity", {"x": [math.inf]}),
    ("int beyond 64 bits", {"x": 2**70}),
    ("int past the digit limit", {"x": 10**5000}),
    ("tuple", {"x": (1, 2)}),
    ("int key", {"x": {1: "a"}}),
    ("bool key", {"x": {True: "a"}}),
    ("None key", {"x": {None: "a"}}),
    ("set", {"x": {1, 2}}),
    ("bytes", {"x": b"ab"}),
    ("datetime", {"x": dt.datetime(2026, 1, 1, tzinfo=dt.UTC)}),
    ("uuid", {"x": uuid.UUID(int=1)}),
    ("str subclass", {"x": _Str("a"), _Str("k"): 1}),
    ("str enum", {"x": _Color.RED}),
    ("int enum", {"x": _Level.HIGH}),
    ("float subclass", {"x": _Float(0.5), "y": _Float(2.0)}),
    ("NUL", {"x": "a\x00b"}),
    ("NUL in a key", {"a\x00": 1}),
    ("escaped NUL written out", {"x": "\\u0000"}),
    ("lone surrogate", {"x": "\ud800"}),
    ("surrogate in a key", {"\udfff": 1}),
    ("too deep", {"a": [[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]}),
    ("deep enough", {"a": [[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]}),
    ("too large", {"x": "y" * MAX_DETAILS_BYTES}),
    ("large enough", {"x": "y" * (MAX_DETAILS_BYTES - 8)}),
    ("non-ASCII near the limit", {"x": "é" * (MAX_DETAILS_BYTES // 2 - 4)}),
    ("not a dict", [1, 2]),
    ("None", None),
    ("a Mapping", json.loads('{"a": 1}')),
]


@pytest.mark.parametrize("details", [a[1] for a in AWKWARD], ids=[a[0] for a in AWKWARD])
def test_awkward_details_give_what_the_checked_path_gives(details: Any) -> None:
    assert_same({**BASE, "details": details})


def test_cycles_give_what_the_checked_path_gives() -> None:
    loop: dict[str, Any] = {}
    loop["self"] = loop
    assert assert_same({**BASE, "details": loop})[0] == "refused"


AWKWARD_FIELDS: list[tuple[str, dict[str, Any]]] = [
    ("NUL in a text field", {"target_resource_id": "p\x001"}),
    ("escaped NUL written out in a text field", {"source": "a\\u0000b"}),
    ("surrogate in a text field", {"principal_id": "u\udc80"}),
    ("naive time", {"event_time": dt.datetime(2026, 1, 1)}),
    ("time as a number", {"event_time": 1_700_000_000}),
    ("time in a named zone", {"event_time": dt.datetime(2026, 7, 1, 12, tzinfo=ZoneInfo("Europe/Paris"))}),
    ("time past year 9999 in UTC", {"event_time": dt.datetime(9999, 12, 31, 23, tzinfo=dt.timezone(-dt.timedelta(hours=2)))}),
    ("time with no microseconds", {"event_time": dt.datetime(2026, 1, 1, tzinfo=dt.UTC)}),
    ("year before 1000", {"event_time": dt.datetime(999, 1, 1, tzinfo=dt.UTC)}),
    ("latency as bool", {"processing_latency_ms": True}),
    ("latency as float", {"processing_latency_ms": 5.0}),
    ("str subclass field", {"principal_id": _Str("u")}),
    ("enum member status", {"status": "attempt", "data_classification": "CONFIDENTIAL"}),
    ("trailing newline in action", {"action": "read\n"}),
    ("unknown field with a bad one", {"patient": "x", "status": "nope"}),
    ("control characters", {"outcome_description": "".join(map(chr, range(1, 32))) + "\x7f\u2028\u2029"}),
]


@pytest.mark.parametrize("change", [a[1] for a in AWKWARD_FIELDS], ids=[a[0] for a in AWKWARD_FIELDS])
def test_awkward_fields_give_what_the_checked_path_gives(change: dict[str, Any]) -> None:
    assert_same({**BASE, "details": {"k": "v"}, **change})


def test_every_code_point_is_written_as_the_checked_path_writes_it() -> None:
    points = [c for c in range(1, sys.maxunicode + 1) if not 0xD800 <= c <= 0xDFFF]
    for start in range(0, len(points), 2000):
        chunk = "".join(map(chr, points[start : start + 2000]))
        data = {**BASE, "outcome_description": chunk, "details": {chunk[:50]: chunk, "k": [chunk[-50:]]}}
        assert fast_path_taken(data), hex(points[start])
        expected = assert_same(data)
        assert json.loads(expected[3]) == AuditEvent(**data).canonical_dict()


def test_random_floats_are_written_as_the_checked_path_writes_them() -> None:
    rng = random.Random(13)
    floats = [struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0] for _ in range(1000)]
    floats += [rng.uniform(-1e6, 1e6) for _ in range(300)] + [round(rng.uniform(0, 100), 2) for _ in range(300)]
    floats += [5e-324, 2.2250738585072014e-308, 1.7976931348623157e308, 0.1, 1e-4, 1e-5, 9.999999999999999e15, 1e16]
    fast = 0
    for value in floats:
        data = {**BASE, "details": {"x": value, "y": [value, -value]}}
        fast += fast_path_taken(data)
        assert_same(data)
    assert fast > 500  # plain-decimal floats took the fast path


json_scalars = (st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.binary(max_size=3)
                | st.datetimes(timezones=st.just(dt.UTC)) | st.sampled_from([_Color.RED, _Level.HIGH, _Str("s")]))
json_keys = st.text(max_size=6) | st.integers(-3, 3) | st.booleans() | st.none()
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner)
    | st.dictionaries(json_keys, inner, max_size=4),
    max_leaves=25,
)
texts = st.text(max_size=12) | st.sampled_from(["", "ok", "a.b-c_d:e/f", "x" * 300, "p\x00", "\\u0000", "é😀"])
event_times = (st.datetimes(timezones=st.sampled_from([dt.UTC, ZoneInfo("Asia/Kolkata"), dt.timezone(-dt.timedelta(hours=5))]))
               | st.datetimes() | st.sampled_from(["2026-03-01T00:00:00Z", "2026-03-01 00:00:00+05:30", "yesterday", 0]))
events = st.fixed_dictionaries(
    {"event_id": st.uuids() | st.sampled_from(["01890a5d-ac96-774b-bcce-b302099a8057", "1234"]),
     "event_time": event_times,
     "action": texts | st.just("patient.record.read"),
     "status": st.sampled_from(["success", "failure", "attempt", "ok"]),
     "principal_id": texts},
    optional={"organization_id": texts | st.none(), "outcome_description": texts | st.none(),
              "data_classification": st.sampled_from(["PHI", "PUBLIC", "phi"]),
              "retention_policy": texts, "source": texts | st.none(), "event_version": texts,
              "processing_latency_ms": st.integers(-1, 2**31) | st.none() | st.just("5"),
              "details": st.dictionaries(st.text(max_size=6), json_values, max_size=5) | json_values,
              "patient_name": texts},
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events)
def test_any_input_gives_what_the_checked_path_gives(data: dict[str, Any]) -> None:
    assert_same(data)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.text(max_size=8), st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(), lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20), max_size=5))
def test_json_details_are_hashed_alike(details: dict[str, Any]) -> None:
    assert_same({**BASE, "details": details})


def test_the_depth_limit_is_the_checked_path_limit() -> None:
    value: Any = 1
    for depth in range(1, MAX_DETAILS_DEPTH + 3):
        value = [value]
        assert_same({**BASE, "details": {"a": value}})
        assert_same({**BASE, "details": {"a": value, "b": [{"c": 1}] * 20}})


@settings(max_examples=300, deadline=None)
@given(st.datetimes(min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 12, 30),
                    timezones=st.sampled_from([dt.UTC, ZoneInfo("America/St_Johns"), dt.timezone(dt.timedelta(hours=14))])))
def test_format_time_is_the_utc_isoformat(when: dt.datetime) -> None:
    assert format_time(when) == when.astimezone(dt.UTC).isoformat(timespec="microseconds")[:-6] + "Z"
