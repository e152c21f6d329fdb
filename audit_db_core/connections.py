"""Connection pools (psycopg_pool) for the primary and each replica, with health checks and pool statistics.

Example::

    with ConnectionManager(settings) as cm:
        with cm.connection() as conn:
            conn.execute("SELECT 1")
        cm.pool_stats()["primary"]["size"]
"""

from __future__ import annotations

import functools
import json
import logging
import select
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import set_json_loads
from psycopg_pool import ConnectionPool, PoolTimeout

from audit_db_core import telemetry
from audit_db_core.config import AuditSettings
from audit_db_core.errors import (
    AuditConnectionError,
    ConnectionSettingError,
    UnconfirmedCommitError,
    classify,
    redact,
)

logger = logging.getLogger("audit_db_core.connections")


def connect_kwargs(settings: AuditSettings) -> dict[str, Any]:
    """Options the library's connections get (a dedicated connection replaces ``options``): timeouts, application
    name, and ``TimeZone=UTC`` — the library's times are UTC, psycopg then hands ``timestamptz`` values out in UTC
    with no conversion per value, and the library's SQL names its time zone wherever one matters; and
    ``synchronous_commit`` when ``AUDIT_INGEST__SYNCHRONOUS_COMMIT`` sets it (else the server's setting holds)."""
    options = f"-c statement_timeout={settings.pool.statement_timeout_ms} -c TimeZone=UTC" + _synchronous(settings)
    return {
        "connect_timeout": settings.pool.connect_timeout_seconds,
        "application_name": settings.application_name,
        "options": options,
    }


def _synchronous(settings: AuditSettings) -> str:
    mode = settings.ingest.synchronous_commit
    return "" if mode is None else f" -c synchronous_commit={mode}"


@dataclass(frozen=True)
class ReplicaStatus:
    """One replica as measured now (see :meth:`ConnectionManager.replica_status`).

    ``lag_bytes``: WAL the replica has still to replay, ``pg_wal_lsn_diff(primary's pg_current_wal_lsn(),
    replica's pg_last_wal_replay_lsn())``. ``lag_seconds``: ``now() - pg_last_xact_replay_timestamp()`` on the
    replica while WAL is pending, 0 when none is. Both are ``None`` when they could not be measured.

    While the primary is unreachable (``primary_reachable`` false) there is nothing to compare with: ``lag_bytes``
    is ``None`` and ``lag_seconds`` is the replica's *staleness* — how long ago the replica was last known to hold
    every commit: the younger of its last replayed commit (``now() - pg_last_xact_replay_timestamp()``) and the last
    time this process saw the primary with the replica fully replayed. A standby that answers is then healthy
    whatever its staleness: it is the only server left to read from (``bounded`` reads still check the bound).

    ``is_primary``: the URL reaches the very server ``AUDIT_DATABASE_URL`` writes to (same host and port): a
    replica that was promoted, or a cluster node listed among the replica URLs that is the primary now.
    ``promoted``: while the primary is unreachable, a server this process last measured as a standby is no
    longer in recovery — it was promoted, holds every commit it replayed and takes writes now: it serves reads
    (staleness 0) until ``AUDIT_DATABASE_URL`` reaches it, when it is ``is_primary`` and leaves the rotation.
    """

    name: str  # replica-0, replica-1, … in AUDIT_REPLICA_URLS order
    url: str  # password masked
    reachable: bool
    in_recovery: bool | None
    lag_bytes: int | None
    lag_seconds: float | None
    max_lag_bytes: int
    max_lag_seconds: float
    latency_ms: float
    error: str | None = None
    replay_lsn: int | None = None  # pg_last_wal_replay_lsn() as a byte position (read-your-writes compares it)
    primary_reachable: bool = True
    is_primary: bool = False
    promoted: bool = False

    @property
    def healthy(self) -> bool:
        """Reachable, a standby, and within both lag bounds (while the primary is unreachable: reachable and a
        standby)."""
        if not self.primary_reachable:
            return self.reachable and (self.in_recovery is True or self.promoted)
        return (
            self.reachable
            and self.in_recovery is True
            and self.lag_bytes is not None
            and self.lag_bytes <= self.max_lag_bytes
            and self.lag_seconds is not None
            and self.lag_seconds <= self.max_lag_seconds
        )

    @property
    def problem(self) -> str | None:
        """Why it is not healthy, in one line (``None`` when it is)."""
        if not self.reachable:
            return f"unreachable: {self.error}"
        if self.is_primary:
            return "it is the primary (AUDIT_DATABASE_URL reaches it): not a replica, out of the read rotation"
        if self.promoted:
            return None  # serves reads until the primary's URL reaches it
        if self.in_recovery is not True:
            return "not a standby (pg_is_in_recovery() is false): it does not replicate the primary"
        if not self.primary_reachable:
            return None  # serves reads on its own; health reports the primary's outage
        if self.lag_bytes is None or self.lag_seconds is None:
            return self.error or "replay lag could not be measured"
        if self.lag_bytes > self.max_lag_bytes:
            return f"replay lag {self.lag_bytes} bytes exceeds {self.max_lag_bytes}"
        if self.lag_seconds > self.max_lag_seconds:
            return f"replay lag {self.lag_seconds:.3f} s exceeds {self.max_lag_seconds} s"
        return None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "healthy": self.healthy, "problem": self.problem}


_REPLICA_LAG = (
    "SELECT pg_is_in_recovery(),"
    " CASE WHEN pg_is_in_recovery()"
    "      THEN greatest(pg_wal_lsn_diff(%(primary)s::pg_lsn, pg_last_wal_replay_lsn()), 0)::bigint END,"
    " CASE WHEN NOT pg_is_in_recovery() THEN NULL"
    "      WHEN pg_wal_lsn_diff(%(primary)s::pg_lsn, pg_last_wal_replay_lsn()) <= 0 THEN 0"
    "      ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8 END,"
    " (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint"
)

#: A replica measured while the primary is unreachable: standby or not, age of its last replayed commit, position.
_REPLICA_ALONE = (
    "SELECT pg_is_in_recovery(), extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8,"
    " (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint"
)

#: The WAL position a read's snapshot includes (replay position on a standby, insert position on the primary),
#: and the position right after a commit (what read-your-writes waits for): a byte offset as a bigint.
CURRENT_LSN = (
    "SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_insert_lsn() END"
    " - '0/0'::pg_lsn)::bigint"
)


def current_lsn(conn: psycopg.Connection[Any]) -> int:
    """See :data:`CURRENT_LSN`."""
    row = conn.execute(CURRENT_LSN).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def format_lsn(lsn: int) -> str:
    """A byte position in PostgreSQL's ``X/Y`` notation."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str) -> int:
    """``'0/16B3748'`` → its byte position; raises ``ValueError`` on anything else."""
    high, sep, low = text.strip().partition("/")
    if not sep or not high or not low:
        raise ValueError(f"not a WAL position (expected X/Y in hex): {text!r}")
    return (int(high, 16) << 32) | int(low, 16)


class ConnectionManager:
    """Owns the pools. ``connection()`` lends a primary connection; replicas get their own pools."""

    def __init__(self, settings: AuditSettings) -> None:
        self.settings = settings
        self._primary: ConnectionPool | None = None
        self._replicas: list[ConnectionPool] = []
        # Two locks, never held together: the probe's state (one probe in flight, its last answer) and the
        # acquisition counters. The probe connects with neither held, so a slow server blocks no one but the
        # callers that wait for the answer of that very probe.
        self._probe_lock = threading.Condition(threading.Lock())
        self._probe_at = float("-inf")
        self._probe_result: str | None = None
        self._probe_running = False
        self._counters_lock = threading.Lock()
        self._acquires: dict[str, dict[str, float]] = {}
        self._telemetry = settings.telemetry.enabled  # db.client.connection.wait_time while an SDK listens
        self._server_closed: dict[str, float] = {}  # per pool: when a lent connection was last found closed
        self._caught_up_at: dict[int, float] = {}  # per replica: when a measurement last found it fully replayed
        self._standbys: set[int] = set()  # replicas last measured as standbys while the primary answered

    # -- lifecycle -----------------------------------------------------------------------------------------------

    def open(self, *, wait: bool = True) -> ConnectionManager:
        """Open the pools. With ``wait`` (the default), first connect to the primary once, directly: a server that
        refuses the settings (unknown host, missing database or role, wrong password, bad ``sslmode``) raises
        :class:`ConnectionSettingError` at once, one that does not answer :class:`AuditConnectionError` at once —
        both naming ``AUDIT_DATABASE_URL``. The pools' retries are for a server that was up and went away, not for
        a first contact that cannot succeed. Then wait up to ``AUDIT_POOL__TIMEOUT_SECONDS`` for the pool."""
        if self._primary is not None:
            return self
        if wait:
            self._first_contact()
        pool_cfg = self.settings.pool
        self._primary = self._make_pool(
            self.settings.database_url.get_secret_value(), "primary", pool_cfg.min_size, pool_cfg.max_size
        )
        self._replicas = [
            self._make_pool(url.get_secret_value(), f"replica-{i}", 0, pool_cfg.replica_max_size)
            for i, url in enumerate(self.settings.replica_urls)
        ]
        if wait:
            try:
                self._primary.wait(timeout=pool_cfg.timeout_seconds)
            except Exception as exc:
                self.close()
                raise AuditConnectionError(
                    f"cannot connect to the primary at {self.settings.display_database_url}: {self._probe(exc)}",
                    operation="connect",
                ) from None
        logger.info(
            "pools opened",
            extra={"audit": {"primary": self.settings.display_database_url, "replicas": len(self._replicas)}},
        )
        return self

    def _make_pool(self, conninfo: str, name: str, min_size: int, max_size: int) -> ConnectionPool:
        return ConnectionPool(
            conninfo,
            min_size=min_size,
            max_size=max_size,
            kwargs=connect_kwargs(self.settings),
            timeout=self.settings.pool.timeout_seconds,
            max_idle=self.settings.pool.max_idle_seconds,
            name=name,
            open=True,
            check=functools.partial(self._check, name),
            configure=configure_connection,
            reconnect_timeout=self.settings.pool.reconnect_timeout_seconds,
        )

    def _check(self, name: str, conn: psycopg.Connection[Any]) -> None:
        """The pool's check of a connection it lends (:func:`check_idle_connection`); a connection found closed
        is replaced by the pool, and remembered: a wait for a connection that then times out is a server that went
        away, not a busy pool (see :meth:`_acquire`)."""
        try:
            check_idle_connection(conn)
        except Exception:
            self._server_closed[name] = time.monotonic()
            raise

    def _first_contact(self) -> None:
        """One direct connection to the primary before any pool exists (a pool would retry in the background and
        log each failure); raises at once with the cause when it fails, see :meth:`open`."""
        try:
            psycopg.connect(self.settings.database_url.get_secret_value(), **connect_kwargs(self.settings)).close()
        except Exception as exc:
            cause, kind = first_contact_problem(exc)
            if kind == "busy":  # the server is up, only full: the pool waits for a free slot as usual
                return
            reason = f"cannot connect to the primary at {self.settings.display_database_url}: {cause}"
            if kind == "settings":
                raise ConnectionSettingError("settings", [("AUDIT_DATABASE_URL", reason)], operation="connect",
                                             server="primary", setting="AUDIT_DATABASE_URL") from None
            raise AuditConnectionError(f"AUDIT_DATABASE_URL: {reason}", operation="connect", server="primary",
                                       setting="AUDIT_DATABASE_URL") from None

    def _probe(self, pool_error: BaseException) -> str:
        """The pool only says it timed out; one direct attempt tells the real cause (refused, bad password…)."""
        try:
            psycopg.connect(
                self.settings.database_url.get_secret_value(), **connect_kwargs(self.settings)
            ).close()
        except Exception as exc:
            return _reason(exc)
        return _reason(pool_error)

    def close(self) -> None:
        for pool in [self._primary, *self._replicas]:
            if pool is not None:
                pool.close()
        self._primary = None
        self._replicas = []

    def __enter__(self) -> ConnectionManager:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def primary_pool(self) -> ConnectionPool:
        if self._primary is None:
            raise AuditConnectionError("the connection manager is not open", operation="connection")
        return self._primary

    @property
    def replica_pools(self) -> list[ConnectionPool]:
        return list(self._replicas)

    # -- use -----------------------------------------------------------------------------------------------------

    @contextmanager
    def connection(
        self, *, operation: str = "connection", autocommit: bool = False
    ) -> Iterator[psycopg.Connection[Any]]:
        """A primary connection from the pool (committed on a clean exit, rolled back on an error); driver errors
        come out as classified ``AuditError``s. ``autocommit=True`` lends it in autocommit mode for reads (each
        statement its own transaction: no BEGIN and COMMIT round trips) and switches it back before it returns to
        the pool.

        A pool with no free connection makes the caller wait up to ``AUDIT_POOL__TIMEOUT_SECONDS`` — when the pool
        is merely busy. When the primary is *down*, the wait ends within a fraction of a second with
        :class:`AuditConnectionError` naming the cause: after a short wait the library probes the server once
        (one probe per second for all waiting callers) and gives up at once if it refuses connections.
        """
        pool = self.primary_pool
        conn = self._acquire(pool, self.settings.pool.timeout_seconds, operation, probe=self._primary_down)
        with _lent(pool, conn, autocommit, operation):
            yield conn

    @contextmanager
    def replica_connection(
        self, index: int, *, operation: str = "query", autocommit: bool = False
    ) -> Iterator[psycopg.Connection[Any]]:
        """A connection to replica ``index`` from its pool, waiting at most ``AUDIT_REPLICAS__ACQUIRE_TIMEOUT_SECONDS``
        (the router then fails the read over to the primary); ``autocommit`` as for :meth:`connection`."""
        pool = self._replicas[index]
        conn = self._acquire(pool, self.settings.replicas.acquire_timeout_seconds, operation, probe=None)
        with _lent(pool, conn, autocommit, operation, server=pool.name):
            yield conn

    def _acquire(
        self, pool: ConnectionPool, timeout: float, operation: str, *, probe: Any
    ) -> psycopg.Connection[Any]:
        started = time.monotonic()
        deadline = started + timeout
        step = 0.25
        # A short first wait; if it times out, ask whether the server is down (fail now) or only busy (wait on).
        first = min(step, timeout) if probe is not None else timeout
        try:
            try:
                conn = pool.getconn(timeout=first)
            except PoolTimeout:
                remaining = deadline - time.monotonic()
                if probe is None or remaining <= 0:
                    raise
                down = probe()
                if down is not None:
                    raise AuditConnectionError(
                        f"database unreachable: {down}", operation=operation, server=pool.name
                    ) from None
                conn = pool.getconn(timeout=remaining)
        except PoolTimeout as exc:
            self._count_acquire(pool.name, started, ok=False)
            if self._server_closed.get(pool.name, float("-inf")) >= started:
                # Not a busy pool: its server closed the connections it held, and no new one could be made since.
                raise AuditConnectionError(
                    f"database unreachable: {pool.name} closed its connections and none could be opened again within"
                    f" {timeout:g} s", operation=operation, server=pool.name) from None
            raise classify(exc, operation=operation, server=pool.name) from None
        except psycopg.Error as exc:
            self._count_acquire(pool.name, started, ok=False)
            raise classify(exc, operation=operation, server=pool.name) from exc
        except AuditConnectionError:
            self._count_acquire(pool.name, started, ok=False)
            raise
        self._count_acquire(pool.name, started, ok=True)
        return conn

    def _count_acquire(self, name: str, started: float, *, ok: bool) -> None:
        """One acquisition as the caller saw it (the pool's own counters see each of its waits separately)."""
        waited = (time.monotonic() - started) * 1000
        if self._telemetry and telemetry.listening().metrics:
            telemetry.record_connection_wait(name, waited / 1000)
        with self._counters_lock:
            c = self._acquires.setdefault(name, {"acquisitions": 0, "failed": 0, "wait_ms": 0.0, "max_wait_ms": 0.0})
            c["acquisitions" if ok else "failed"] += 1
            c["wait_ms"] += waited
            c["max_wait_ms"] = max(c["max_wait_ms"], waited)

    def primary_answers(self) -> bool:
        """Whether a primary accepts connections now, by :meth:`_primary_down`'s probe (at most one a second) — with
        a multi-host ``AUDIT_DATABASE_URL`` and ``target_session_attrs=read-write``, whichever host is the primary
        now. Never waits for another caller's probe: while one is under way, its last answer counts."""
        return self._primary_down(wait=False) is None

    def _primary_down(self, *, wait: bool = True) -> str | None:
        """``None`` when the primary accepts connections, else why not. Probes at most once a second (one caller
        probes, the others wait for its answer, or take the last one without ``wait``); "too many connections"
        counts as up: the server is busy, not down.

        The connection attempt is made with no lock held: ``pool_stats()`` and callers that need no probe are never
        held up by a server that is slow to answer."""
        connect_timeout = min(2, self.settings.pool.connect_timeout_seconds)
        with self._probe_lock:
            if self._probe_running and not wait:
                return self._probe_result if self._probe_at > float("-inf") else "not probed yet"
            if self._probe_running:  # another caller is asking the server: take its answer
                self._probe_lock.wait_for(lambda: not self._probe_running, timeout=connect_timeout + 1.0)
                return self._probe_result
            if time.monotonic() - self._probe_at < 1.0:
                return self._probe_result
            self._probe_running = True
        result: str | None = None
        try:
            psycopg.connect(
                self.settings.database_url.get_secret_value(),
                **{**connect_kwargs(self.settings), "connect_timeout": connect_timeout},
            ).close()
        except psycopg.errors.TooManyConnections:
            result = None
        except Exception as exc:
            result = _reason(exc)
        finally:
            with self._probe_lock:
                self._probe_at, self._probe_result, self._probe_running = time.monotonic(), result, False
                self._probe_lock.notify_all()
        return result

    @contextmanager
    def dedicated_connection(
        self, *, operation: str = "lifecycle", autocommit: bool = False
    ) -> Iterator[psycopg.Connection[Any]]:
        """A connection of its own, outside the pool and without a statement timeout, for long lifecycle work
        (archive exports, REINDEX CONCURRENTLY) whose session settings must not leak into pooled connections."""
        kwargs = connect_kwargs(self.settings)
        kwargs["options"] = "-c statement_timeout=0" + _synchronous(self.settings)
        try:
            conn = psycopg.connect(self.settings.database_url.get_secret_value(), autocommit=autocommit, **kwargs)
        except psycopg.Error as exc:
            raise classify(exc, operation=operation) from None
        watch_commits(conn)
        try:
            with conn:
                yield conn
            raise_if_unconfirmed(conn, operation)
        except psycopg.Error as exc:
            raise classify(exc, operation=operation) from exc

    def health_check(self) -> dict[str, Any]:
        """Reach the primary: ``{"reachable", "latency_ms", "server_version", "in_recovery", "error"}``."""
        started = time.perf_counter()
        try:
            with self.connection(operation="health") as conn:
                cur = conn.cursor(row_factory=dict_row)  # a cursor's factory: the pooled connection stays as it was
                row = cur.execute(
                    "SELECT current_setting('server_version') AS server_version,"
                    " pg_is_in_recovery() AS in_recovery, current_database() AS database,"
                    " to_regclass('schema_migrations') IS NOT NULL AS migrated"
                ).fetchone()
                assert row is not None
                row["schema_version"] = 0
                if row["migrated"]:
                    applied = cur.execute("SELECT coalesce(max(version), 0) AS v FROM schema_migrations").fetchone()
                    row["schema_version"] = applied["v"] if applied else 0
            assert row is not None
            return {
                "reachable": True,
                "latency_ms": round((time.perf_counter() - started) * 1000, 3),
                "server_version": row["server_version"],
                "in_recovery": row["in_recovery"],
                "database": row["database"],
                "schema_version": row["schema_version"],
                "error": None,
            }
        except Exception as exc:
            return {
                "reachable": False,
                "latency_ms": round((time.perf_counter() - started) * 1000, 3),
                "server_version": None,
                "in_recovery": None,
                "database": None,
                "schema_version": None,
                "error": _reason(exc),
            }

    def replica_status(self) -> list[ReplicaStatus]:
        """Measure every configured replica against the primary, now: reachable, in recovery, replay lag in bytes
        and seconds, compared with ``AUDIT_REPLICAS__MAX_LAG_BYTES`` / ``__MAX_LAG_SECONDS``. Never raises:
        failures are in the statuses. Works whether or not the manager is open: each replica is probed over a
        short direct connection with the connect timeout (a dead replica costs at most that long, never a pool
        wait); the primary's WAL position is read through the pool when it is open.

        Example::

            for r in cm.replica_status():
                print(r.name, r.healthy, r.lag_bytes, r.lag_seconds, r.problem)
        """
        if not self.settings.replica_urls:
            return []
        bounds = self.settings.replicas
        primary_lsn: str | None = None
        primary_error: str | None = None
        primary_at: tuple[str, str] | None = None
        asked_at = time.monotonic()  # every commit before this instant is at or before the position read
        try:
            if self._primary is not None:  # open: borrow a pooled connection rather than make one
                with self.connection(operation="replica_status") as conn:
                    row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
                    primary_at = (conn.info.host, str(conn.info.port))
            else:
                with psycopg.connect(self.settings.database_url.get_secret_value(),
                                     **connect_kwargs(self.settings)) as conn:
                    row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
                    primary_at = (conn.info.host, str(conn.info.port))
            primary_lsn = row[0] if row else None
        except Exception as exc:
            primary_error = f"the primary's WAL position could not be read: {_reason(exc)}"
        out = []
        for i, url in enumerate(self.settings.replica_urls):
            name = f"replica-{i}"
            started = time.perf_counter()
            in_recovery: bool | None = None
            lag_bytes: int | None = None
            lag_seconds: float | None = None
            replay_lsn: int | None = None
            error: str | None = primary_error
            is_primary = promoted = False
            try:
                with psycopg.connect(url.get_secret_value(), **connect_kwargs(self.settings)) as conn:
                    is_primary = primary_at == (conn.info.host, str(conn.info.port))
                    if primary_lsn is None:
                        row = conn.execute(_REPLICA_ALONE).fetchone()
                        if row is not None:
                            in_recovery = bool(row[0])
                            replay_lsn = None if row[2] is None else int(row[2])
                            lag_seconds = self._staleness(i, None if row[1] is None else max(float(row[1]), 0.0))
                            promoted = not in_recovery and i in self._standbys
                            if promoted:
                                lag_seconds, error = 0.0, None
                            if in_recovery:
                                error = None if lag_seconds is not None else (
                                    "the primary is unreachable and the replica has replayed no transaction since"
                                    " it started: its staleness is unknown")
                    else:
                        row = conn.execute(_REPLICA_LAG, {"primary": primary_lsn}).fetchone()
                        if row is not None:
                            in_recovery = bool(row[0])
                            lag_bytes = None if row[1] is None else int(row[1])
                            lag_seconds = None if row[2] is None else round(max(float(row[2]), 0.0), 3)
                            replay_lsn = None if row[3] is None else int(row[3])
                            if in_recovery and lag_bytes == 0:  # it held every commit made before asked_at
                                self._caught_up_at[i] = asked_at
                            if in_recovery:
                                self._standbys.add(i)
                            else:
                                self._standbys.discard(i)
                            if in_recovery and lag_seconds is None:
                                error = "no transaction replayed since the replica started: lag in seconds unknown"
                reachable = True
            except Exception as exc:
                reachable, error = False, _reason(exc)
            out.append(ReplicaStatus(
                name=name, url=redact(url.get_secret_value()), reachable=reachable, in_recovery=in_recovery,
                lag_bytes=lag_bytes, lag_seconds=lag_seconds, max_lag_bytes=bounds.max_lag_bytes,
                max_lag_seconds=bounds.max_lag_seconds, latency_ms=round((time.perf_counter() - started) * 1000, 3),
                error=error, replay_lsn=replay_lsn, primary_reachable=primary_lsn is not None, is_primary=is_primary,
                promoted=promoted,
            ))
        return out

    def _staleness(self, index: int, replayed_ago: float | None) -> float | None:
        """Seconds since replica ``index`` was last known to hold every commit, with the primary unreachable: the
        younger of its last replayed commit and the last measurement that found it fully replayed."""
        caught_up = self._caught_up_at.get(index)
        ages = [a for a in (replayed_ago, None if caught_up is None else time.monotonic() - caught_up)
                if a is not None]
        return round(min(ages), 3) if ages else None

    def pool_stats(self) -> dict[str, dict[str, Any]]:
        """Real numbers from each pool: size, in use, idle, waiting; acquisitions as callers saw them (count,
        failures, average and longest wait); and the pool's own request counters."""
        out: dict[str, dict[str, Any]] = {}
        pools = [("primary", self._primary)] + [(p.name, p) for p in self._replicas]
        for name, pool in pools:
            if pool is None:
                continue
            s = pool.get_stats()
            size = s.get("pool_size", 0)
            available = s.get("pool_available", 0)
            requests = s.get("requests_num", 0)
            with self._counters_lock:
                mine = dict(self._acquires.get(name, {}))
            asked = mine.get("acquisitions", 0) + mine.get("failed", 0)
            out[name] = {
                "min_size": s.get("pool_min", pool.min_size),
                "max_size": s.get("pool_max", pool.max_size),
                "size": size,
                "idle": available,
                "in_use": max(size - available, 0),
                "waiting": s.get("requests_waiting", 0),
                # as callers saw them: one per connection asked for, however many waits it took
                "acquisitions": int(mine.get("acquisitions", 0)),
                "acquisitions_failed": int(mine.get("failed", 0)),
                "avg_acquire_ms": round(mine["wait_ms"] / asked, 3) if asked else 0.0,
                "max_acquire_ms": round(mine.get("max_wait_ms", 0.0), 3),
                # the pool's own counters (a caller that waited twice counts twice)
                "requests": requests,
                "requests_queued": s.get("requests_queued", 0),
                "requests_wait_ms_total": s.get("requests_wait_ms", 0),
                "connections_made": s.get("connections_num", 0),
                "connection_errors": s.get("connections_errors", 0),
            }
        return out


#: A server's answers at login that say it is there but cannot take us *now* (SQLSTATE 57P03, 53300): a retry may
#: succeed. Every other refusal at login (missing database or role, authentication, privileges) is a setting.
_SERVER_NOT_YET = ("the database system is starting up", "the database system is shutting down",
                   "the database system is in recovery mode", "the database system is not yet accepting connections",
                   "the database system is not accepting connections")
_SERVER_FULL = ("too many clients", "remaining connection slots are reserved", "too many connections")
#: libpq's own complaints, before or without a server's answer, that only a change of the URL mends.
_CLIENT_SETTING = (
    ("failed to resolve host", "unknown host: the name does not resolve (check the host in the URL)"),
    ("could not translate host name", "unknown host: the name does not resolve (check the host in the URL)"),
    ("invalid uri query parameter", "the URL has a query parameter libpq does not know"),
    ("invalid connection option", "the URL has a connection option libpq does not know"),
    ("invalid sslmode value", "invalid sslmode (use disable, allow, prefer, require, verify-ca or verify-full)"),
    ("server does not support ssl", "the server does not support SSL, but sslmode requires it"),
    ("invalid response to ssl negotiation", "the server at that host and port does not answer as PostgreSQL does"),
    ("certificate verify failed", "the server's TLS certificate does not verify (sslmode verify-ca/verify-full)"),
)
#: libpq's words for a server that does not answer, and what to check.
_UNREACHABLE = (
    ("connection refused", "connection refused (is the server running, and is the port right?)"),
    ("timeout expired", "no answer within AUDIT_POOL__CONNECT_TIMEOUT_SECONDS (is the host right, and reachable?)"),
    ("no such file or directory", "no server socket in that directory (is the server running?)"),
)


def configure_connection(conn: psycopg.Connection[Any]) -> None:
    """What a pooled connection gets once, when the pool opens it: ``json`` / ``jsonb`` values decoded by
    :func:`load_json`, and the watch for commits no synchronous standby confirmed (:func:`raise_if_unconfirmed`)."""
    set_json_loads(load_json, conn)
    watch_commits(conn)


class _CommitWatch:
    """The notice handler of a connection: ``cancelled`` is set when the server says a commit's wait for a
    synchronous standby was cancelled; read and cleared by :func:`raise_if_unconfirmed` after each commit."""

    __slots__ = ("cancelled",)

    def __init__(self) -> None:
        self.cancelled = False

    def __call__(self, diag: psycopg.errors.Diagnostic) -> None:
        if (diag.severity_nonlocalized == "WARNING" and diag.sqlstate == "01000"
                and _SYNC_REP_CANCELLED in (diag.message_primary or "")):
            self.cancelled = True


# The server's own words (syncrep.c); a server whose lc_messages is not English says them otherwise, and is not seen.
_SYNC_REP_CANCELLED = "wait for synchronous replication"


def watch_commits(conn: psycopg.Connection[Any]) -> None:
    """Watch ``conn`` for commits that PostgreSQL made only locally because their wait for a synchronous standby
    was cancelled: it then answers the commit with success and a WARNING, which psycopg would only log."""
    watch = _CommitWatch()
    conn.add_notice_handler(watch)
    conn._audit_commit_watch = watch  # type: ignore[attr-defined]


def _cancelled_wait(conn: psycopg.Connection[Any]) -> bool:
    """Whether a commit on ``conn`` went unconfirmed since the last call (which this one clears)."""
    watch: _CommitWatch | None = getattr(conn, "_audit_commit_watch", None)
    if watch is None or not watch.cancelled:
        return False
    watch.cancelled = False
    return True


def raise_if_unconfirmed(conn: psycopg.Connection[Any], operation: str, note: str = "", **context: Any) -> None:
    """After a commit on ``conn``: raise :class:`UnconfirmedCommitError` when the server said it committed without
    the synchronous standby's confirmation (see :func:`watch_commits`); nothing otherwise. ``note`` ends the
    message."""
    if not _cancelled_wait(conn):
        return
    raise UnconfirmedCommitError(
        "committed on the primary, but no synchronous standby confirmed it: the commit's wait for the standby was "
        "cancelled (pg_cancel_backend or a cancel request), so PostgreSQL committed locally; the write is stored "
        "but a failover before a standby catches up would lose it (re-sending it is harmless, and does not "
        f"confirm it){' ' + note if note else ''}",
        operation=operation,
        **context,
    )


_raw_decode = json.JSONDecoder().raw_decode


def load_json(data: bytes) -> Any:
    """``json.loads(data)`` for a ``json`` / ``jsonb`` value as PostgreSQL sends it (one JSON text in UTF-8), without
    the encoding detection and whitespace scans ``json.loads`` runs in Python first: about 2.5x faster on an event's
    ``details``. Anything else (whitespace around a ``json`` value, an error) goes to ``json.loads`` itself, so the
    result, or the error, is always ``json.loads``'s."""
    text = data.decode("utf-8", "surrogatepass")
    try:
        value, end = _raw_decode(text)
    except ValueError:
        return json.loads(data)
    if end != len(text):
        return json.loads(data)
    return value


def check_idle_connection(conn: psycopg.Connection[Any]) -> None:
    """The pools' check of a connection they lend, without a round trip: an idle connection has nothing to read
    unless the server wrote to it — it closed it (a restart, a terminated backend, an idle timeout) or sent a
    notice — so only then is the server asked (the pool's own check, an empty query). A connection that dies between
    the check and its use fails that use: retries and breakers handle it as any other connection error."""
    pgconn = conn.pgconn
    if pgconn.status != _CONNECTION_OK:  # closed, or lost
        raise psycopg.OperationalError("the connection is closed")
    if _readable(pgconn.socket):
        ConnectionPool.check_connection(conn)


def _readable(fd: int) -> bool:
    if _poll is None:  # no poll() (Windows): select() (fine below FD_SETSIZE, where such a pool lives)
        return bool(select.select([fd], [], [], 0)[0])
    poller = _poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


_poll = getattr(select, "poll", None)
_CONNECTION_OK = psycopg.pq.ConnStatus.OK


@contextmanager
def _lent(pool: ConnectionPool, conn: psycopg.Connection[Any], autocommit: bool, operation: str,
          **context: Any) -> Iterator[None]:
    """A pooled connection while it is lent: in a transaction committed on a clean exit and rolled back on an error,
    or in autocommit (each statement its own transaction: nothing to commit or roll back); driver errors classified;
    back to the pool at the end, out of autocommit. One that cannot be switched back (it broke) is closed and the
    pool replaces it: the next borrower must get the pool's usual transactional connection."""
    _cancelled_wait(conn)  # cleared: a warning an earlier borrower's failed call left is not this call's
    try:
        if autocommit:
            conn.autocommit = True  # a client-side switch while idle: no round trip
            yield
        else:
            with conn:
                yield
        raise_if_unconfirmed(conn, operation, **context)
    except psycopg.errors.ReadOnlySqlTransaction as exc:
        # The server became a standby under this connection (a failover, a switchover): close it, so the pool's
        # next connection goes to whichever host is the primary now (target_session_attrs=read-write).
        conn.close()
        raise classify(exc, operation=operation, **context) from exc
    except psycopg.Error as exc:
        raise classify(exc, operation=operation, **context) from exc
    finally:
        if autocommit and not conn.closed:
            try:
                conn.autocommit = False
            except psycopg.Error:
                conn.close()
        pool.putconn(conn)


def first_contact_problem(exc: BaseException) -> tuple[str, str]:
    """Why a first connection attempt failed, in one line without secrets, and what kind of failure it is:
    ``settings`` (a retry cannot help: a URL or the server's accounts must change), ``busy`` (the server is up but
    full) or ``unreachable`` (nothing answered; the server may be down or the address wrong).

    psycopg reports every login failure as an ``OperationalError`` without a SQLSTATE, so the text decides.

    >>> first_contact_problem(psycopg.OperationalError('connection to server at "h", port 5432 failed: '
    ...                                                'FATAL:  database "x" does not exist'))
    ('database "x" does not exist', 'settings')
    """
    text = str(exc)
    lower = text.lower()
    if "fatal:" in lower:  # the server answered and turned us away: its first line, never a DETAIL
        answer = redact(text[lower.index("fatal:") + len("fatal:"):].strip().splitlines()[0].strip())
        if any(s in lower for s in _SERVER_FULL):
            return answer, "busy"
        if any(s in lower for s in _SERVER_NOT_YET):
            return answer, "unreachable"
        return answer, "settings"
    for needle, reason in _CLIENT_SETTING:
        if needle in lower:
            return reason, "settings"
    for needle, reason in _UNREACHABLE:
        if needle in lower:
            return reason, "unreachable"
    return _reason(exc), "unreachable"


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return redact(text)
