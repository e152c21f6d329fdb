"""Cache scopes: the slices of time a cached result depends on and a write moves — UTC days, UTC months and ``*``
(everything). See :mod:`audit_db_core.cache` for how generations of scopes invalidate cached results.

Example::

    write_scopes([dt.datetime(2026, 11, 3, 8, tzinfo=dt.UTC)])    # {'*', 'd2026-11-03', 'm2026-11'}
    read_scope(since, until)                                     # ('d2026-11-01', …) for a few weeks
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Iterable

ALL = "*"
#: Queries over more days than this are scoped by month; over more months than ``_MAX_MONTHS``, by ``*``.
_MAX_DAYS = 62
_MAX_MONTHS = 240


def _utc(ts: dt.datetime) -> dt.datetime:
    return ts.astimezone(dt.UTC)


def _day(day: dt.date) -> str:
    return "d" + day.isoformat()


def _month(day: dt.date) -> str:
    return "m" + day.isoformat()[:7]


def write_scopes(event_times: Iterable[dt.datetime]) -> set[str]:
    """The scopes a write of events at these times moves: each event's UTC day and month, and ``*``."""
    days = {(ts if ts.tzinfo is dt.UTC else _utc(ts)).date() for ts in event_times}
    out = {ALL}
    for day in days:
        out.add(_day(day))
        out.add(_month(day))
    return out


def range_scopes(start: dt.datetime, end: dt.datetime) -> set[str]:
    """Every scope a change to ``[start, end)`` moves (lifecycle: purge, detach): days, months and ``*``."""
    out = {ALL}
    day = _utc(start).replace(hour=0, minute=0, second=0, microsecond=0)
    last = _utc(end)
    while day < last:
        out.add(_day(day.date()))
        out.add(_month(day.date()))
        day += dt.timedelta(days=1)
    return out


@functools.lru_cache(maxsize=4096)  # dashboards ask for the same windows again and again
def read_scope(since: dt.datetime | None, until: dt.datetime | None) -> tuple[str, ...]:
    """The scopes a query over ``[since, until)`` depends on: its days when it spans a few weeks, its months
    when it spans up to twenty years, else ``*``. An open end (``until`` unset) depends on ``*``."""
    if since is None or until is None:
        return (ALL,)
    start, end = _utc(since), _utc(until)
    if end <= start:
        return (ALL,)
    first_day = start.replace(hour=0, minute=0, second=0, microsecond=0)
    days = (end - first_day).days + (1 if (end - first_day) % dt.timedelta(days=1) else 0)
    if days <= _MAX_DAYS:
        first = first_day.date()
        return tuple(_day(first + dt.timedelta(days=i)) for i in range(days))
    months = (end.year - start.year) * 12 + end.month - start.month + 1
    if months <= _MAX_MONTHS:
        out = []
        y, m = start.year, start.month
        for _ in range(months):
            out.append(f"m{y:04d}-{m:02d}")
            y, m = (y + 1, 1) if m == 12 else (y, m + 1)
        return tuple(out)
    return (ALL,)
