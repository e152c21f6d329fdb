"""Retention: how long a partition must be kept, and what a purge may drop.

An event's retention is the period configured for its ``retention_policy`` name, else for its
``data_classification``, else the default (7 years) — shorter or longer than the default. A partition holds many events, so it is kept for the
*longest* retention of the (classification, policy) pairs found in it when it was archived — computed with the
settings in force at purge time, so lengthening a policy protects partitions archived earlier.

Safety rules, enforced by :meth:`PartitionManager.purge`:

- only archived partitions whose archive verifies again (files present, checksums and digest equal) are dropped;
- a partition under legal hold is never dropped, nor its archive deleted;
- no retention period may be shorter than the active window (a purge would cut into it): that is a
  configuration error, and nothing is dropped.

Example::

    report = db.partitions.purge(dry_run=True)
    for d in report.decisions:
        print(d.partition, d.action, d.reason)
"""

from __future__ import annotations

import calendar
import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from audit_db_core.config import Period, RetentionSettings
from audit_db_core.errors import ConfigurationError


def add_period(ts: dt.datetime, period: Period, sign: int = 1) -> dt.datetime:
    """``ts`` moved forward (``sign=-1``: back) by ``period``; calendar months clamp to the month's last day."""
    if period.days:
        return ts + sign * dt.timedelta(days=period.days)
    total = ts.year * 12 + ts.month - 1 + sign * period.months
    year, month = divmod(total, 12)
    day = min(ts.day, calendar.monthrange(year, month + 1)[1])
    return ts.replace(year=year, month=month + 1, day=day)


def retention_for(classes: Iterable[Sequence[str]] | None, settings: RetentionSettings) -> Period:
    """The longest retention over ``(data_classification, retention_policy)`` pairs; each pair takes its policy's
    period, else its classification's, else the default (also used when the partition held nothing)."""
    periods = [
        settings.policies.get(policy) or settings.policies.get(classification) or settings.default
        for classification, policy in classes or ()
    ]
    return max(periods or [settings.default], key=lambda p: p.approx_days())


def check_against_active_window(settings: RetentionSettings, active_window: Period) -> None:
    """Refuse settings under which a purge would drop data still inside the active window."""
    short = [
        (name, period)
        for name, period in [("default", settings.default), *settings.policies.items()]
        if period.approx_days() < active_window.approx_days()
    ]
    if short:
        raise ConfigurationError(
            "settings",
            [
                (
                    "AUDIT_RETENTION__DEFAULT" if name == "default" else "AUDIT_RETENTION__POLICIES",
                    f"retention {period} for {name!r} is shorter than the active window ({active_window}): "
                    "a purge would cut into it",
                )
                for name, period in short
            ],
        )


@dataclass(frozen=True)
class PurgeDecision:
    """What a purge does with one partition (``action``: purge | keep | delete_archive) and why."""

    partition: str
    action: str
    reason: str
    range_start: dt.datetime
    range_end: dt.datetime
    retained_until: dt.datetime | None = None
    rows: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: (v.isoformat() if isinstance(v, dt.datetime) else v) for k, v in asdict(self).items()}


@dataclass
class PurgeReport:
    now: dt.datetime
    dry_run: bool
    decisions: list[PurgeDecision] = field(default_factory=list)
    purged: list[str] = field(default_factory=list)
    archives_deleted: list[str] = field(default_factory=list)

    def of(self, action: str) -> list[PurgeDecision]:
        return [d for d in self.decisions if d.action == action]

    def to_dict(self) -> dict[str, Any]:
        return {
            "now": self.now.isoformat(),
            "dry_run": self.dry_run,
            "decisions": [d.to_dict() for d in self.decisions],
            "purged": self.purged,
            "archives_deleted": self.archives_deleted,
        }
