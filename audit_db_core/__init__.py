"""audit_db_core: a tamper-evident, partitioned audit log on PostgreSQL.

The public API, re-exported here::

    from audit_db_core import AuditDatabase, AuditEvent, AuditQuery, AuditSettings, PartitionManager

The names that need the database driver are imported on first use, so that a module with no database — the
offline integrity checks of ``audit_db_core.integrity.model`` — can be imported without psycopg.
"""

from typing import TYPE_CHECKING

from audit_db_core.config import AuditSettings, Period
from audit_db_core.errors import (
    ArchiveError,
    AuditConnectionError,
    AuditError,
    AuditTimeoutError,
    AuditValidationError,
    CacheError,
    ComplianceError,
    ConfigurationError,
    DatabaseError,
    ErrorCategory,
    IntegrityViolation,
    MigrationError,
    PartitionError,
    Severity,
    UnconfirmedCommitError,
    classify,
)
from audit_db_core.events import AuditEvent, DataClassification, EventStatus, StoredAuditEvent
from audit_db_core.exports import on_first_use
from audit_db_core.migrate import MigrationResult, migrate  # eager: binds `migrate` to the function, not the module

if TYPE_CHECKING:
    from audit_db_core.connections import ConnectionManager
    from audit_db_core.database import AuditDatabase, AuditTransaction
    from audit_db_core.health import HealthReport
    from audit_db_core.partitions import PartitionInfo, PartitionManager
    from audit_db_core.query import AuditQuery, QueryPage

#: Names that need the database driver, and the module each lives in: imported on first use.
_ON_FIRST_USE = {
    "ConnectionManager": "connections",
    "AuditDatabase": "database",
    "AuditTransaction": "database",
    "HealthReport": "health",
    "PartitionInfo": "partitions",
    "PartitionManager": "partitions",
    "AuditQuery": "query",
    "QueryPage": "query",
}

__all__ = [
    "ArchiveError",
    "AuditConnectionError",
    "AuditDatabase",
    "AuditError",
    "AuditEvent",
    "AuditQuery",
    "AuditSettings",
    "AuditTimeoutError",
    "AuditTransaction",
    "AuditValidationError",
    "CacheError",
    "ComplianceError",
    "ConfigurationError",
    "ConnectionManager",
    "DataClassification",
    "DatabaseError",
    "ErrorCategory",
    "EventStatus",
    "HealthReport",
    "IntegrityViolation",
    "MigrationError",
    "MigrationResult",
    "PartitionError",
    "PartitionInfo",
    "PartitionManager",
    "Period",
    "QueryPage",
    "Severity",
    "StoredAuditEvent",
    "UnconfirmedCommitError",
    "classify",
    "migrate",
]


__getattr__, __dir__ = on_first_use(__name__, _ON_FIRST_USE, globals())
