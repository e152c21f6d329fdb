"""Circuit breakers and retries: the state machine driven by a controlled clock (the behaviour lives in the
breaker, not in a server; the fault tests show it against real servers)."""

from __future__ import annotations

import logging

import pytest

from audit_db_core import AuditConnectionError, AuditValidationError, AuditSettings
from audit_db_core.breakers import BreakerRegistry, BreakerState, CircuitBreaker, RetryPolicy, retry
from audit_db_core.config import BreakerSettings
from audit_db_core.errors import CircuitOpenError, DatabaseError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def down() -> AuditConnectionError:
    return AuditConnectionError("database unreachable: connection refused")


def test_opens_after_threshold_within_window_and_refuses_at_once() -> None:
    clock = Clock()
    b = CircuitBreaker("primary", BreakerSettings(failure_threshold=5, window_seconds=30, reset_timeout_seconds=30),
                       clock=clock)
    for _ in range(4):
        b.check()
        b.record(down())
    assert b.state is BreakerState.CLOSED
    b.check()
    b.record(down())
    assert b.state is BreakerState.OPEN
    with pytest.raises(CircuitOpenError) as info:
        b.check(operation="insert")
    assert info.value.component == "primary"
    assert 29 < info.value.retry_after <= 30
    assert "circuit breaker is open" in str(info.value) and info.value.retryable
    assert b.stats()["rejected"] == 1 and b.stats()["opened"] == 1


def test_failures_outside_the_window_do_not_add_up() -> None:
    clock = Clock()
    b = CircuitBreaker("replica-0", BreakerSettings(failure_threshold=3, window_seconds=15, reset_timeout_seconds=15),
                       clock=clock)
    for _ in range(10):
        b.record(down())
        b.record(down())
        clock.now += 16  # two failures, then the window passes
    assert b.state is BreakerState.CLOSED


def test_half_open_admits_limited_trials_then_closes_or_reopens() -> None:
    clock = Clock()
    b = CircuitBreaker("redis", BreakerSettings(failure_threshold=2, window_seconds=60, reset_timeout_seconds=5,
                                                half_open_max_calls=2), clock=clock)
    b.record(down())
    b.record(down())
    assert b.state is BreakerState.OPEN
    clock.now += 5
    assert b.state is BreakerState.HALF_OPEN
    assert b.allow() and b.allow()
    assert not b.allow()  # only two trial calls
    b.record_failure(down())  # a trial fails: open again, for a full reset timeout
    assert b.state is BreakerState.OPEN
    clock.now += 4.9
    assert b.state is BreakerState.OPEN
    clock.now += 0.1
    assert b.allow()
    b.record_success()
    assert b.state is BreakerState.CLOSED
    transitions = b.stats()["transitions"]
    assert transitions == {"closed->open": 1, "open->half_open": 2, "half_open->open": 1, "half_open->closed": 1}


def test_only_component_failures_count() -> None:
    b = CircuitBreaker("primary", BreakerSettings(failure_threshold=1))
    b.record(AuditValidationError("AuditQuery", [("limit", "too large")]))
    b.record(DatabaseError("syntax error"))
    assert b.state is BreakerState.CLOSED
    b.record(AuditConnectionError("database unreachable"))
    assert b.state is BreakerState.OPEN


def test_call_guard_counts_the_block_outcome() -> None:
    b = CircuitBreaker("partitions", BreakerSettings(failure_threshold=2, window_seconds=10, reset_timeout_seconds=60))
    for _ in range(2):
        with pytest.raises(AuditConnectionError), b.call(operation="create_partition"):
            raise down()
    with pytest.raises(CircuitOpenError), b.call(operation="create_partition"):
        raise AssertionError("the block must not run while open")


def test_transitions_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    b = CircuitBreaker("primary", BreakerSettings(failure_threshold=1))
    with caplog.at_level(logging.INFO, logger="audit_db_core.breakers"):
        b.record(down())
        b.reset()
    messages = [r.getMessage() for r in caplog.records]
    assert "circuit breaker primary: closed -> open" in messages
    assert "circuit breaker primary: open -> closed" in messages


def test_registry_applies_the_seed_thresholds_per_component() -> None:
    reg = BreakerRegistry(AuditSettings(database_url="postgresql://u@h/db").breakers)
    got = {name: (reg.get(name).settings.failure_threshold, reg.get(name).settings.window_seconds,
                  reg.get(name).settings.reset_timeout_seconds)
           for name in ("primary", "replica-0", "redis", "partitions")}
    assert got == {"primary": (5, 30, 30), "replica-0": (3, 15, 15), "redis": (10, 60, 5), "partitions": (2, 10, 60)}
    reg.get("redis").record_failure(down())
    assert reg.open_breakers() == []
    with pytest.raises(ValueError, match="unknown breaker"):
        reg.get("mysql")


def test_retry_retries_retryable_errors_with_growing_jittered_pauses() -> None:
    pauses: list[float] = []
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise down()
        return "ok"

    assert retry(flaky, RetryPolicy(max_attempts=3, base_delay=0.1, max_delay=1), sleep=pauses.append) == "ok"
    assert len(calls) == 3 and len(pauses) == 2
    assert 0 <= pauses[0] <= 0.1 and 0 <= pauses[1] <= 0.2


def test_retry_gives_up_and_never_retries_bad_input_or_open_breakers() -> None:
    for exc in (AuditValidationError("AuditEvent", [("action", "required")]), CircuitOpenError("primary", 3.0)):
        calls = []

        def fail(exc: Exception = exc) -> None:
            calls.append(1)
            raise exc

        with pytest.raises(type(exc)):
            retry(fail, RetryPolicy(max_attempts=5), sleep=lambda _: None)
        assert len(calls) == 1
    calls = []

    def always_down() -> None:
        calls.append(1)
        raise down()

    with pytest.raises(AuditConnectionError):
        retry(always_down, RetryPolicy(max_attempts=4), sleep=lambda _: None)
    assert len(calls) == 4


def test_partition_operations_pass_through_the_partitions_breaker() -> None:
    import socket

    from audit_db_core import AuditDatabase

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = AuditSettings(database_url=f"postgresql://u@127.0.0.1:{port}/audit",
                             pool={"timeout_seconds": 0.5, "connect_timeout_seconds": 1})
    db = AuditDatabase(settings)  # never opened: every lifecycle call fails to get a connection
    for _ in range(settings.breakers.partitions.failure_threshold):
        with pytest.raises(AuditConnectionError):
            db.partitions.list_partitions()
    with pytest.raises(CircuitOpenError) as info:
        db.partitions.premake()
    assert info.value.component == "partitions"
    assert db.breakers.get("primary").state is BreakerState.CLOSED  # lifecycle failures are the partitions' own
