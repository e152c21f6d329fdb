"""Circuit breakers per component, and retries with exponential backoff and jitter.

A breaker counts failures of one component (the primary, each replica, Redis, partition operations). When
``failure_threshold`` failures fall within ``window_seconds`` it *opens*: calls fail at once with
:class:`~audit_db_core.errors.CircuitOpenError` instead of waiting on a server that is down. After
``reset_timeout_seconds`` it turns *half-open* and lets ``half_open_max_calls`` trial calls through: one success
closes it, one failure opens it again. A trial whose caller never reports back (it crashed, or hangs) is written
off after ``trial_timeout_seconds`` (default: ``reset_timeout_seconds``) and its permit goes to the next caller,
so the breaker never stays half-open for good. Every transition is logged and counted.

Only failures of the component count (connection errors, timeouts): a query the server rejects as invalid, or an
event that fails validation, says nothing about the server's health.

Example::

    breaker = CircuitBreaker("primary", settings.breakers.primary)
    with breaker.call(operation="insert"):      # raises CircuitOpenError at once while open
        write()                                 # a connection error here counts as a failure

    retry(lambda: write(), RetryPolicy(max_attempts=3))   # retries retryable errors only, with jittered backoff
"""

from __future__ import annotations

import enum
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from audit_db_core.config import BreakerSettings, BreakersSettings
from audit_db_core.errors import AuditError, AuditValidationError, CircuitOpenError, ErrorCategory, classify, server_message

logger = logging.getLogger("audit_db_core.breakers")

T = TypeVar("T")


class BreakerState(str, enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


def counts_as_failure(exc: BaseException) -> bool:
    """Whether ``exc`` says the component is failing (unreachable, timing out), rather than the call being bad."""
    if isinstance(exc, CircuitOpenError):
        return False
    if isinstance(exc, AuditError) and exc.context.get("pool_exhausted"):
        return False  # every connection was busy: load, not a failing server
    if isinstance(exc, AuditError):
        return exc.category in (ErrorCategory.CONNECTION, ErrorCategory.TIMEOUT, ErrorCategory.CACHE)
    return isinstance(exc, (ConnectionError, TimeoutError, OSError))


class CircuitBreaker:
    """Closed → open → half-open → closed, for one component. Thread-safe.

    ``clock`` is injectable (``time.monotonic`` by default) so the state machine can be driven step by step.
    """

    def __init__(
        self,
        name: str,
        settings: BreakerSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[CircuitBreaker, BreakerState, BreakerState], None] | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self._clock = clock
        self._on_change = on_change
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._failures: deque[float] = deque()
        self._opened_at = 0.0
        self._trials: deque[float] = deque()  # when each trial call let through while half-open was admitted
        self._transitions: dict[str, int] = {}
        self._counts = {"calls": 0, "successes": 0, "failures": 0, "rejected": 0, "trials_expired": 0,
                        "probes_answered": 0}
        self._last_failure: str | None = None
        self._unreachable = False  # the last failure was a connection failure (not a timeout): see answered()

    # -- state ---------------------------------------------------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        with self._lock:
            self._advance()
            return self._state

    @property
    def is_closed(self) -> bool:
        return self.state is BreakerState.CLOSED

    def retry_after(self) -> float:
        """Seconds until an open breaker lets a trial call through (0 when it is not open)."""
        with self._lock:
            self._advance()
            if self._state is not BreakerState.OPEN:
                return 0.0
            return max(self._opened_at + self.settings.reset_timeout_seconds - self._clock(), 0.0)

    @property
    def trial_timeout(self) -> float:
        """Seconds after which an admitted half-open trial that has not reported back is written off."""
        timeout = self.settings.trial_timeout_seconds
        return timeout if timeout is not None else self.settings.reset_timeout_seconds

    def _advance(self) -> None:
        """Open → half-open once the reset timeout has passed; half-open trials that never reported back are
        written off after the trial timeout (called under the lock)."""
        now = self._clock()
        if self._state is BreakerState.OPEN and now >= self._opened_at + self.settings.reset_timeout_seconds:
            self._move(BreakerState.HALF_OPEN)
        if self._state is BreakerState.HALF_OPEN:
            expired = 0
            while self._trials and now - self._trials[0] >= self.trial_timeout:
                self._trials.popleft()
                expired += 1
            if expired:
                self._counts["trials_expired"] += expired
                logger.warning(
                    "circuit breaker %s: %d half-open trial call(s) never reported back; permit(s) reclaimed",
                    self.name, expired,
                    extra={"audit": {"breaker": self.name, "trials_expired": expired,
                                     "trial_timeout_seconds": self.trial_timeout}},
                )

    def _move(self, new: BreakerState) -> None:
        old = self._state
        if old is new:
            return
        self._state = new
        key = f"{old.value}->{new.value}"
        self._transitions[key] = self._transitions.get(key, 0) + 1
        if new is BreakerState.OPEN:
            self._opened_at = self._clock()
        if new is not BreakerState.CLOSED:
            self._trials.clear()
        if new is BreakerState.CLOSED:
            self._failures.clear()
        log = logger.warning if new is BreakerState.OPEN else logger.info
        log(
            "circuit breaker %s: %s -> %s",
            self.name,
            old.value,
            new.value,
            extra={"audit": {"breaker": self.name, "from": old.value, "to": new.value,
                             "last_failure": self._last_failure}},
        )
        if self._on_change is not None:
            try:
                self._on_change(self, old, new)
            except Exception:  # an observer must never break the caller
                logger.exception("breaker observer failed")

    # -- use -----------------------------------------------------------------------------------------------------

    def allow(self) -> bool:
        """Whether a call may go ahead now (a half-open breaker admits its trial calls only). A ``True`` must be
        followed by :meth:`record_success` or :meth:`record_failure`."""
        with self._lock:
            self._advance()
            self._counts["calls"] += 1
            if self._state is BreakerState.CLOSED:
                return True
            if self._state is BreakerState.HALF_OPEN and len(self._trials) < self.settings.half_open_max_calls:
                self._trials.append(self._clock())
                return True
            self._counts["rejected"] += 1
            return False

    def check(self, *, operation: str | None = None, probe: Callable[[], bool] | None = None) -> None:
        """:meth:`allow`, raising :class:`CircuitOpenError` when the call may not go ahead. With ``probe`` (a cheap,
        rate-limited check that the component answers), an open breaker whose probe succeeds turns half-open at
        once (:meth:`answered`) and this call may be its trial."""
        if self.allow():
            return
        if probe is not None and self._unreachable and self.state is BreakerState.OPEN and probe() \
                and self.answered() and self.allow():
            return
        raise CircuitOpenError(self.name, self.retry_after(), operation=operation)

    def record_success(self) -> None:
        with self._lock:
            self._counts["successes"] += 1
            if self._state is BreakerState.HALF_OPEN:
                self._move(BreakerState.CLOSED)

    def record_failure(self, exc: BaseException | None = None) -> None:
        with self._lock:
            now = self._clock()
            self._counts["failures"] += 1
            if exc is not None:
                self._last_failure = server_message(exc).splitlines()[0][:300]  # it is logged and shared
                self._unreachable = isinstance(exc, ConnectionError) or (
                    isinstance(exc, AuditError) and exc.category is ErrorCategory.CONNECTION)
            if self._state is BreakerState.HALF_OPEN:
                self._move(BreakerState.OPEN)
                return
            if self._state is BreakerState.OPEN:
                return
            self._failures.append(now)
            horizon = now - self.settings.window_seconds
            while self._failures and self._failures[0] < horizon:
                self._failures.popleft()
            if len(self._failures) >= self.settings.failure_threshold:
                self._move(BreakerState.OPEN)

    def answered(self) -> bool:
        """A probe outside the calls (a fresh connection) found the component answering: an open breaker turns
        half-open at once, ending its open period early, and the next call is its trial (one success closes it).
        Returns whether the breaker admits calls now. The primary's breaker is told so when a primary answers
        again — after a failover, the promoted server — instead of waiting out ``reset_timeout_seconds``.

        Only a breaker opened by connection failures (the server did not answer) ends early: one opened by timeouts
        faces a server that answers a connection but not the work, and waits out its reset timeout as before."""
        with self._lock:
            self._advance()
            if self._state is BreakerState.OPEN and self._unreachable:
                self._counts["probes_answered"] += 1
                self._move(BreakerState.HALF_OPEN)
            return self._state is not BreakerState.OPEN

    def record(self, exc: BaseException | None) -> None:
        """Record the outcome of an admitted call: success when ``exc`` is None or not a component failure."""
        if exc is not None and counts_as_failure(exc):
            self.record_failure(exc)
        else:
            self.record_success()

    @contextmanager
    def call(self, *, operation: str | None = None) -> Iterator[None]:
        """Guard a block: refused at once while open; its exception (if a component failure) is counted."""
        self.check(operation=operation)
        try:
            yield
        except BaseException as exc:
            self.record(exc)
            raise
        else:
            self.record_success()

    def reset(self) -> None:
        """Close the breaker and forget its failures (an operator's override)."""
        with self._lock:
            self._move(BreakerState.CLOSED)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            self._advance()
            now = self._clock()
            recent = sum(1 for t in self._failures if t >= now - self.settings.window_seconds)
            return {
                "state": self._state.value,
                "recent_failures": recent,
                "failure_threshold": self.settings.failure_threshold,
                "window_seconds": self.settings.window_seconds,
                "reset_timeout_seconds": self.settings.reset_timeout_seconds,
                "retry_after_seconds": round(
                    max(self._opened_at + self.settings.reset_timeout_seconds - now, 0.0), 3
                ) if self._state is BreakerState.OPEN else 0.0,
                "opened": self._transitions.get("closed->open", 0) + self._transitions.get("half_open->open", 0),
                "transitions": dict(self._transitions),
                **self._counts,
                "last_failure": self._last_failure,
            }


class BreakerRegistry:
    """The breakers of one :class:`~audit_db_core.AuditDatabase`: ``primary``, ``replica-<i>``, ``redis`` and
    ``partitions``, each with its settings from ``AUDIT_BREAKERS__<COMPONENT>__*``.

    Example::

        db.breakers.get("primary").state          # BreakerState.CLOSED
        db.breakers.stats()["redis"]["opened"]    # how many times Redis's breaker opened
    """

    def __init__(
        self,
        settings: BreakersSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[CircuitBreaker, BreakerState, BreakerState], None] | None = None,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._on_change = on_change
        self._lock = threading.Lock()
        self._breakers: dict[str, CircuitBreaker] = {}

    def _settings_for(self, name: str) -> BreakerSettings:
        if name.startswith("replica"):
            return self.settings.replica
        if name in ("primary", "redis", "partitions"):
            return getattr(self.settings, name)
        raise ValueError(f"unknown breaker {name!r}: expected primary, replica-<n>, redis or partitions")

    def get(self, name: str) -> CircuitBreaker:
        with self._lock:
            breaker = self._breakers.get(name)
            if breaker is None:
                breaker = self._breakers[name] = CircuitBreaker(name, self._settings_for(name), clock=self._clock,
                                                                on_change=self._on_change)
            return breaker

    def all(self) -> dict[str, CircuitBreaker]:
        with self._lock:
            return dict(self._breakers)

    def stats(self) -> dict[str, dict[str, Any]]:
        return {name: b.stats() for name, b in sorted(self.all().items())}

    def open_breakers(self) -> list[str]:
        """Names of the breakers that are not closed (open or half-open)."""
        return [name for name, b in sorted(self.all().items()) if b.state is not BreakerState.CLOSED]


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter: attempt *n* waits ``uniform(0, min(max_delay, base_delay * 2**n))``."""

    max_attempts: int = 3
    base_delay: float = 0.05
    max_delay: float = 2.0

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        cap = min(self.max_delay, self.base_delay * (2 ** attempt))
        return (rng or random).uniform(0, cap)


def retry(
    fn: Callable[[], T],
    policy: RetryPolicy,
    *,
    retryable: Callable[[BaseException], bool] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``fn``; on an error that is retryable (``AuditError.retryable`` by default) wait with jittered
    backoff and try again, up to ``policy.max_attempts`` calls in all. Non-retryable errors (bad input, a
    compliance refusal, an open breaker) are raised at once."""
    is_retryable = retryable or (lambda e: isinstance(e, AuditError) and e.retryable
                                 and not isinstance(e, CircuitOpenError))
    for attempt in range(policy.max_attempts):
        try:
            return fn()
        except Exception as exc:
            if attempt == policy.max_attempts - 1 or not is_retryable(exc):
                raise
            pause = policy.delay(attempt)
            logger.info("retrying after %s (attempt %d of %d, in %.3f s)", type(exc).__name__, attempt + 2,
                        policy.max_attempts, pause)
            sleep(pause)
    raise AssertionError("unreachable")


class GuardedConnections:
    """A connection source whose ``connection()`` and ``dedicated_connection()`` pass through one breaker — the
    ``partitions`` breaker guards every lifecycle operation this way: after repeated failures, partition
    operations are refused at once instead of piling up on a database that is failing them.

    Example::

        pm = PartitionManager(GuardedConnections(cm, breakers.get("partitions")), settings)
    """

    def __init__(self, source: Any, breaker: CircuitBreaker) -> None:
        self._source = source
        self.breaker = breaker

    @contextmanager
    def connection(self, *, operation: str = "lifecycle") -> Iterator[Any]:
        with self.breaker.call(operation=operation), self._source.connection(operation=operation) as conn:
            yield conn

    @contextmanager
    def dedicated_connection(self, *, operation: str = "lifecycle", autocommit: bool = False) -> Iterator[Any]:
        with self.breaker.call(operation=operation), \
                self._source.dedicated_connection(operation=operation, autocommit=autocommit) as conn:
            yield conn

    def __getattr__(self, name: str) -> Any:
        return getattr(self._source, name)


class ErrorPolicy:
    """The library's error handling in one object (the :class:`~audit_db_core.interfaces.ErrorHandler` seam):
    ``classify`` maps a driver error onto the hierarchy (:func:`~audit_db_core.errors.classify`), ``handle`` is
    what every :class:`~audit_db_core.AuditDatabase` operation does with a failure (classify, name the operation,
    log it once without row values — bad input is the caller's to report), ``recover`` retries retryable errors
    with jittered backoff (:func:`retry`). Breakers stay where the connection is taken: they see every attempt.

    Example::

        errors = ErrorPolicy(RetryPolicy(max_attempts=3))
        written = errors.recover(lambda: db_write(), operation="insert")
    """

    def __init__(self, policy: RetryPolicy, *, log: logging.Logger | None = None) -> None:
        self.policy = policy
        self._log = log or logger

    def classify(self, exc: BaseException, *, operation: str | None = None) -> AuditError:
        return classify(exc, operation=operation)

    def handle(self, exc: BaseException, *, operation: str) -> AuditError:
        err = classify(exc, operation=operation)
        err.context.setdefault("operation", operation)
        if not isinstance(err, AuditValidationError):
            self._log.warning("%s failed: %s", operation, err.message, extra={"audit": err.to_dict()})
        return err

    def recover(self, fn: Callable[[], T], *, operation: str | None = None) -> T:
        return retry(fn, self.policy)
