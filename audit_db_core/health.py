"""One structured health report of every component the library depends on.

Example::

    report = db.health()
    report.healthy            # False when the primary is unreachable, its breaker is open, or the schema is behind
    report.status             # "healthy", "degraded" (a replica lags or is down, Redis is down: the primary still
                              # serves every read and write) or "unhealthy" (the primary, or the schema)
    report.to_dict()          # JSON-ready, for the CLI and the Dagster checks
    report.recommendations()  # {component: the action that fixes it} for each finding

Every component that is not healthy carries ``action``: what fixes it (a command, a setting), or what the library
does meanwhile and where to look (docs/guides/observability.md#recovery-recommendations lists them all).
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from audit_db_core import telemetry
from audit_db_core.config import AuditSettings
from audit_db_core.errors import redact
from audit_db_core.migrate import SCHEMA_VERSION
from audit_db_core.redis_client import redis_client


class HealthSources(Protocol):
    """What the report reads: the parts of an :class:`~audit_db_core.AuditDatabase` (which passes itself), named
    here so that health depends on the parts and not on the database module."""

    settings: AuditSettings
    connections: Any  # ConnectionManager: health_check, replica_status, pool_stats
    breakers: Any  # BreakerRegistry
    cache: Any  # interfaces.ResultCache
    router: Any  # ReplicaRouter

    @property
    def partitions(self) -> Any: ...  # PartitionManager: plan, default_row_count


@dataclass
class ComponentHealth:
    name: str
    healthy: bool
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    critical: bool = True  # False: reads and writes do not depend on it (a replica, the Redis cache)
    action: str | None = None  # what fixes it (None while healthy)


@dataclass
class HealthReport:
    checked_at: dt.datetime
    components: dict[str, ComponentHealth]
    pools: dict[str, dict[str, Any]]
    schema_version: int | None  # applied in the database
    package_schema_version: int  # shipped with this package
    breakers: dict[str, dict[str, Any]] = field(default_factory=dict)
    cache: dict[str, Any] = field(default_factory=dict)
    routing: dict[str, Any] = field(default_factory=dict)
    partitions: dict[str, Any] = field(default_factory=dict)

    @property
    def healthy(self) -> bool:
        """Every critical component (primary, schema) is healthy."""
        return all(c.healthy for c in self.components.values() if c.critical)

    @property
    def degraded(self) -> bool:
        """Healthy, but a non-critical component (a replica, Redis) is not."""
        return self.healthy and not all(c.healthy for c in self.components.values())

    @property
    def status(self) -> str:
        return "unhealthy" if not self.healthy else "degraded" if self.degraded else "healthy"

    def recommendations(self) -> dict[str, str]:
        """``{component: action}`` for every component that is not healthy, critical ones first."""
        bad = sorted((c for c in self.components.values() if not c.healthy), key=lambda c: not c.critical)
        return {c.name: c.action or "see the error" for c in bad}

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "checked_at": self.checked_at.isoformat(),
            "schema_version": self.schema_version,
            "package_schema_version": self.package_schema_version,
            "components": {name: asdict(c) for name, c in self.components.items()},
            "pools": self.pools,
            "breakers": self.breakers,
            "cache": self.cache,
            "routing": self.routing,
            "partitions": self.partitions,
            "recommendations": self.recommendations(),
        }


@dataclass(frozen=True)
class RedisStatus:
    """The Redis of the L2 cache, as measured by :func:`redis_status`."""

    configured: bool
    reachable: bool | None  # None when not configured
    latency_ms: float | None
    url: str | None  # password masked
    error: str | None = None

    @property
    def healthy(self) -> bool:
        """Not configured (nothing to reach) or answering PING."""
        return not self.configured or bool(self.reachable)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "healthy": self.healthy}


def redis_status(settings: AuditSettings) -> RedisStatus:
    """PING the configured Redis (``AUDIT_REDIS_URL``) with the cache's timeout
    (``AUDIT_CACHE__REDIS_TIMEOUT_SECONDS``) and measure the round trip. Never raises.

    Example::

        status = redis_status(settings)
        status.configured, status.reachable, status.latency_ms
    """
    if settings.redis_url is None:
        return RedisStatus(configured=False, reachable=None, latency_ms=None, url=None)
    client = redis_client(settings.redis_url.get_secret_value(), timeout=settings.cache.redis_timeout_seconds)
    started = time.perf_counter()
    try:
        client.ping()
        return RedisStatus(True, True, round((time.perf_counter() - started) * 1000, 3), settings.display_redis_url)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return RedisStatus(True, False, round((time.perf_counter() - started) * 1000, 3), settings.display_redis_url,
                           redact(reason))
    finally:
        client.close()


# -- recovery recommendations: the action that fixes each finding (the observability guide lists them) -------------

PRIMARY_DOWN = ("start PostgreSQL or fix AUDIT_DATABASE_URL (host, port, credentials), or in a cluster promote a "
                "standby: with every node in a multi-host AUDIT_DATABASE_URL (target_session_attrs=read-write) the "
                "library finds the new primary by itself; writes fail until a primary answers, nothing is buffered: "
                "callers re-send (insert and insert_many are idempotent); replicas that answer keep serving "
                "eventual reads")
PRIMARY_IN_RECOVERY = ("AUDIT_DATABASE_URL points at a standby: point it at the primary (after a failover, the "
                       "promoted server)")
SCHEMA_BEHIND = "run `audit-platform migrate` (idempotent) with the owner's login"
REPLICA_DOWN = ("reads fall back to the primary; start the replica or remove it from AUDIT_REPLICA_URLS, it rejoins "
                "rotation by itself once measured healthy")
REPLICA_NOT_STANDBY = ("reads skip it; it is not a standby (promoted?): rebuild it as a replica of the primary or "
                       "remove it from AUDIT_REPLICA_URLS")
REPLICA_LAGGING = ("reads fall back to the primary while the lag exceeds AUDIT_REPLICAS__MAX_LAG_SECONDS / "
                   "__MAX_LAG_BYTES; check replication (pg_stat_replication on the primary, the replica's log, its "
                   "disk and network); raise the bounds only if that staleness is acceptable")
REPLICA_LAG_UNKNOWN = ("reads skip it until its lag can be measured: check that it streams from the primary "
                       "(pg_stat_wal_receiver on the replica); any commit on the primary lets the lag be measured")
REDIS_DOWN = ("L2 is off and reads go to the database (each process keeps its L1); start Redis or fix "
              "AUDIT_REDIS_URL, the cache resumes by itself")
CACHE_KEY_MISSING = ("set AUDIT_CACHE__KEY to 32 random bytes (hex or base64), the same in every process of this "
                     "deployment; until then L2 is off and reads that miss L1 go to the database")
POOL_WAITING_PRIMARY = ("raise AUDIT_POOL__MAX_SIZE (PostgreSQL's max_connections must cover every process's pools) "
                        "or lower the concurrency; watch db.client.connection.pending_requests")
POOL_WAITING_REPLICA = ("raise AUDIT_POOL__REPLICA_MAX_SIZE (meanwhile reads that find no free replica connection go "
                        "to the primary) or lower the concurrency")
PARTITIONS_MISSING = ("run partition maintenance: `audit-platform partitions create` (this period and the "
                      "AUDIT_PARTITIONS__PREMAKE next ones) or the partition_maintenance_job; meanwhile writes land "
                      "in DEFAULT")
DEFAULT_ROWS = ("`audit-platform partitions rescue` moves them into partitions of their own (rows of an archived "
                "and detached month stay: `audit-platform partitions plan` lists them)")
PARTITIONS_UNREADABLE = ("the registry could not be read: run `audit-platform partitions plan` with the same login "
                         "to see why (a role without audit_maintainer or audit_reader cannot read it)")


def build_health_report(db: HealthSources) -> HealthReport:
    """Every component of ``db`` checked once: pools, primary, schema, replicas, Redis, breakers, partitions."""
    waiting = _pools_health(db.connections.pool_stats(), db.settings)  # before the check queues up itself
    primary = db.connections.health_check()
    applied = primary.get("schema_version")
    replicas = db.connections.replica_status()
    components = {"primary": _primary_health(primary, replicas)}
    if primary["reachable"]:
        components["schema"] = _schema_health(applied)
    for replica in replicas:
        fine = replica.healthy or replica.is_primary  # a cluster node that is the primary is no finding
        components[replica.name] = ComponentHealth(
            name=replica.name,
            healthy=fine,
            details={k: v for k, v in replica.to_dict().items() if k not in ("error", "problem", "healthy", "name")},
            error=None if fine else replica.problem,
            critical=False,
            action=None if fine else _replica_action(replica),
        )
    components["redis"] = _redis_health(db.settings, getattr(db.cache, "l2_off_reason", None))
    components["pools"] = waiting
    breakers = db.breakers.stats()
    components["breakers"] = _breakers_health(breakers, db.settings)
    partitions: dict[str, Any] = {}
    if primary["reachable"] and applied is not None and applied >= SCHEMA_VERSION:
        components["partitions"], partitions = _partitions_health(db)
    report = HealthReport(
        checked_at=dt.datetime.now(dt.UTC),
        components=components,
        pools=db.connections.pool_stats(),
        schema_version=applied,
        package_schema_version=SCHEMA_VERSION,
        breakers=breakers,
        cache={**db.cache.stats(), "fleet": db.cache.fleet_stats()},
        routing=db.router.snapshot(),
        partitions=partitions,
    )
    telemetry.note_health(db, report)  # the audit.health.* and partition gauges of a registered database
    return report


def _primary_health(primary: dict[str, Any], replicas: list[Any]) -> ComponentHealth:
    """The primary; when it is down, the finding also says which replicas serve reads meanwhile, how stale."""
    healthy = bool(primary["reachable"]) and not primary["in_recovery"]
    error = primary["error"] or ("the primary is in recovery (a standby)" if primary["in_recovery"] else None)
    details = {k: v for k, v in primary.items() if k != "error"}
    if not primary["reachable"] and replicas:
        serving = {r.name: r.lag_seconds for r in replicas if r.healthy and not r.primary_reachable}
        details["reads_served_by"] = serving
        error = f"{error}; " + (
            "reads are served by " + ", ".join(
                f"{name} with staleness {'unknown' if s is None else f'{s:g} s'}" for name, s in serving.items())
            + " (eventual; bounded while the staleness is within AUDIT_REPLICAS__BOUNDED_LAG_SECONDS)"
            if serving else "no replica answers either: reads fail")
    return ComponentHealth(
        name="primary",
        healthy=healthy,
        details=details,
        error=error,
        action=None if healthy else PRIMARY_IN_RECOVERY if primary["reachable"] else PRIMARY_DOWN,
    )


def _schema_health(applied: int | None) -> ComponentHealth:
    behind = applied is None or applied < SCHEMA_VERSION
    return ComponentHealth(
        name="schema",
        healthy=not behind,
        details={"applied": applied, "shipped": SCHEMA_VERSION},
        error=f"database schema is at version {applied}, the package needs {SCHEMA_VERSION}: run migrate"
        if behind else None,
        action=SCHEMA_BEHIND if behind else None,
    )


def _redis_health(settings: AuditSettings, l2_off_reason: str | None = None) -> ComponentHealth:
    """Redis as measured, and whether L2 may use it: a reachable Redis that L2 is off for (no key) is a finding."""
    cache = redis_status(settings)
    unused = cache.healthy and cache.configured and l2_off_reason is not None
    return ComponentHealth(
        name="redis",
        healthy=cache.healthy and not unused,
        details={k: v for k, v in cache.to_dict().items() if k not in ("error", "healthy")} | {"l2": not unused},
        error=f"L2 is off: {l2_off_reason}" if unused else None if cache.healthy else f"unreachable: {cache.error}",
        critical=False,
        action=CACHE_KEY_MISSING if unused else None if cache.healthy else REDIS_DOWN,
    )


def _breakers_health(breakers: dict[str, dict[str, Any]], settings: AuditSettings) -> ComponentHealth:
    not_closed = [name for name, b in breakers.items() if b["state"] != "closed"]
    return ComponentHealth(
        name="breakers",
        healthy=not not_closed,
        details={"not_closed": not_closed},
        error="circuit breaker(s) not closed: " + ", ".join(f"{n} ({breakers[n]['state']})" for n in not_closed)
        if not_closed else None,
        critical="primary" in not_closed,  # writes fail while the primary's is open; others only degrade
        action="; ".join(breaker_action(n, breakers[n]) for n in not_closed) or None,
    )


def _pools_health(stats: dict[str, dict[str, Any]], settings: AuditSettings) -> ComponentHealth:
    """Callers waiting for a connection when the check started: the pool is too small for the load (never a
    failure of the server: a busy pool does not count against a breaker)."""
    waiting = {name: s["waiting"] for name, s in stats.items() if s.get("waiting")}
    return ComponentHealth(
        name="pools",
        healthy=not waiting,
        details={"waiting": waiting, "max_size": {name: s["max_size"] for name, s in stats.items()}},
        error="caller(s) waiting for a connection: " + ", ".join(f"{n} ({w})" for n, w in waiting.items())
        if waiting else None,
        critical=False,
        action=(POOL_WAITING_PRIMARY if "primary" in waiting else POOL_WAITING_REPLICA) if waiting else None,
    )


def _partitions_health(db: HealthSources) -> tuple[ComponentHealth, dict[str, Any]]:
    """Premake coverage and DEFAULT rows; not critical: writes still land (in DEFAULT) and are rescued."""
    try:
        plan = db.partitions.plan()
        missing = [a.partition for a in plan.of("create")]
        default_rows = db.partitions.default_row_count()
    except Exception as exc:
        return ComponentHealth(name="partitions", healthy=False, critical=False,
                               error=redact(str(exc).splitlines()[0] if str(exc) else type(exc).__name__),
                               action=PARTITIONS_UNREADABLE), {}
    partitions = {"missing": missing, "premake": db.settings.partitions.premake, "default_rows": default_rows}
    problems = ([f"{len(missing)} partition(s) of the premake window missing: {', '.join(missing)}"]
                if missing else []) + ([f"{default_rows} row(s) in the DEFAULT partition"] if default_rows else [])
    actions = ([PARTITIONS_MISSING] if missing else []) + ([DEFAULT_ROWS] if default_rows else [])
    return ComponentHealth(name="partitions", healthy=not problems, details=partitions,
                           error="; ".join(problems) or None, critical=False,
                           action="; ".join(actions) or None), partitions


def _replica_action(replica: Any) -> str:
    if not replica.reachable:
        return REPLICA_DOWN
    if replica.in_recovery is not True:
        return REPLICA_NOT_STANDBY
    if replica.lag_bytes is None or replica.lag_seconds is None:
        return REPLICA_LAG_UNKNOWN
    return REPLICA_LAGGING


def breaker_action(name: str, stats: dict[str, Any]) -> str:
    """What an open (or half-open) breaker of ``name`` means and what closes it."""
    after = f"it lets a trial call through {stats.get('retry_after_seconds', 0)} s from now"
    if name == "primary":
        after += ", or as soon as a probe finds a primary answering"
        return f"primary: writes fail fast with CircuitOpenError until the primary answers ({after}); {PRIMARY_DOWN}"
    if name.startswith("replica"):
        return f"{name}: reads skip it and go to the primary ({after}); {REPLICA_DOWN}"
    if name == "redis":
        return f"redis: {REDIS_DOWN} ({after})"
    return (f"{name}: partition lifecycle operations are refused for now ({after}); the logs and the lifecycle "
            "ledger name the failing step: fix its cause, then re-run it")
