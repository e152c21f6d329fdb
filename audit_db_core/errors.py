"""Error hierarchy of the audit library.

Every error the library raises is an :class:`AuditError` carrying a *category* (what kind of failure), a
*severity* (how urgently an operator must act) and a *context* (the operation, the correlation id, the
partition...). Messages never contain secrets (DSN passwords are redacted) nor the values of audit fields,
which may be PHI: they name the field and the reason.

Example::

    try:
        db.insert(event)
    except AuditConnectionError as exc:
        log.error("audit write failed", extra={"audit": exc.to_dict()})
"""

from __future__ import annotations

import enum
import re
import sys
from collections.abc import Iterable
from typing import Any


class ErrorCategory(str, enum.Enum):
    VALIDATION = "validation"
    CONFIGURATION = "configuration"
    CONNECTION = "connection"
    TIMEOUT = "timeout"
    PARTITION = "partition"
    MIGRATION = "migration"
    CACHE = "cache"
    INTEGRITY = "integrity"
    COMPLIANCE = "compliance"
    DATABASE = "database"
    LOCAL_SERVER = "local_server"
    ARCHIVE = "archive"


class Severity(str, enum.Enum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


# The user-info of a URL up to the *last* ``@`` before its host, so that an un-encoded ``@`` (or ``/``) in the
# password does not leave the rest of the password behind as if it were the host.
_URL_PASSWORD = re.compile(
    r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<pw>\S*?)@(?=[^@\s/?#\"']*(?:[/\s?#\"']|$))"
)
_SECRET_KEYS = (
    "password|passwd|pwd|secret|secret_key|secret_access_key|access_key|session_token|token|api_key|apikey|sig"
)
_KV_PASSWORD = re.compile(
    rf"(?P<key>\b(?:{_SECRET_KEYS})\s*=\s*)(?P<pw>'(?:[^'\\]|\\.)*'|[^\s&]+)", re.IGNORECASE
)
# libpq echoes the offending part of a URL that does not parse, which may be (part of) the password.
_LIBPQ_TOKEN = re.compile(r'(?P<what>invalid percent-encoded token: |unexpected spaces found in )"[^"\n]*"')
# A server error's DETAIL / CONTEXT / QUERY / LINE lines quote row values (a failing row, a duplicate key, a COPY
# line): they end at a blank line, another such label, a HINT, or the next part of a traceback.
_SERVER_DETAIL = re.compile(r"^[ \t]*(?:DETAIL|CONTEXT|QUERY|LOCATION|LINE \d+):")
_DETAIL_END = re.compile(r"^[ \t]*(?:HINT:|Traceback \(|The above exception|During handling of)|^\s*$")
# The same labels inside one line (a message whose newlines were folded into spaces): libpq puts two spaces after
# the label, and everything after it on that line is diagnostic detail.
_INLINE_DETAIL = re.compile(r"\s+(?:DETAIL|CONTEXT|QUERY):  .*$")


def _strip_server_detail(text: str) -> str:
    if not any(label in text for label in ("DETAIL:", "CONTEXT:", "QUERY:", "LOCATION:", "LINE ")):
        return text
    out: list[str] = []
    skipping = changed = False
    for line in text.splitlines(keepends=True):
        if _SERVER_DETAIL.match(line):
            skipping = changed = True
            continue
        if skipping and not _DETAIL_END.match(line):
            continue
        skipping = False
        body = line.rstrip("\r\n")
        cut = _INLINE_DETAIL.sub("", body)
        if cut != body:
            changed = True
            line = cut + line[len(body):]
        out.append(line)
    return "".join(out).rstrip("\n") if changed else text


def redact(text: str) -> str:
    """Make ``text`` safe to log or show: passwords in URLs (``scheme://user:secret@host``), ``password=...`` and
    similar credential pairs are masked, and a database server's DETAIL / CONTEXT / QUERY / LINE lines (which
    quote row values) are removed.

    >>> redact("postgresql://app:s3cret@db:5432/audit")
    'postgresql://app:***@db:5432/audit'
    >>> redact('duplicate key value violates unique constraint "k"\\nDETAIL:  Key (id)=(42) already exists.')
    'duplicate key value violates unique constraint "k"'
    """
    text = _strip_server_detail(text)
    text = _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
    text = _LIBPQ_TOKEN.sub(lambda m: f'{m["what"]}"***"', text)
    return _KV_PASSWORD.sub(lambda m: f"{m['key']}***", text)


def redact_value(value: Any) -> Any:
    """A JSON-ready copy of ``value`` (dicts, lists, scalars) with every string passed through :func:`redact`.

    >>> redact_value({"url": "redis://:pw@cache:6379/0", "n": 1})
    {'url': 'redis://:***@cache:6379/0', 'n': 1}
    """
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {str(k): redact_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [redact_value(v) for v in value]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return redact(str(value))


def _is_driver_error(exc: BaseException) -> bool:
    """A psycopg error — without importing psycopg: where it was never imported, no error can be one (the
    offline integrity model imports this module with no driver at all)."""
    driver = sys.modules.get("psycopg")
    return driver is not None and isinstance(exc, driver.Error)


def server_message(exc: BaseException) -> str:
    """What may be shown of ``exc``: for a database server error its primary message (and hint) only — never the
    DETAIL or CONTEXT lines, which quote row values — with the quoted input of a data error (SQLSTATE class 22,
    e.g. ``invalid input syntax for type uuid: "…"``) masked; for anything else its text, redacted.

    >>> server_message(ValueError("connect to postgresql://u:pw@h/db failed"))
    'connect to postgresql://u:***@h/db failed'
    """
    diag = getattr(exc, "diag", None) if _is_driver_error(exc) else None
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    if not primary:
        text = redact(str(exc)).strip()
        return text or type(exc).__name__
    sqlstate = getattr(exc, "sqlstate", None) or ""
    if sqlstate.startswith("22"):  # data exceptions quote the value that was refused
        primary = re.sub(r'"[^"]*"', '"…"', primary)
    hint = getattr(diag, "message_hint", None)
    return redact(f"{primary} (hint: {hint})" if hint else primary)


def scrub_exception(exc: BaseException | None) -> None:
    """Cut the DETAIL / CONTEXT lines out of the database errors in ``exc``'s chain (``__cause__`` and
    ``__context__``), in place, so that a traceback printed by anyone — a log handler, Dagster, pytest — shows
    only their primary message. Their ``diag`` keeps every field for code that needs it."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if _is_driver_error(exc) and getattr(exc.diag, "message_primary", None):
            exc.args = (server_message(exc),)
        exc = exc.__cause__ if exc.__cause__ is not None else exc.__context__


class AuditError(Exception):
    """Base of every error raised by the library."""

    category: ErrorCategory = ErrorCategory.DATABASE
    severity: Severity = Severity.HIGH
    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        operation: str | None = None,
        correlation_id: str | None = None,
        severity: Severity | None = None,
        **context: Any,
    ) -> None:
        self.message = redact(message)
        if severity is not None:
            self.severity = severity
        self.context: dict[str, Any] = {
            k: v
            for k, v in {"operation": operation, "correlation_id": correlation_id, **context}.items()
            if v is not None
        }
        super().__init__(self.message)

    @property
    def operation(self) -> str | None:
        return self.context.get("operation")

    @property
    def correlation_id(self) -> str | None:
        return self.context.get("correlation_id")

    def amend(self, suffix: str, **context: Any) -> AuditError:
        """Add to the message (and context) of an error on its way up; returns it for ``raise err.amend(...)``."""
        self.message = redact(f"{self.message} {suffix}")
        self.args = (self.message,)
        self.context.update({k: v for k, v in context.items() if v is not None})
        return self

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form for structured logs and alerts."""
        return {
            "error": type(self).__name__,
            "category": self.category.value,
            "severity": self.severity.value,
            "retryable": self.retryable,
            "message": self.message,
            "context": {k: redact(str(v)) for k, v in self.context.items()},
        }

    def __str__(self) -> str:
        where = f" [{self.operation}]" if self.operation else ""
        return f"{self.message}{where}"


class FieldProblem(tuple[str, str]):
    """One invalid field: ``(field, reason)``; ``field`` is a dotted path such as ``details.a.b``."""

    __slots__ = ()

    def __new__(cls, field: str, reason: str) -> FieldProblem:
        return super().__new__(cls, (field, reason))

    @property
    def field(self) -> str:
        return self[0]

    @property
    def reason(self) -> str:
        return self[1]


class AuditValidationError(AuditError, ValueError):
    """Input refused before it reached the database. ``problems`` lists every (field, reason)."""

    category = ErrorCategory.VALIDATION
    severity = Severity.LOW

    def __init__(self, subject: str, problems: Iterable[tuple[str, str]], **context: Any) -> None:
        self.subject = subject
        self.problems = [FieldProblem(f, r) for f, r in problems]
        listed = "; ".join(f"{p.field}: {p.reason}" for p in self.problems)
        super().__init__(f"invalid {subject}: {listed}", **context)

    @property
    def fields(self) -> list[str]:
        return [p.field for p in self.problems]

    @classmethod
    def from_pydantic(cls, subject: str, exc: Any, *, env_prefix: str | None = None) -> AuditValidationError:
        """Turn a ``pydantic.ValidationError`` into ours, without echoing input values (they may be PHI)."""
        problems = []
        for err in exc.errors(include_input=False, include_url=False):
            loc = [str(p) for p in err.get("loc", ())]
            if env_prefix is not None:
                field = env_prefix + "__".join(loc).upper() if loc else env_prefix.rstrip("_")
            else:
                field = ".".join(loc) or subject
            msg = err.get("msg", "invalid")
            if msg.startswith("Value error, "):
                msg = msg[len("Value error, ") :]
            problems.append((field, msg))
        return cls(subject, problems)


class ConfigurationError(AuditValidationError):
    """A setting is missing or invalid; raised at start-up, naming the environment variable."""

    category = ErrorCategory.CONFIGURATION
    severity = Severity.CRITICAL


class AuditConnectionError(AuditError):
    """The database (or another backing service) could not be reached."""

    category = ErrorCategory.CONNECTION
    severity = Severity.HIGH
    retryable = True


class ConnectionSettingError(ConfigurationError, AuditConnectionError):
    """The first connection to a server was refused for a reason no retry mends — an unknown host, a missing
    database or role, a wrong password, a bad ``sslmode`` — so a setting (named in ``problems``) is wrong. It is
    an :class:`AuditConnectionError` too, for code that handles unreachable servers, but never retryable."""

    retryable = False


class AuditTimeoutError(AuditError):
    """An operation ran past its deadline (statement timeout, pool acquisition timeout)."""

    category = ErrorCategory.TIMEOUT
    severity = Severity.MEDIUM
    retryable = True


class CircuitOpenError(AuditConnectionError):
    """A circuit breaker is open: the component failed repeatedly, so calls fail at once instead of waiting.

    ``component`` names the breaker (``primary``, ``replica-0``, ``redis``, ``partitions``); ``retry_after`` is how
    many seconds remain before the breaker lets a trial call through.
    """

    severity = Severity.HIGH
    retryable = True

    def __init__(self, component: str, retry_after: float, *, operation: str | None = None, **context: Any) -> None:
        self.component = component
        self.retry_after = max(retry_after, 0.0)
        super().__init__(
            f"{component} is unavailable: its circuit breaker is open after repeated failures; "
            f"retry in {self.retry_after:.1f} s",
            operation=operation,
            component=component,
            retry_after_seconds=round(self.retry_after, 3),
            **context,
        )


class UnconfirmedCommitError(AuditError):
    """A write committed on the primary that no synchronous standby confirmed: with ``synchronous_commit`` ``on`` /
    ``remote_write`` / ``remote_apply`` and a synchronous standby named, the commit's wait for that standby was
    cancelled (``pg_cancel_backend``, a client's cancel request), and PostgreSQL then commits locally and answers
    with only a warning. The write is stored (``committed`` is True) and is not lost while the primary lives;
    re-sending it is harmless but does not confirm it. What it lacks is the copy on a standby that the setting asks
    for before a write is acknowledged: a failover before the standby catches up would lose it."""

    category = ErrorCategory.DATABASE
    severity = Severity.HIGH
    retryable = False
    committed = True


class PartitionError(AuditError):
    """A partition could not be created, found or changed."""

    category = ErrorCategory.PARTITION
    severity = Severity.HIGH


class ArchiveError(AuditError):
    """A partition archive could not be written, read, verified or restored."""

    category = ErrorCategory.ARCHIVE
    severity = Severity.HIGH


class MigrationError(AuditError):
    """The schema could not be migrated (or an applied migration was altered)."""

    category = ErrorCategory.MIGRATION
    severity = Severity.CRITICAL


class CacheError(AuditError):
    """The query cache failed. Callers never see it: the cache is bypassed instead."""

    category = ErrorCategory.CACHE
    severity = Severity.LOW
    retryable = True


class IntegrityViolation(AuditError):
    """Stored audit data does not match what was written (tampering, corruption)."""

    category = ErrorCategory.INTEGRITY
    severity = Severity.CRITICAL


class ComplianceError(AuditError):
    """An operation would break a compliance rule (append-only log, legal hold, retention)."""

    category = ErrorCategory.COMPLIANCE
    severity = Severity.CRITICAL


class DatabaseError(AuditError):
    """Any other database failure, with the SQLSTATE in its context."""

    category = ErrorCategory.DATABASE
    severity = Severity.HIGH


#: Appended to permission errors: which group role (migration 0007_roles) grants what.
_ROLES_HINT = (
    "hint: the database role in use lacks this privilege; grant it audit_writer to insert and query, audit_reader "
    "to query, audit_maintainer for migrations and the partition lifecycle"
)


def classify(exc: BaseException, *, operation: str | None = None, **context: Any) -> AuditError:
    """Map a driver exception onto the library's hierarchy (an ``AuditError`` is returned as it is).

    >>> import psycopg
    >>> classify(psycopg.OperationalError("connection refused"), operation="insert").category.value
    'connection'
    """
    if isinstance(exc, AuditError):
        return exc
    import psycopg.errors  # here, not at the top: the errors (and the offline integrity model) need no driver

    diag = getattr(exc, "diag", None)
    hint = getattr(diag, "message_hint", None) if diag is not None else None
    # The server's primary message (and hint), not the DETAIL/CONTEXT lines, which may carry row values; the
    # driver's exception, kept as the cause, is cut down the same way (tracebacks print it).
    message = server_message(exc)
    scrub_exception(exc)
    sqlstate = getattr(exc, "sqlstate", None)
    if sqlstate:
        context.setdefault("sqlstate", sqlstate)
    err: AuditError
    if _is_pool_timeout(exc):  # a PoolTimeout is an OperationalError too: test it first
        # The pool was busy (every connection in use), which says nothing about the server's health.
        err = AuditTimeoutError(f"no database connection available in time: {message}", operation=operation,
                                pool_exhausted=True, **context)
    elif isinstance(exc, psycopg.errors.QueryCanceled):
        err = AuditTimeoutError(f"statement timed out: {message}", operation=operation, **context)
    elif isinstance(exc, psycopg.errors.RaiseException) and ("append-only" in message or "is archived and read-only" in message):
        err = ComplianceError(message, operation=operation, **context)
    elif isinstance(exc, psycopg.errors.InsufficientPrivilege):
        doing = f" to {operation}" if operation else ""
        # The server's own hint is more specific than ours (the migration's role checks give one).
        guidance = "" if hint else f" ({_ROLES_HINT})"
        err = ComplianceError(f"not permitted{doing}: {message}{guidance}", operation=operation, **context)
    elif isinstance(exc, psycopg.errors.ReadOnlySqlTransaction):
        # Only a standby refuses the library's writes so (it never starts read-only transactions): the primary it
        # reached moved away; a retry on a new connection reaches the new one.
        err = AuditConnectionError(f"the server is read-only, no longer the primary: {message}", operation=operation,
                                   **context)
    elif isinstance(exc, (psycopg.errors.ConnectionException, psycopg.errors.AdminShutdown)) or (
        isinstance(exc, psycopg.OperationalError) and sqlstate is None
    ):
        err = AuditConnectionError(f"database unreachable: {message}", operation=operation, **context)
    elif isinstance(exc, psycopg.errors.SerializationFailure | psycopg.errors.DeadlockDetected):
        err = DatabaseError(message, operation=operation, **context)
        err.retryable = True
    elif isinstance(exc, TimeoutError):
        err = AuditTimeoutError(message, operation=operation, **context)
    else:
        err = DatabaseError(message, operation=operation, **context)
    err.__cause__ = exc
    return err


def _is_pool_timeout(exc: BaseException) -> bool:
    try:
        from psycopg_pool import PoolTimeout
    except ImportError:  # pragma: no cover - psycopg_pool is a dependency
        return False
    return isinstance(exc, PoolTimeout)

