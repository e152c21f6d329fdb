"""audit_db_core: a tamper-evident, partitioned audit log on PostgreSQL.

The public API, re-exported here::

    from audit_db_core import AuditDatabase, AuditEvent, AuditQuery, AuditSettings, PartitionManager
"""

from audit_db_core.config import AuditSettings, Period
from audit_db_core.connections import ConnectionManager
from audit_db_core.database import AuditDatabase, AuditTransaction
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
    classify,
)
from audit_db_core.events import AuditEvent, DataClassification, EventStatus, StoredAuditEvent
from audit_db_core.health import HealthReport
from audit_db_core.migrate import MigrationResult, migrate
from audit_db_core.partitions import PartitionInfo, PartitionManager
from audit_db_core.query import AuditQuery, QueryPage

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
    "classify",
    "migrate",
]
