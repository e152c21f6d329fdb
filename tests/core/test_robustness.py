"""Failure paths that must not hurt bystanders:

- the probe that tells a down primary from a busy one connects with no lock held: ``pool_stats()`` answers while a
  probe waits on a server that accepts TCP connections and never speaks;
- a half-open breaker whose trial caller never reports back reclaims the permit after the trial timeout;
- a write whose bookkeeping after COMMIT fails (its WAL position cannot be read: EXECUTE on
  ``pg_current_wal_insert_lsn()`` revoked for the writer's role) is still reported as written, exactly once.

Times are compared with each other (a probe's duration against ``pool_stats()``'s), never with fixed figures.
"""

from __future__ import annotations

import datetime as dt
import logging
import socket
import threading
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from audit_db_core import AuditConnectionError, AuditDatabase, AuditEvent, AuditSettings
from audit_db_core.breakers import BreakerState, CircuitBreaker
from audit_db_core.config import BreakerSettings
from audit_db_core.connections import ConnectionManager
from tests.conftest import TestServers as Servers
from tests.core.test_roles import LoginRoles

UTC = dt.UTC


# -- the primary probe ----------------------------------------------------------------------------------------------


class SilentServer:
    """A TCP listener that accepts connections and never sends a byte (a server hung before its greeting)."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._sock.settimeout(0.1)
        self.port = self._sock.getsockname()[1]
        self.accepted: list[float] = []  # monotonic time of each accepted connection
        self._conns: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._conns.append(conn)
            self.accepted.append(time.monotonic())

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for conn in self._conns:
            conn.close()
        self._sock.close()


@pytest.fixture
def silent_server() -> Iterator[SilentServer]:
    server = SilentServer()
    try:
        yield server
    finally:
        server.close()


def test_pool_stats_answers_while_the_primary_probe_waits_on_a_silent_server(silent_server: SilentServer) -> None:
    settings = AuditSettings(
        database_url=f"postgresql://app@127.0.0.1:{silent_server.port}/audit",
        # one pool connection at most: the first accepted connection is the pool's, the second the probe's
        pool={"min_size": 0, "max_size": 1, "timeout_seconds": 30, "connect_timeout_seconds": 3},
    )
    cm = ConnectionManager(settings).open(wait=False)
    outcome: dict[str, object] = {}

    def borrow() -> None:
        try:
            with cm.connection(operation="probe-test"):
                pass
        except AuditConnectionError as exc:
            outcome["error"] = exc
        outcome["ended"] = time.monotonic()

    caller = threading.Thread(target=borrow)
    try:
        caller.start()
        deadline = time.monotonic() + 30
        while len(silent_server.accepted) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(silent_server.accepted) >= 2, "the probe never connected"
        probe_started = silent_server.accepted[1]
        asked = time.monotonic()
        stats = cm.pool_stats()
        answered = time.monotonic()
        assert caller.is_alive(), "pool_stats() waited for the probe to end"
        caller.join(timeout=60)
    finally:
        cm.close()
    assert isinstance(outcome.get("error"), AuditConnectionError)  # the probe's verdict: down
    assert stats["primary"]["max_size"] == 1
    probe_took = float(outcome["ended"]) - probe_started  # type: ignore[arg-type]
    # pool_stats() did not wait for the probe: it took a small share of the probe's own duration.
    assert answered - asked < probe_took / 4
    assert answered < float(outcome["ended"])  # type: ignore[arg-type]


# -- half-open trials that never report back -----------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _opened_breaker(clock: Clock, **settings: float) -> CircuitBreaker:
    b = CircuitBreaker("primary", BreakerSettings(failure_threshold=1, window_seconds=10, reset_timeout_seconds=5,
                                                  half_open_max_calls=1, **settings), clock=clock)
    b.record_failure(AuditConnectionError("database unreachable: connection refused"))
    assert b.state is BreakerState.OPEN
    clock.now += 5
    assert b.state is BreakerState.HALF_OPEN
    return b


def test_a_trial_that_never_reports_back_frees_its_permit_after_the_reset_time(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    b = _opened_breaker(clock)
    assert b.allow()  # the trial caller takes the permit … and crashes: no record_success / record_failure
    assert not b.allow()
    clock.now += 4.9
    assert not b.allow() and b.state is BreakerState.HALF_OPEN
    clock.now += 0.2  # past the trial timeout, by default the reset timeout (5 s)
    with caplog.at_level(logging.WARNING, logger="audit_db_core.breakers"):
        assert b.allow()  # the next caller gets the reclaimed permit
    assert b.stats()["trials_expired"] == 1
    assert any("never reported back" in r.getMessage() for r in caplog.records)
    b.record_success()
    assert b.state is BreakerState.CLOSED


def test_the_trial_timeout_is_a_setting() -> None:
    clock = Clock()
    b = _opened_breaker(clock, trial_timeout_seconds=1)
    assert b.trial_timeout == 1
    assert b.allow() and not b.allow()
    clock.now += 1
    assert b.allow() and not b.allow()
    b.record_failure(AuditConnectionError("database unreachable: connection refused"))
    assert b.state is BreakerState.OPEN and b.stats()["trials_expired"] == 1
    assert AuditSettings(database_url="postgresql://h/db",
                         breakers={"replica": {"trial_timeout_seconds": 2}}).breakers.replica.trial_timeout_seconds == 2


# -- bookkeeping after COMMIT ------------------------------------------------------------------------------------------


@pytest.fixture
def lsn_blind_writer(servers: Servers, fresh_database: str) -> Iterator[str]:
    """The URL of a writer (``audit_writer``) that may not call ``pg_current_wal_insert_lsn()`` in this database."""
    roles = LoginRoles(servers.database_url)
    try:
        writer = roles.make("bookkeeping", "audit_writer")
        with psycopg.connect(fresh_database, autocommit=True) as conn:
            conn.execute("REVOKE EXECUTE ON FUNCTION pg_current_wal_insert_lsn() FROM PUBLIC")
        yield roles.url(writer, fresh_database)
    finally:
        roles.drop_all()


def _rows(url: str, principal: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM audit_log WHERE principal_id = %s", (principal,)).fetchone()
    return int(row[0]) if row else 0


def test_a_committed_write_is_reported_written_when_the_work_after_commit_fails(
    lsn_blind_writer: str, fresh_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    principal = f"Bookkeeping{uuid.uuid4().hex[:10]}"
    settings = AuditSettings(database_url=lsn_blind_writer, ingest={"batch_size": 2})
    assert settings.cache.enabled  # the commit position is tracked (cache invalidation)
    caplog.set_level(logging.WARNING)
    when = dt.datetime.now(UTC).replace(microsecond=0)
    with AuditDatabase(settings) as db:
        assert db.insert(AuditEvent(action="a", status="success", principal_id=principal, event_time=when)) is True
        assert _rows(fresh_database, principal) == 1
        assert db.bookkeeping_failures == 1

        batch = [AuditEvent(action="b", status="success", principal_id=principal) for _ in range(3)]
        assert db.insert_many(batch) == 3  # two batches, each committed, each with its bookkeeping failing
        assert _rows(fresh_database, principal) == 4
        assert db.bookkeeping_failures == 3

        with db.transaction() as tx:
            tx.insert(AuditEvent(action="c", status="success", principal_id=principal))
        assert _rows(fresh_database, principal) == 5
        assert db.bookkeeping_failures == 4
        assert db.breakers.get("primary").state is BreakerState.CLOSED  # not counted against the primary

    warnings = [r for r in caplog.records if r.name == "audit_db_core.database" and "is committed" in r.getMessage()]
    assert len(warnings) == 4
    assert "pg_current_wal_insert_lsn" in warnings[0].getMessage()
    assert principal not in caplog.text
