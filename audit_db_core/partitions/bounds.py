"""Periods of ``audit_log`` partitions: the tables' names, each period's bounds and name, the period keys callers
use, and the UTC rules all of them follow.

Bounds follow the configured interval and are computed in UTC: monthly ``audit_log_p2026_11`` covers
``[2026-11-01, 2026-12-01)``; quarterly ``audit_log_p2026_q4``; yearly ``audit_log_p2026``; other month counts are
named after their first month; day-based intervals (daily, weekly, "<n> days") after their first day,
``audit_log_p2026_11_30``, aligned on Monday 1970-01-05 so that weeks start on Mondays.

Example::

    monthly = Period.parse("monthly")
    b = bounds_for(dt.datetime(2026, 11, 23, 15, 0, tzinfo=dt.UTC), monthly)
    b.name, b.start, b.end                          # 'audit_log_p2026_11', 2026-11-01 00:00Z, 2026-12-01 00:00Z
    following(b, monthly).name                      # 'audit_log_p2026_12'
    resolve_period("2026-11", monthly) == b         # True
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

from audit_db_core.config import Period
from audit_db_core.errors import PartitionError

PARENT_TABLE = "audit_log"
DEFAULT_PARTITION = "audit_log_default"
_DAY_ANCHOR = dt.datetime(1970, 1, 5, tzinfo=dt.UTC)  # a Monday


@dataclass(frozen=True)
class PartitionBounds:
    name: str
    start: dt.datetime
    end: dt.datetime

    def contains(self, ts: dt.datetime) -> bool:
        return self.start <= ts < self.end


def _utc(ts: dt.datetime) -> dt.datetime:
    if ts.tzinfo is None or ts.utcoffset() is None:
        raise PartitionError("partition times must be timezone-aware", operation="partition_bounds")
    return ts.astimezone(dt.UTC)


def _not_future(now: dt.datetime | None, operation: str) -> dt.datetime:
    """``now`` for an operation that changes data: it may be earlier than the clock, never later (a future
    ``now`` would let retention or the active window pass early). Dry runs and plans may look ahead."""
    real = dt.datetime.now(dt.UTC)
    if now is None:
        return real
    now = _utc(now)
    if now > real + dt.timedelta(minutes=5):
        raise PartitionError(f"now={now:%Y-%m-%d %H:%M} UTC is in the future; {operation} only looks ahead as a "
                             "dry run", operation=operation)
    return now


def _month_start(index: int) -> dt.datetime:
    return dt.datetime(index // 12, index % 12 + 1, 1, tzinfo=dt.UTC)


def bounds_for(ts: dt.datetime, interval: Period) -> PartitionBounds:
    """The partition of ``interval`` that holds ``ts`` (UTC)."""
    ts = _utc(ts)
    if interval.months:
        index = ts.year * 12 + ts.month - 1
        first = index - index % interval.months
        start, end = _month_start(first), _month_start(first + interval.months)
        if interval.months % 12 == 0:
            name = f"{PARENT_TABLE}_p{start.year:04d}"
        elif interval.months == 3:
            name = f"{PARENT_TABLE}_p{start.year:04d}_q{(start.month - 1) // 3 + 1}"
        else:
            name = f"{PARENT_TABLE}_p{start.year:04d}_{start.month:02d}"
    else:
        step = dt.timedelta(days=interval.days)
        start = _DAY_ANCHOR + ((ts - _DAY_ANCHOR) // step) * step
        end = start + step
        name = f"{PARENT_TABLE}_p{start.year:04d}_{start.month:02d}_{start.day:02d}"
    return PartitionBounds(name, start, end)


def following(bounds: PartitionBounds, interval: Period, n: int = 1) -> PartitionBounds:
    """The bounds ``n`` periods after ``bounds``."""
    out = bounds
    for _ in range(n):
        out = bounds_for(out.end, interval)
    return out


_KEY = re.compile(
    r"^(?:audit_log_p)?(?P<y>\d{4})(?:[-_](?:(?P<q>[qQ][1-4])|(?P<m>\d{2})(?:[-_](?P<d>\d{2}))?))?$"
)


def resolve_period(period: Any, interval: Period) -> PartitionBounds:
    """The partition a caller names: a period start (aware ``datetime``), a ``date``, a key such as ``2026-11``,
    ``2026-Q4``, ``2026`` or ``2026-11-23``, or a partition name. It must be aligned to the interval's start."""
    if isinstance(period, PartitionBounds):
        return period
    if isinstance(period, dt.datetime):
        start = _utc(period)
    elif isinstance(period, dt.date):
        start = dt.datetime(period.year, period.month, period.day, tzinfo=dt.UTC)
    elif isinstance(period, str):
        start = _key_start(period)
    else:
        raise PartitionError(
            f"period must be a datetime, a date or a period key, not {type(period).__name__}",
            operation="resolve_period",
        )
    bounds = bounds_for(start, interval)
    if bounds.start != start:
        raise PartitionError(
            f"period {period!s} is not aligned to the {interval} interval: the period holding it starts at "
            f"{bounds.start:%Y-%m-%d %H:%M} UTC ({bounds.name})",
            operation="resolve_period",
            partition=bounds.name,
        )
    return bounds


def _key_start(period: str) -> dt.datetime:
    """The instant a period key (``2026-11``, ``2026-Q4``, ``2026``, ``2026-11-23``, a partition name) names."""
    m = _KEY.match(period.strip())
    if not m:
        raise PartitionError(
            f"period {period!r} is not a period key: use YYYY-MM, YYYY-Qn, YYYY, YYYY-MM-DD or a partition name",
            operation="resolve_period",
        )
    month = (int(m["q"][1]) - 1) * 3 + 1 if m["q"] else int(m["m"] or 1)
    try:
        return dt.datetime(int(m["y"]), month, int(m["d"] or 1), tzinfo=dt.UTC)
    except ValueError as exc:
        raise PartitionError(f"period {period!r}: {exc}", operation="resolve_period") from None
