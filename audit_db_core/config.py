"""Settings: one pydantic-settings tree, read from ``AUDIT_*`` environment variables.

Top-level URLs are flat (``AUDIT_DATABASE_URL``, ``AUDIT_REPLICA_URLS``, ``AUDIT_REDIS_URL``); sections nest with
``__`` (``AUDIT_POOL__MAX_SIZE=20``, ``AUDIT_PARTITIONS__INTERVAL=quarterly``,
``AUDIT_BREAKERS__PRIMARY__FAILURE_THRESHOLD=5``). An invalid value raises :class:`ConfigurationError` naming
the variable and the reason. URLs are ``SecretStr``: their passwords never show in ``repr``, logs or errors.

Example::

    settings = AuditSettings()                                   # from the environment
    settings = AuditSettings(database_url="postgresql://app@db/audit", partitions={"interval": "quarterly"})
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import re
from typing import Annotated, Any, ClassVar, Final, Literal

import pydantic
from pydantic_core import core_schema
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

from audit_db_core.errors import ConfigurationError, redact
from audit_db_core.redis_client import SENTINEL_SCHEME, SentinelURL

ENV_PREFIX = "AUDIT_"

_PERIOD = re.compile(r"^\s*(\d+)\s*(day|week|month|quarter|year)s?\s*$", re.IGNORECASE)
_NAMED = {
    "daily": "1 day",
    "weekly": "1 week",
    "monthly": "1 month",
    "quarterly": "1 quarter",
    "yearly": "1 year",
    "annual": "1 year",
}


@functools.total_ordering
class Period:
    """A calendar length: whole months (month, quarter, year) or whole days (day, week), never both.

    >>> Period.parse("quarterly"), Period.parse("7 years"), Period.parse("90 days")
    (Period(months=3, days=0), Period(months=84, days=0), Period(months=0, days=90))
    """

    __slots__ = ("months", "days")

    def __init__(self, months: int = 0, days: int = 0) -> None:
        if months < 0 or days < 0 or (months and days) or not (months or days):
            raise ValueError("a period is a positive number of months or of days")
        self.months = months
        self.days = days

    def __reduce__(self) -> tuple[Any, ...]:
        return (Period, (self.months, self.days))

    def __repr__(self) -> str:
        return f"Period(months={self.months}, days={self.days})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Period) and (self.months, self.days) == (other.months, other.days)

    def __lt__(self, other: Period) -> bool:
        return self.approx_days() < other.approx_days()

    def __hash__(self) -> int:
        return hash((self.months, self.days))

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> Any:
        # A plain validator (not a dataclass) so pydantic-settings reads "quarterly" from the env as text, not JSON.
        return core_schema.no_info_plain_validator_function(
            cls.parse, serialization=core_schema.plain_serializer_function_ser_schema(str)
        )

    @classmethod
    def parse(cls, value: Any) -> Period:
        if isinstance(value, Period):
            return value
        if isinstance(value, dict):
            return cls(months=int(value.get("months", 0)), days=int(value.get("days", 0)))
        if not isinstance(value, str):
            raise ValueError("expected a period such as 'monthly', '3 months', '90 days' or '7 years'")
        text = _NAMED.get(value.strip().lower(), value)
        m = _PERIOD.match(text)
        if not m:
            raise ValueError(
                f"{value!r} is not a period: use daily/weekly/monthly/quarterly/yearly or '<n> days|weeks|months|"
                "quarters|years'"
            )
        n, unit = int(m.group(1)), m.group(2).lower()
        if n <= 0:
            raise ValueError("a period must be at least 1 unit long")
        factor = {"day": (0, 1), "week": (0, 7), "month": (1, 0), "quarter": (3, 0), "year": (12, 0)}[unit]
        return cls(months=n * factor[0], days=n * factor[1])

    def __str__(self) -> str:
        if self.months:
            if self.months % 12 == 0:
                return f"{self.months // 12} year{'s' if self.months != 12 else ''}"
            return f"{self.months} month{'s' if self.months != 1 else ''}"
        return f"{self.days} day{'s' if self.days != 1 else ''}"

    def approx_days(self) -> float:
        return self.months * 30.436875 + self.days


#: Between URLs of a comma-separated list: a comma followed by a scheme. The commas of a libpq multi-host URL
#: (``postgresql://u@h1:5432,h2:5432/db``) are followed by a host, so such a URL stays whole.
URL_SEPARATOR: Final = re.compile(r",\s*(?=[A-Za-z][A-Za-z0-9+.-]*://)")


def split_list(value: Any, what: str, separator: re.Pattern[str] | None = None) -> list[Any] | tuple[Any, ...]:
    """A list setting from the environment: comma-separated text (``separator`` splits it when given) or a JSON
    list (a list given in code passes).

    >>> split_list("postgresql://a@h1:1,h2:2/db, postgresql://b@h3/db", "URLs", URL_SEPARATOR)
    ['postgresql://a@h1:1,h2:2/db', 'postgresql://b@h3/db']
    """
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not a valid JSON list of {what}") from exc
        else:
            parts = separator.split(text) if separator is not None else text.split(",")
            value = [part.strip() for part in parts if part.strip()]
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"expected {what}, comma-separated or as a JSON list")
    return value


def _period_field(default: str, description: str) -> Any:
    return Field(default=Period.parse(default), description=description)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class PoolSettings(_Section):
    """Connection pools (psycopg_pool), per server."""

    min_size: int = Field(default=1, ge=0, le=1000)
    max_size: int = Field(default=10, ge=1, le=1000)
    replica_max_size: int = Field(default=10, ge=1, le=1000)
    timeout_seconds: float = Field(default=10.0, gt=0, le=600, description="wait for a free connection")
    connect_timeout_seconds: int = Field(default=5, ge=1, le=120)
    statement_timeout_ms: int = Field(default=30_000, ge=0, le=86_400_000, description="0 disables it")
    max_idle_seconds: float = Field(default=600.0, gt=0)
    reconnect_timeout_seconds: float = Field(
        default=10.0, gt=0, le=3600,
        description="how long a pool keeps retrying (with backoff) to replace a lost connection before it gives up "
        "and starts afresh on the next request: short, so a server that comes back is used again within seconds",
    )

    @model_validator(mode="after")
    def _sizes(self) -> PoolSettings:
        if self.min_size > self.max_size:
            raise ValueError(f"min_size ({self.min_size}) must not exceed max_size ({self.max_size})")
        return self


def _default_history_start() -> dt.date:
    return dt.date(dt.datetime.now(dt.UTC).year - 7, 1, 1)


class PartitionSettings(_Section):
    """Time partitioning of ``audit_log`` (bounds and names in UTC)."""

    interval: Period = _period_field("monthly", "monthly (default), quarterly, yearly, weekly, daily, '<n> months'…")
    premake: int = Field(default=3, ge=0, le=120, description="future partitions kept ready ahead of now")
    active_window: Period = _period_field("90 days", "partitions older than this become eligible for archival")
    history_start: dt.date = Field(
        default_factory=_default_history_start,
        description="the first period offered for backfill by the Dagster code location (aligned down to the "
        "interval); default: January 1st seven years ago, so a seven-year retention's history can be backfilled",
    )

    @field_validator("interval")
    @classmethod
    def _interval_shape(cls, value: Period) -> Period:
        if value.months and 12 % value.months and value.months % 12:
            raise ValueError("a month-based interval must divide a year (1, 2, 3, 4, 6 months) or be whole years")
        return value


class ReplicaSettings(_Section):
    """Health bounds for read replicas: one further behind the primary than either bound is reported unhealthy
    (``AUDIT_REPLICAS__MAX_LAG_SECONDS``, ``AUDIT_REPLICAS__MAX_LAG_BYTES``)."""

    max_lag_seconds: float = Field(default=30.0, gt=0, le=86_400, description="replay lag bound, in seconds")
    max_lag_bytes: int = Field(default=64 * 1024 * 1024, ge=0, description="replay lag bound, in bytes of WAL")
    bounded_lag_seconds: float = Field(
        default=5.0, gt=0, le=86_400,
        description="consistency='bounded' reads go to a replica whose measured replay lag is under this",
    )
    monitor_interval_seconds: float = Field(
        default=1.0, gt=0, le=300, description="how often the background monitor measures each replica's lag"
    )
    acquire_timeout_seconds: float = Field(
        default=1.0, gt=0, le=60,
        description="longest wait for a replica connection before the read fails over to the primary",
    )
    analytics_replica: int | None = Field(
        default=None, ge=0,
        description="index in AUDIT_REPLICA_URLS of a replica kept for analytics reads (reports): out of the normal "
        "rotation, used by query(..., analytics=True)",
    )


class ArchiveSettings(_Section):
    """Where and how partitions past the active window are exported (Parquet, zstd) before they may be purged."""

    root_uri: str | None = Field(
        default=None, description="file:///var/lib/audit-archive, s3://bucket/prefix, … (unset: archival disabled)"
    )
    mode: Literal["read_only", "detach"] = Field(
        default="read_only", description="after a verified archive: keep the partition read-only, or detach it"
    )
    rows_per_file: int = Field(default=1_000_000, ge=1_000, le=100_000_000)
    batch_rows: int = Field(default=50_000, ge=100, le=1_000_000, description="rows per fetch and row group")

    @field_validator("root_uri", mode="before")
    @classmethod
    def _root(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip() or None
        if isinstance(value, str) and not (value.startswith("/") or re.match(r"^[a-z][a-z0-9+.-]*://", value)):
            raise ValueError("must be an absolute path or a URI such as file:///path or s3://bucket/prefix")
        if isinstance(value, str) and "://" in value:
            from urllib.parse import urlsplit

            try:
                urlsplit(value).port  # its message would quote the URI, which may carry credentials
            except ValueError:
                raise ValueError("does not parse as a URI (a broken [IPv6] host or a port that is not a number); "
                                 "percent-encode '@', '/' and ':' in credentials") from None
        return value


class MaintenanceSettings(_Section):
    """Index and statistics maintenance (``PartitionManager.optimize``)."""

    analyze_change_ratio: float = Field(
        default=0.1, gt=0, le=1, description="ANALYZE a partition when this share of its rows changed since"
    )
    reindex_min_bytes: int = Field(default=8 * 1024 * 1024, ge=0, description="smaller indexes are never rebuilt")
    reindex_max_leaf_density: float = Field(
        default=50.0, gt=0, le=100, description="rebuild B-tree indexes whose leaf density (pgstattuple) is below"
    )


class RetentionSettings(_Section):
    """How long audit rows are kept. HIPAA asks for six years of documentation; seven is the default."""

    default: Period = _period_field("7 years", "retention when no policy matches")
    policies: Annotated[dict[str, Period], NoDecode] = Field(
        default_factory=dict,
        description="per data classification (PHI, CONFIDENTIAL, …) or retention_policy name: a period",
    )
    archive_retention: Period = _period_field("7 years", "how long archives are kept after the partition is purged")

    @field_validator("policies", mode="before")
    @classmethod
    def _policies(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError('expected a JSON object such as {"PHI": "7 years"}') from exc
        if not isinstance(value, dict):
            raise ValueError('expected a mapping such as {"PHI": "7 years"}')
        out = {}
        for name, period in value.items():
            if not isinstance(name, str) or not name.strip():
                raise ValueError("policy names must be non-empty strings")
            try:
                out[name] = Period.parse(period)
            except ValueError as exc:
                raise ValueError(f"policy {name!r}: {exc}") from None
        return out

    def for_policy(self, name: str | None) -> Period:
        return self.policies.get(name or "", self.default)


class CacheSettings(_Section):
    """The query cache: L1 in process (LRU, TTL, byte bound), L2 in Redis (``AUDIT_REDIS_URL``; off when unset).

    L2 needs ``key`` (``AUDIT_CACHE__KEY``): every value in Redis is encrypted and authenticated with it
    (AES-256-GCM), invalidation counters, messages and breaker states are authenticated (HMAC-SHA256 with keys
    derived from it). 32 random bytes as base64 or 64 hex digits (``python -c "import secrets;
    print(secrets.token_hex(32))"``), the same in every process sharing the cache. Without it L2 stays off.
    See docs/guides/security.md.
    """

    enabled: bool = True
    key_prefix: str = Field(default="audit-db", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    l1_max_entries: int = Field(default=10_000, ge=0)
    l1_max_bytes: int = Field(default=64 * 1024 * 1024, ge=0)
    ttl_seconds: float = Field(default=60.0, gt=0, description="results whose window is still open")
    closed_window_ttl_seconds: float = Field(default=3600.0, gt=0, description="results over a closed past window")
    redis_timeout_seconds: float = Field(default=0.25, gt=0, le=30)
    redis_max_connections: int = Field(
        default=50, ge=1, le=10_000,
        description="connections to Redis per process; more concurrent callers wait up to redis_timeout_seconds",
    )
    key: SecretStr | None = Field(
        default=None, description="AES-256-GCM key of the L2 values: 32 bytes, base64 or 64 hex digits; unset = L2 off"
    )
    max_value_bytes: int = Field(
        default=16 * 1024 * 1024, ge=4096, le=1024 * 1024 * 1024,
        description="largest L2 value accepted, decompressed (a larger one is refused: a miss)",
    )

    @field_validator("key", mode="before")
    @classmethod
    def _key(cls, value: Any) -> Any:
        raw = value.get_secret_value() if isinstance(value, SecretStr) else value
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            return None
        if not isinstance(raw, str) or cache_key_bytes(raw) is None:
            raise ValueError("must be 32 bytes given as base64 (44 characters) or as 64 hex digits "
                             "(e.g. python -c \"import secrets; print(secrets.token_hex(32))\")")
        return raw.strip()

    @property
    def key_bytes(self) -> bytes | None:
        """The 32 bytes of ``key`` (``None`` when unset)."""
        return cache_key_bytes(self.key.get_secret_value()) if self.key is not None else None


def cache_key_bytes(text: str) -> bytes | None:
    """The 32 bytes of a cache key given as 64 hex digits or as base64 (standard or URL-safe), else ``None``."""
    import base64
    import binascii

    text = text.strip()
    if len(text) == 64:
        try:
            return bytes.fromhex(text)
        except ValueError:
            pass
    try:
        standard = text.replace("-", "+").replace("_", "/")  # URL-safe base64 too
        decoded = base64.b64decode(standard + "=" * (-len(standard) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None
    return decoded if len(decoded) == 32 else None


class BreakerSettings(_Section):
    """One circuit breaker: ``failure_threshold`` failures within ``window_seconds`` open it for
    ``reset_timeout_seconds``; then ``half_open_max_calls`` trial calls decide whether it closes (a trial that
    never reports back frees its permit after ``trial_timeout_seconds``)."""

    failure_threshold: int = Field(default=5, ge=1, le=10_000)
    window_seconds: float = Field(default=30.0, gt=0)
    reset_timeout_seconds: float = Field(default=30.0, gt=0, description="how long the breaker stays open")
    half_open_max_calls: int = Field(default=1, ge=1, le=1000)
    trial_timeout_seconds: float | None = Field(
        default=None, gt=0,
        description="a half-open trial call that reports neither success nor failure within this long (its caller "
        "crashed or hangs) is written off and its permit given to the next caller; unset: reset_timeout_seconds",
    )


class ReplicaBreakerSettings(BreakerSettings):
    failure_threshold: int = Field(default=3, ge=1, le=10_000)
    window_seconds: float = Field(default=15.0, gt=0)
    reset_timeout_seconds: float = Field(default=15.0, gt=0)


class RedisBreakerSettings(BreakerSettings):
    failure_threshold: int = Field(default=10, ge=1, le=10_000)
    window_seconds: float = Field(default=60.0, gt=0)
    reset_timeout_seconds: float = Field(default=5.0, gt=0)


class PartitionBreakerSettings(BreakerSettings):
    failure_threshold: int = Field(default=2, ge=1, le=10_000)
    window_seconds: float = Field(default=10.0, gt=0)
    reset_timeout_seconds: float = Field(default=60.0, gt=0)


class BreakersSettings(_Section):
    """The seed's thresholds: primary 5/30s→30s, replica 3/15s→15s, Redis 10/60s→5s, partitions 2/10s→60s."""

    primary: BreakerSettings = BreakerSettings()
    replica: ReplicaBreakerSettings = ReplicaBreakerSettings()
    redis: RedisBreakerSettings = RedisBreakerSettings()
    partitions: PartitionBreakerSettings = PartitionBreakerSettings()


class RetrySettings(_Section):
    """Retries of retryable failures (connection errors, timeouts): exponential backoff with full jitter."""

    max_attempts: int = Field(default=3, ge=1, le=20, description="calls in all, the first included")
    base_delay_seconds: float = Field(default=0.05, ge=0, le=60)
    max_delay_seconds: float = Field(default=2.0, ge=0, le=600)


class IngestSettings(_Section):
    batch_size: int = Field(default=5000, ge=1, le=1_000_000, description="events per COPY batch (one transaction)")
    synchronous_commit: Literal["local", "remote_write", "on", "remote_apply"] | None = Field(
        default=None,
        description="PostgreSQL's synchronous_commit for the library's sessions (AUDIT_INGEST__SYNCHRONOUS_COMMIT); "
        "unset = the server's own setting. With synchronous_standby_names set on the primary (or Patroni's "
        "synchronous_mode), 'on' or 'remote_apply' acknowledge a write only once a standby has it: an acknowledged "
        "write survives the loss of the primary, at the cost of a wait for the standby per commit (see "
        "docs/guides/reads-and-failures.md, Zero acknowledged loss); a write whose wait for the standby was "
        "cancelled raises UnconfirmedCommitError. 'off' is refused: it may lose acknowledged writes in a crash",
    )


class TelemetrySettings(_Section):
    """OpenTelemetry metrics and spans of the library (audit_db_core.telemetry)."""

    enabled: bool = Field(
        default=True,
        description="false: this database records no metric and starts no span, even with an SDK configured, and "
        "is not observed (the baseline of benchmarks/telemetry_overhead.py)",
    )
    inspect_interval_seconds: float = Field(
        default=60.0, ge=1, le=86_400,
        description="how often, at most, the health and partition figures of the observable instruments are "
        "refreshed (in the background, and only while a metric reader collects)",
    )


class QuerySettings(_Section):
    default_page_size: int = Field(default=100, ge=1, le=10_000)
    max_page_size: int = Field(default=1000, ge=1, le=10_000, description="hard cap: a larger limit is an error")


_DAY_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_WEEKDAYS = {**{d: i for i, d in enumerate(_DAY_NAMES, 1)}, **{d[:3]: i for i, d in enumerate(_DAY_NAMES, 1)}}


class ReportSettings(_Section):
    """HIPAA reports (``db.reports``): how disclosures, break-glass and after-hours events are recognised, and where
    the Dagster ``compliance_summary`` asset writes (``AUDIT_REPORTS__*``).

    An event is a *disclosure* when its action matches one of ``disclosure_actions`` (``*`` matches anything) or its
    ``details`` hold ``{"<disclosure_flag>": true}``; *break-glass* when ``details`` hold
    ``{"<break_glass_flag>": true}``; *after-hours* when its time, in ``timezone``, falls outside
    ``[working_hours_start, working_hours_end)`` on one of ``working_days`` (ISO numbers, Monday = 1).
    """

    directory: str | None = Field(
        default=None, description="where the compliance_summary asset writes its Parquet files (unset: it fails)"
    )
    timezone: str = Field(default="UTC", description="IANA time zone of the working hours, e.g. America/New_York")
    working_hours_start: dt.time = Field(default=dt.time(7, 0), description="local time, inclusive")
    working_hours_end: dt.time = Field(default=dt.time(19, 0), description="local time, exclusive")
    working_days: Annotated[tuple[int, ...], NoDecode] = Field(
        default=(1, 2, 3, 4, 5), description="ISO weekdays (Monday = 1) or names: '1,2,3,4,5' or 'mon,tue,wed,thu,fri'"
    )
    disclosure_actions: Annotated[tuple[str, ...], NoDecode] = Field(
        default=("*.disclose",), description="action patterns of disclosures, comma-separated; '*' matches anything"
    )
    disclosure_flag: str = Field(default="disclosure", min_length=1, max_length=64, description="details key")
    break_glass_flag: str = Field(default="break_glass", min_length=1, max_length=64, description="details key")
    batch_rows: int = Field(default=50_000, ge=100, le=1_000_000, description="rows per fetch of a report's cursor")
    statement_timeout_ms: int = Field(
        default=300_000, ge=0, le=86_400_000, description="per report query (reports read whole months); 0 disables it"
    )
    work_mem_mb: int = Field(
        default=64, ge=1, le=16_384,
        description="work_mem of report queries: room for the summary's hash aggregates and the reports' sorts",
    )

    @field_validator("directory", mode="before")
    @classmethod
    def _directory(cls, value: Any) -> Any:
        return (value.strip() or None) if isinstance(value, str) else value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        import zoneinfo

        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError("is not a known IANA time zone (e.g. UTC, Europe/Paris, America/New_York)") from None
        return value

    @field_validator("working_hours_start", "working_hours_end")
    @classmethod
    def _local_time(cls, value: dt.time, info: pydantic.ValidationInfo) -> dt.time:
        if value.tzinfo is not None:
            raise ValueError("must be a local time without an offset (the zone is AUDIT_REPORTS__TIMEZONE)")
        start = info.data.get("working_hours_start")
        if info.field_name == "working_hours_end" and start is not None and value <= start:
            raise ValueError("must be later than working_hours_start (the window is [start, end) in one day)")
        return value

    @field_validator("working_days", mode="before")
    @classmethod
    def _days(cls, value: Any) -> Any:
        items = [p.strip() for p in value.split(",") if p.strip()] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple, set, frozenset)) or not items:
            raise ValueError("expected weekdays such as '1,2,3,4,5' or 'mon,tue,wed,thu,fri'")
        days = set()
        for item in items:
            text = str(item).strip().lower()
            day = int(text) if text.isdigit() else _WEEKDAYS.get(text)
            if day is None or not 1 <= day <= 7:
                raise ValueError("each weekday must be 1 (Monday) to 7 (Sunday) or a day name such as 'mon'")
            days.add(day)
        return tuple(sorted(days))

    @field_validator("disclosure_actions", mode="before")
    @classmethod
    def _patterns(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [p.strip() for p in value.split(",") if p.strip()]
        if isinstance(value, (list, tuple)) and any(not isinstance(p, str) or not 1 <= len(p) <= 128 for p in value):
            raise ValueError("each pattern must be a string of 1 to 128 characters")
        return tuple(value) if isinstance(value, (list, tuple)) else value



class IntegritySettings(_Section):
    """Tamper-evident digests (``db.integrity``, ``AUDIT_INTEGRITY__*``): the signing key, the keys trusted to
    verify, the window length and when a window is sealed. See docs/guides/integrity.md.

    ``signing_key`` (Ed25519, base64 of the 32-byte private key or a PKCS#8 PEM; ``audit-platform integrity keygen``
    makes one) is needed only where digests are sealed. Verification needs only public keys: the signing key's own,
    plus ``public_keys`` (base64, comma-separated or a JSON list) — older keys after a rotation, or the only keys on
    an auditor's machine.
    """

    signing_key: SecretStr | None = Field(default=None, description="Ed25519 private key that signs new digests")
    public_keys: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(), description="Ed25519 public keys (base64) trusted to verify digests, besides the signing key's"
    )
    window: Period = _period_field("1 day", "event_time window of one digest: whole days, aligned in UTC")
    seal_delay_seconds: float = Field(
        default=300.0, ge=0, le=7 * 86_400, description="a window is sealed once it ended this long ago"
    )
    cutoff_grace_seconds: float = Field(
        default=1.0, ge=0, le=3600,
        description="a seal covers events ingested at least this long before it started (clock safety margin)",
    )
    start: dt.date | None = Field(default=None, description="no window before this UTC date is sealed (unset: all)")
    verify_lookback: Period = _period_field(
        "35 days", "the scheduled verification re-reads the rows of the windows of this last period"
    )

    @field_validator("signing_key", mode="before")
    @classmethod
    def _signing_key(cls, value: Any) -> Any:
        raw = value.get_secret_value() if isinstance(value, SecretStr) else value
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            return None
        if not isinstance(raw, str) or not (_is_b64_key(raw) or raw.strip().startswith("-----BEGIN PRIVATE KEY-----")):
            raise ValueError("must be a base64-encoded 32-byte Ed25519 private key or a PKCS#8 PEM "
                             "(audit-platform integrity keygen makes one)")
        return raw.strip()

    @field_validator("public_keys", mode="before")
    @classmethod
    def _public_keys(cls, value: Any) -> Any:
        value = split_list(value, "base64 public keys")
        for i, key in enumerate(value):
            if not isinstance(key, str) or not _is_b64_key(key):
                raise ValueError(f"key {i + 1} is not a base64-encoded 32-byte Ed25519 public key")
        return tuple(k.strip() for k in value)

    @field_validator("window")
    @classmethod
    def _window_days(cls, value: Period) -> Period:
        if value.months:
            raise ValueError("must be a whole number of days (e.g. '1 day'), so that windows nest in partitions")
        return value


_DETAIL_KEY = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
#: Event fields whose values may be pseudonymized, besides ``details.<key>`` (a top-level key of ``details``).
PSEUDONYMIZABLE_FIELDS = ("principal_id", "target_resource_id")


class PrivacySettings(_Section):
    """GDPR (``db.privacy``, ``AUDIT_PRIVACY__*``): which identifiers are stored as pseudonyms from ingestion on,
    and the key of the mapping's lookup index. See docs/guides/privacy.md.

    ``pseudonymize`` lists fields: ``principal_id``, ``target_resource_id`` and ``details.<key>`` (a top-level key
    of ``details``), comma-separated or a JSON list; empty (the default) turns pseudonymization off. ``lookup_key``
    (at least 32 characters; ``python -c "import secrets; print(secrets.token_urlsafe(32))"``) is required as soon
    as one field is listed, and must be the same for every writer and reader of one database.
    """

    pseudonymize: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(), description="fields stored as pseudonyms: principal_id, target_resource_id, details.<key>"
    )
    lookup_key: SecretStr | None = Field(
        default=None, description="HMAC key of the mapping's lookup index (required when pseudonymize is set)"
    )

    @field_validator("pseudonymize", mode="before")
    @classmethod
    def _fields(cls, value: Any) -> Any:
        value = split_list(value, "field names")
        out: list[str] = []
        for name in value:
            if not isinstance(name, str):
                raise ValueError("each field name must be a string")
            name = name.strip()
            detail = name.startswith("details.") and _DETAIL_KEY.match(name[len("details."):])
            if name not in PSEUDONYMIZABLE_FIELDS and not detail:
                raise ValueError(f"{name!r} cannot be pseudonymized: use principal_id, target_resource_id or "
                                 "details.<key> (a top-level key of details: letters, digits, _ and -)")
            if name not in out:
                out.append(name)
        return tuple(out)

    @field_validator("lookup_key", mode="before")
    @classmethod
    def _lookup_key(cls, value: Any, info: pydantic.ValidationInfo) -> Any:
        raw = value.get_secret_value() if isinstance(value, SecretStr) else value
        if isinstance(raw, str) and not raw.strip():
            raw = None
        if raw is None:
            if info.data.get("pseudonymize"):
                raise ValueError("is required when AUDIT_PRIVACY__PSEUDONYMIZE lists fields (at least 32 characters, "
                                 "e.g. from secrets.token_urlsafe(32))")
            return None
        if not isinstance(raw, str) or len(raw.strip()) < 32:
            raise ValueError("must be at least 32 characters (e.g. from secrets.token_urlsafe(32))")
        return raw.strip()

    @property
    def enabled(self) -> bool:
        return bool(self.pseudonymize)


def _is_b64_key(text: str) -> bool:
    import base64
    import binascii

    try:
        return len(base64.b64decode(text.strip(), validate=True)) == 32
    except (binascii.Error, ValueError):
        return False


_PG_SCHEMES = ("postgresql://", "postgres://")
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://", SENTINEL_SCHEME)


class AuditSettings(BaseSettings):
    """Every setting of the library, with its default, in one tree."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        case_sensitive=False,
        extra="ignore",
        frozen=True,
        validate_default=True,
    )

    database_url: SecretStr = Field(description="primary PostgreSQL, postgresql://user:password@host:port/db")
    replica_urls: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="read replicas, comma-separated or a JSON list (libpq multi-host URLs too)"
    )
    redis_url: SecretStr | None = Field(
        default=None, description="Redis for the L2 query cache (or redis+sentinel:// Sentinels); unset = L1 only"
    )
    application_name: str = Field(default="audit-db-core", min_length=1, max_length=63)

    pool: PoolSettings = PoolSettings()
    partitions: PartitionSettings = PartitionSettings()
    replicas: ReplicaSettings = ReplicaSettings()
    retention: RetentionSettings = RetentionSettings()
    archive: ArchiveSettings = ArchiveSettings()
    maintenance: MaintenanceSettings = MaintenanceSettings()
    cache: CacheSettings = CacheSettings()
    breakers: BreakersSettings = BreakersSettings()
    retry: RetrySettings = RetrySettings()
    ingest: IngestSettings = IngestSettings()
    query: QuerySettings = QuerySettings()
    telemetry: TelemetrySettings = TelemetrySettings()
    integrity: IntegritySettings = IntegritySettings()
    reports: ReportSettings = ReportSettings()
    privacy: PrivacySettings = PrivacySettings()

    _subject: ClassVar[str] = "settings"

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except pydantic.ValidationError as exc:
            raise ConfigurationError.from_pydantic(self._subject, exc, env_prefix=ENV_PREFIX) from None
        except SettingsError as exc:
            # Raised when an env value for a nested section is not valid JSON; name the variable, not the source.
            m = re.search(r'field "([^"]+)"', str(exc))
            name = ENV_PREFIX + (m.group(1).upper() if m else "")
            raise ConfigurationError(self._subject, [(name, "could not be parsed (expected JSON or a plain value)")]) from None

    @field_validator("database_url")
    @classmethod
    def _pg_url(cls, value: SecretStr) -> SecretStr:
        _check_url(value.get_secret_value(), _PG_SCHEMES)
        return value

    @field_validator("replica_urls", mode="before")
    @classmethod
    def _split_replicas(cls, value: Any) -> Any:
        return split_list(value, "URLs", URL_SEPARATOR)

    @field_validator("replica_urls")
    @classmethod
    def _replica_urls(cls, value: list[SecretStr]) -> list[SecretStr]:
        for i, url in enumerate(value):
            try:
                _check_url(url.get_secret_value(), _PG_SCHEMES)
            except ValueError as exc:
                raise ValueError(f"URL {i + 1} of {len(value)}: {exc}" if len(value) > 1 else str(exc)) from None
        return value

    @field_validator("redis_url", mode="before")
    @classmethod
    def _empty_redis(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            _check_url(value.get_secret_value(), _REDIS_SCHEMES)
        return value

    @field_validator("replicas")
    @classmethod
    def _analytics_replica(cls, value: ReplicaSettings, info: pydantic.ValidationInfo) -> ReplicaSettings:
        index = value.analytics_replica
        urls = info.data.get("replica_urls") or []
        if index is not None and index >= len(urls):
            raise ValueError(
                f"__ANALYTICS_REPLICA is {index} but only {len(urls)} replica URL(s) are set in AUDIT_REPLICA_URLS "
                "(it is a 0-based index into that list)"
            )
        return value

    @property
    def display_database_url(self) -> str:
        """The primary URL with its password masked, for logs and UIs."""
        return redact(self.database_url.get_secret_value())

    @property
    def display_replica_urls(self) -> list[str]:
        return [redact(u.get_secret_value()) for u in self.replica_urls]

    @property
    def display_redis_url(self) -> str | None:
        return redact(self.redis_url.get_secret_value()) if self.redis_url else None

    def with_overrides(self, **changes: Any) -> AuditSettings:
        """A copy with some values replaced and validated again (settings are frozen).

        Sections merge: ``with_overrides(pool={"max_size": 5})`` keeps the other pool values. Every value is
        passed explicitly, so the environment cannot mix into the copy.
        """
        data = self.model_dump()
        for key in ("database_url", "redis_url"):
            if isinstance(data.get(key), SecretStr):
                data[key] = data[key].get_secret_value()
        data["replica_urls"] = [u.get_secret_value() for u in self.replica_urls]
        return type(self)(**_merge(data, changes))


class _PartitionsFromEnv(BaseSettings):
    """Only the ``AUDIT_PARTITIONS__*`` section: what code that needs no database (the Dagster partitions
    definition, loaded before any URL is known) reads from the environment."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", case_sensitive=False, extra="ignore", frozen=True
    )

    partitions: PartitionSettings = PartitionSettings()


def partition_settings_from_env() -> PartitionSettings:
    """The partition settings from ``AUDIT_PARTITIONS__*`` alone, without requiring ``AUDIT_DATABASE_URL``.

    The same values :class:`AuditSettings` reads; an invalid one raises :class:`ConfigurationError` naming the
    variable.

    Example::

        partition_settings_from_env().interval      # Period(months=1, days=0) unless AUDIT_PARTITIONS__INTERVAL
    """
    try:
        return _PartitionsFromEnv().partitions
    except pydantic.ValidationError as exc:
        raise ConfigurationError.from_pydantic("settings", exc, env_prefix=ENV_PREFIX) from None
    except SettingsError as exc:
        m = re.search(r'field "([^"]+)"', str(exc))
        name = ENV_PREFIX + (m.group(1).upper() if m else "PARTITIONS")
        raise ConfigurationError("settings", [(name, "could not be parsed (expected JSON or a plain value)")]) from None


ConsistencyLevel = Literal["strong", "bounded", "eventual"]


def _merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _check_url(url: str, schemes: tuple[str, ...]) -> None:
    """Refuse a URL that is empty, has another scheme, or does not parse, with a reason that never quotes any
    part of it (the part a parser would quote back is often the password)."""
    if not url.strip():
        raise ValueError("must not be empty")
    if not url.startswith(schemes):
        raise ValueError(f"must start with {' or '.join(schemes)}")
    if any(c.isspace() for c in url):
        raise ValueError("contains a space or a line break: percent-encode it (a space is %20)")
    if _BAD_PERCENT.search(url):
        raise ValueError("contains a '%' that does not start a %XX escape: percent-encode a literal '%' as %25 "
                         "(in a password too)")
    if url.startswith(_PG_SCHEMES):
        _check_pg_url(url)
    else:
        _check_redis_url(url)


_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_ENCODE_HINT = "percent-encode '@', '/', ':', '?' and '#' in the user name and password (%40, %2F, %3A, %3F, %23)"
#: libpq's complaints about a URL it cannot parse, as reasons that do not quote the URL back.
_LIBPQ_REASONS = (
    ("matching \"]\"", "has an IPv6 host address whose '[' is not closed by ']' (write postgresql://user@[::1]:5432/db)"),
    ("may not be empty", "has an empty IPv6 host address '[]'"),
    ("unexpected character", f"has an unexpected character after the host (expected ':' or '/'); {_ENCODE_HINT}"),
    ("extra key/value separator", "has an '=' inside a query parameter's value: percent-encode it as %3D"),
    ("missing key/value separator", "has a query parameter without '=' and a value"),
    ("invalid URI query parameter", "has a query parameter libpq does not know (see the libpq connection parameters)"),
    ("%00", "contains %00, which is not allowed"),
    ("percent-encoded", "contains a '%' that does not start a %XX escape: percent-encode a literal '%' as %25"),
    ("spaces", "contains a space: percent-encode it as %20"),
)


def _check_port(port: str) -> None:
    for part in port.split(","):
        if part and not (part.isdigit() and 1 <= int(part) <= 65535):
            raise ValueError(f"has a port that is not a number from 1 to 65535; {_ENCODE_HINT}")


def _check_pg_url(url: str) -> None:
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(url)  # libpq's own parser: what it refuses here, it would refuse at connect
    except Exception as exc:  # its message quotes the URL or the token it choked on: never pass it on
        text = str(exc)
        reason = next((r for key, r in _LIBPQ_REASONS if key in text), "is not a valid PostgreSQL URL")
        raise ValueError(reason) from None
    host = str(params.get("host") or params.get("hostaddr") or "")
    if not all(h.strip() for h in host.split(",")):
        # libpq would silently fall back to a local Unix socket (or PGHOST): name the server explicitly.
        raise ValueError("names no host (libpq would fall back to a local Unix socket): write "
                         "postgresql://user@host:5432/dbname, or for a Unix socket its directory, "
                         "postgresql://user@%2Fvar%2Frun%2Fpostgresql/dbname")
    if "@" in host or "@" in str(params.get("dbname") or ""):
        raise ValueError(f"has an '@' after the user information, which would make part of the password the host "
                         f"or the database name; {_ENCODE_HINT}")
    _check_port(str(params.get("port") or ""))


def _check_redis_url(url: str) -> None:
    from urllib.parse import urlsplit

    if url.startswith(SENTINEL_SCHEME):
        SentinelURL.parse(url)
        return
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a port that is not a number (its message quotes it: not passed on)
        host = parts.hostname
    except ValueError:
        raise ValueError(f"does not parse as a URL (a broken [IPv6] host or a bad port); {_ENCODE_HINT}") from None
    if parts.scheme == "unix":
        if not parts.path or parts.path == "/":
            raise ValueError("names no socket: write unix:///path/to/redis.sock")
        return _redis_parse(url)
    if not host:
        raise ValueError("names no host: write redis://host:6379/0 (or rediss:// for TLS; unix:///path for a socket)")
    if port == 0:
        raise ValueError(f"has a port that is not a number from 1 to 65535; {_ENCODE_HINT}")
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise ValueError(f"has a path that is not a database number (such as /0); {_ENCODE_HINT}")
    _redis_parse(url)


def _redis_parse(url: str) -> None:
    """redis-py's own parser (query options such as ``?socket_timeout=``); its message is not passed on."""
    from redis.connection import parse_url

    try:
        parse_url(url)
    except ValueError:
        raise ValueError("has a query option redis-py refuses (e.g. ?db= or ?socket_timeout= not a number)") from None
