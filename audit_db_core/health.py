"""One structured health report of every component the library depends on.

Example::

    report = db.health()
    report.healthy            # False when the primary is unreachable, its breaker is open, or the schema is behind
    report.status             # "healthy", "degraded" (a replica lags or is down, Redis is down: the primary still
                              # serves every read and write) or "unhealthy" (the primary, or the schema)
    report.to_dict()          # JSON-ready, for the CLI and the Dagster checks
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from audit_db_core.config import AuditSettings
from audit_db_core.errors import redact
from audit_db_core.migrate import SCHEMA_VERSION


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
    import redis

    timeout = settings.cache.redis_timeout_seconds
    client = redis.Redis.from_url(
        settings.redis_url.get_secret_value(), socket_timeout=timeout, socket_connect_timeout=timeout,
        retry_on_timeout=False,
    )
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


def build_health_report(db: HealthSources) -> HealthReport:
    """Every component of ``db`` checked once: primary, schema, replicas, Redis, breakers, partitions."""
    primary = db.connections.health_check()
    applied = primary.get("schema_version")
    components = {"primary": _primary_health(primary)}
    if primary["reachable"]:
        components["schema"] = _schema_health(applied)
    for replica in db.connections.replica_status():
        components[replica.name] = ComponentHealth(
            name=replica.name,
            healthy=replica.healthy,
            details={k: v for k, v in replica.to_dict().items() if k not in ("error", "problem", "healthy", "name")},
            error=replica.problem,
            critical=False,
        )
    components["redis"] = _redis_health(db.settings)
    breakers = db.breakers.stats()
    components["breakers"] = _breakers_health(breakers)
    partitions: dict[str, Any] = {}
    if primary["reachable"] and applied is not None and applied >= SCHEMA_VERSION:
        components["partitions"], partitions = _partitions_health(db)
    return HealthReport(
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


def _primary_health(primary: dict[str, Any]) -> ComponentHealth:
    return ComponentHealth(
        name="primary",
        healthy=bool(primary["reachable"]) and not primary["in_recovery"],
        details={k: v for k, v in primary.items() if k != "error"},
        error=primary["error"] or ("the primary is in recovery (a standby)" if primary["in_recovery"] else None),
    )


def _schema_health(applied: int | None) -> ComponentHealth:
    behind = applied is None or applied < SCHEMA_VERSION
    return ComponentHealth(
        name="schema",
        healthy=not behind,
        details={"applied": applied, "shipped": SCHEMA_VERSION},
        error=f"database schema is at version {applied}, the package needs {SCHEMA_VERSION}: run migrate"
        if behind else None,
    )


def _redis_health(settings: AuditSettings) -> ComponentHealth:
    cache = redis_status(settings)
    return ComponentHealth(
        name="redis",
        healthy=cache.healthy,
        details={k: v for k, v in cache.to_dict().items() if k not in ("error", "healthy")},
        error=None if cache.healthy else f"unreachable: {cache.error}",
        critical=False,
    )


def _breakers_health(breakers: dict[str, dict[str, Any]]) -> ComponentHealth:
    not_closed = [name for name, b in breakers.items() if b["state"] != "closed"]
    return ComponentHealth(
        name="breakers",
        healthy=not not_closed,
        details={"not_closed": not_closed},
        error="circuit breaker(s) not closed: " + ", ".join(f"{n} ({breakers[n]['state']})" for n in not_closed)
        if not_closed else None,
        critical="primary" in not_closed,  # writes fail while the primary's is open; others only degrade
    )


def _partitions_health(db: HealthSources) -> tuple[ComponentHealth, dict[str, Any]]:
    """Premake coverage and DEFAULT rows; not critical: writes still land (in DEFAULT) and are rescued."""
    try:
        plan = db.partitions.plan()
        missing = [a.partition for a in plan.of("create")]
        default_rows = db.partitions.default_row_count()
    except Exception as exc:
        return ComponentHealth(name="partitions", healthy=False, critical=False,
                               error=redact(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)), {}
    partitions = {"missing": missing, "premake": db.settings.partitions.premake, "default_rows": default_rows}
    problems = ([f"{len(missing)} partition(s) of the premake window missing: {', '.join(missing)}"]
                if missing else []) + ([f"{default_rows} row(s) in the DEFAULT partition"] if default_rows else [])
    return ComponentHealth(name="partitions", healthy=not problems, details=partitions,
                           error="; ".join(problems) or None, critical=False), partitions
