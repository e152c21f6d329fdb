"""Read routing by consistency level, from replica lag that a background monitor measures.

- ``strong`` → the primary.
- ``bounded`` → a replica whose measured replay lag is under ``AUDIT_REPLICAS__BOUNDED_LAG_SECONDS`` (round robin
  among them), else the primary.
- ``eventual`` → any healthy replica, round robin, else the primary.
- *read your writes*: a replica only once it has replayed the caller's last commit
  (``pg_last_wal_replay_lsn() >= lsn``, checked on the very connection that then runs the read), else the primary.
- analytics reads → the dedicated analytics replica (``AUDIT_REPLICAS__ANALYTICS_REPLICA``) when it is healthy.

A replica is *in rotation* when the monitor last found it reachable, a standby, within both lag bounds
(``AUDIT_REPLICAS__MAX_LAG_*``), and its breaker admits calls. A failed read takes it out of rotation at once (it
rejoins when the monitor measures it healthy again) and the read is retried on the primary: a dying replica costs
latency, never a failed read.

*The primary unreachable*: a standby that answers stays in rotation with its *staleness* as its lag (see
:class:`~audit_db_core.connections.ReplicaStatus`): ``eventual`` reads go on, ``bounded`` ones while the staleness
is within the bound, ``strong`` ones fail fast (the primary's breaker).

*Topology*: each measurement asks every replica URL ``pg_is_in_recovery()``; only standbys serve as replicas. A
replica that was promoted leaves the rotation at the next measurement (it is the primary now, reached through a
multi-host ``AUDIT_DATABASE_URL``); a node listed among the replica URLs that comes back as a standby joins it.

Example::

    target = db.router.choose("eventual")          # a RouteTarget: "primary" or "replica-0", …
    db.router.snapshot()                            # what the monitor measured last, per replica
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from audit_db_core.breakers import BreakerRegistry, BreakerState
from audit_db_core.config import AuditSettings, ConsistencyLevel

if TYPE_CHECKING:
    from audit_db_core.connections import ConnectionManager, ReplicaStatus

logger = logging.getLogger("audit_db_core.routing")

PRIMARY = "primary"


@dataclass(frozen=True)
class RouteTarget:
    """Where one read goes: ``name`` is ``primary`` or ``replica-<i>``; ``index`` the replica's index."""

    name: str
    index: int | None = None
    reason: str = ""

    @property
    def is_primary(self) -> bool:
        return self.index is None


_STRONG = RouteTarget(PRIMARY, reason="strong")
_NO_REPLICAS = RouteTarget(PRIMARY, reason="no replicas")


@dataclass
class _ReplicaView:
    status: ReplicaStatus | None = None
    measured_at: float = 0.0
    failed_at: float = 0.0  # a read failed: out of rotation until a later measurement finds it healthy


class ReplicaRouter:
    """Chooses the server for each read; :meth:`start` runs the lag monitor thread (stopped by :meth:`stop`)."""

    def __init__(self, settings: AuditSettings, connections: ConnectionManager, breakers: BreakerRegistry) -> None:
        self.settings = settings
        self.connections = connections
        self.breakers = breakers
        n = len(settings.replica_urls)
        self._views = [_ReplicaView() for _ in range(n)]
        self._lock = threading.Lock()
        self._rr = itertools.count()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._measured = threading.Event()
        self._primary_reachable = True
        self.analytics = settings.replicas.analytics_replica
        self._counts: dict[str, int] = {"primary": 0, "failovers": 0, "ryw_fallbacks": 0,
                                        **{f"replica-{i}": 0 for i in range(n)}}

    # -- monitor ---------------------------------------------------------------------------------------------------

    def start(self) -> None:
        if not self._views or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="audit-replica-monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def wait_measured(self, timeout: float = 10.0) -> bool:
        """Block until the monitor has measured every replica once."""
        return self._measured.wait(timeout) if self._views else True

    def _run(self) -> None:
        interval = self.settings.replicas.monitor_interval_seconds
        while not self._stop.is_set():
            self.measure()
            self._stop.wait(interval)

    def measure(self) -> list[ReplicaStatus]:
        """Measure every replica now (the monitor calls this every ``monitor_interval_seconds``)."""
        started = time.monotonic()
        try:
            statuses = self.connections.replica_status()
        except Exception:  # replica_status never raises; this guards the thread all the same
            logger.exception("replica measurement failed")
            return []
        now = time.monotonic()
        reachable = all(s.primary_reachable for s in statuses)
        if reachable and not self._primary_reachable:
            # This measurement read the primary's position (after a failover, on the promoted server): a successful
            # call, so its breaker closes now — before a promoted replica leaves the rotation for it.
            breaker = self.breakers.get("primary")
            if breaker.answered():
                breaker.record_success()
        with self._lock:
            primary_was, self._primary_reachable = self._primary_reachable, reachable
            if primary_was != reachable:
                self._log_primary(statuses)
            for i, status in enumerate(statuses):
                view = self._views[i]
                first = view.status is None
                was = self._in_rotation(i, view, now)
                view.status = status
                view.measured_at = now
                if status.healthy and view.failed_at and view.failed_at < started:  # measured after the failure
                    view.failed_at = 0.0
                is_ = self._in_rotation(i, view, now)
                if first or was != is_:
                    why = status.problem or ("a read failed on it" if view.failed_at else "its circuit breaker is open")
                    self._log_rotation(status, is_, first=first, why=why)
        self._measured.set()
        return statuses

    def _log_primary(self, statuses: list[ReplicaStatus]) -> None:
        serving = {s.name: s.lag_seconds for s in statuses if s.healthy}
        extra = {"audit": {"primary_reachable": self._primary_reachable, "replicas": serving}}
        if self._primary_reachable:
            logger.info("the primary is reachable again: replica lag is measured against it", extra=extra)
        elif serving:
            logger.warning("the primary is unreachable: eventual reads are served by %s (staleness in seconds: %s)",
                           ", ".join(serving), serving, extra=extra)
        else:
            logger.warning("the primary is unreachable and no replica answers: reads fail", extra=extra)

    @staticmethod
    def _log_rotation(status: ReplicaStatus, in_rotation: bool, *, first: bool, why: str) -> None:
        """A replica joining (first measurement) or coming back is routine: INFO, as is a node of the cluster that
        is the primary (promoted, or listed as a candidate). One that is out of rotation otherwise, from the start
        or after being in it, is a problem an operator should see: WARNING."""
        extra = {"audit": {"replica": status.name, "in_rotation": in_rotation, "problem": status.problem}}
        if status.is_primary:
            logger.info("%s is the primary: out of the read rotation", status.name, extra=extra)
        elif in_rotation:
            logger.info("%s %s rotation", status.name, "in" if first else "back in", extra=extra)
        else:
            logger.warning("%s %s rotation: %s", status.name, "not in" if first else "out of", why, extra=extra)

    # -- choice ----------------------------------------------------------------------------------------------------

    def _in_rotation(self, i: int, view: _ReplicaView, now: float) -> bool:
        status = view.status
        if status is None or not status.healthy or view.failed_at:
            return False
        return self.breakers.get(f"replica-{i}").state is not BreakerState.OPEN

    def _candidates(self, consistency: ConsistencyLevel, *, analytics: bool) -> list[int]:
        now = time.monotonic()
        bound = self.settings.replicas.bounded_lag_seconds
        out = []
        with self._lock:
            for i, view in enumerate(self._views):
                if not self._in_rotation(i, view, now):
                    continue
                if (i == self.analytics) != analytics:
                    continue
                if consistency == "bounded":
                    assert view.status is not None
                    lag = view.status.lag_seconds
                    # The lag was measured a moment ago; add that moment so the bound holds now, not then.
                    if lag is None or lag + (now - view.measured_at) > bound:
                        continue
                out.append(i)
        return out

    def choose(self, consistency: ConsistencyLevel = "strong", *, analytics: bool = False) -> RouteTarget:
        """The server for one read at ``consistency`` (the primary when no replica qualifies)."""
        if consistency == "strong" or not self._views:
            return _STRONG if consistency == "strong" else _NO_REPLICAS
        candidates: list[int] = []
        if analytics and self.analytics is not None:
            candidates = self._candidates(consistency, analytics=True)
        if not candidates:
            candidates = self._candidates(consistency, analytics=False)
        if not candidates:
            return RouteTarget(PRIMARY, reason=f"no replica in rotation qualifies for {consistency}")
        i = candidates[next(self._rr) % len(candidates)]
        return RouteTarget(f"replica-{i}", i, reason=consistency)

    def mark_failed(self, index: int, error: BaseException) -> None:
        """A read on replica ``index`` failed: out of rotation until the monitor finds it healthy again."""
        with self._lock:
            view = self._views[index]
            first = not view.failed_at
            view.failed_at = time.monotonic()
            self._counts["failovers"] += 1
        if first:
            logger.warning("replica-%d out of rotation after a failed read: %s", index, str(error).splitlines()[0]
                           if str(error) else type(error).__name__)

    def count(self, target: str) -> None:
        with self._lock:
            self._counts[target] = self._counts.get(target, 0) + 1

    def in_rotation(self) -> list[str]:
        now = time.monotonic()
        with self._lock:
            return [f"replica-{i}" for i, v in enumerate(self._views) if self._in_rotation(i, v, now)]

    def snapshot(self) -> dict[str, Any]:
        """Per replica: the last measurement, whether it is in rotation, and how many reads each server took."""
        now = time.monotonic()
        with self._lock:
            replicas = {}
            for i, view in enumerate(self._views):
                s = view.status
                replicas[f"replica-{i}"] = {
                    "in_rotation": self._in_rotation(i, view, now),
                    "analytics": i == self.analytics,
                    "measured_seconds_ago": round(now - view.measured_at, 3) if view.measured_at else None,
                    "reachable": s.reachable if s else None,
                    "lag_bytes": s.lag_bytes if s else None,
                    "lag_seconds": s.lag_seconds if s else None,
                    "replay_lsn": s.replay_lsn if s else None,
                    "role": None if s is None or not s.reachable else
                    "primary" if s.is_primary else "promoted" if s.promoted else
                    "standby" if s.in_recovery else "not a standby",
                    "problem": ("a read failed; waiting for a healthy measurement" if view.failed_at else
                                (s.problem if s else "not measured yet")),
                }
            return {"monitor": self._thread is not None, "primary_reachable": self._primary_reachable,
                    "replicas": replicas, "reads": dict(self._counts)}
