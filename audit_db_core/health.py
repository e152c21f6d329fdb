"""One structured health report of every component the library depends on.

Example::

    report = db.health()
    report.healthy            # False when the primary is unreachable
    report.to_dict()          # JSON-ready, for the CLI and the Dagster checks
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from audit_db_core.migrate import SCHEMA_VERSION

if TYPE_CHECKING:
    from audit_db_core.database import AuditDatabase


@dataclass
class ComponentHealth:
    name: str
    healthy: bool
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass
class HealthReport:
    checked_at: dt.datetime
    components: dict[str, ComponentHealth]
    pools: dict[str, dict[str, Any]]
    schema_version: int | None  # applied in the database
    package_schema_version: int  # shipped with this package

    @property
    def healthy(self) -> bool:
        return all(c.healthy for c in self.components.values())

    @property
    def status(self) -> str:
        return "healthy" if self.healthy else "unhealthy"

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "checked_at": self.checked_at.isoformat(),
            "schema_version": self.schema_version,
            "package_schema_version": self.package_schema_version,
            "components": {name: asdict(c) for name, c in self.components.items()},
            "pools": self.pools,
        }


def build_health_report(db: AuditDatabase) -> HealthReport:
    primary = db.connections.health_check()
    applied = primary.get("schema_version")
    components = {
        "primary": ComponentHealth(
            name="primary",
            healthy=bool(primary["reachable"]) and not primary["in_recovery"],
            details={k: v for k, v in primary.items() if k != "error"},
            error=primary["error"] or ("the primary is in recovery (a standby)" if primary["in_recovery"] else None),
        )
    }
    if primary["reachable"]:
        behind = applied is None or applied < SCHEMA_VERSION
        components["schema"] = ComponentHealth(
            name="schema",
            healthy=not behind,
            details={"applied": applied, "shipped": SCHEMA_VERSION},
            error=f"database schema is at version {applied}, the package needs {SCHEMA_VERSION}: run migrate"
            if behind
            else None,
        )
    return HealthReport(
        checked_at=dt.datetime.now(dt.UTC),
        components=components,
        pools=db.connections.pool_stats(),
        schema_version=applied,
        package_schema_version=SCHEMA_VERSION,
    )
