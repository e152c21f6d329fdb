"""The Dagster partitions of the lifecycle assets: one Dagster partition per ``audit_log`` partition.

Built from the same ``AUDIT_PARTITIONS__*`` settings the core uses, so keys and core periods map 1:1:

==========================  ==========================================================  ==================
``AUDIT_PARTITIONS__INTERVAL``  Dagster definition                                        key of Nov 2026
==========================  ==========================================================  ==================
monthly (default)           ``MonthlyPartitionsDefinition``                             ``2026-11-01``
2 / 3 / 4 / 6 months, yearly ``TimeWindowPartitionsDefinition`` with a cron              ``2026-10-01`` (Q4)
weekly                      ``WeeklyPartitionsDefinition`` (weeks start on Monday)       ``2026-11-30``
daily                       ``DailyPartitionsDefinition``                                ``2026-11-30``
==========================  ==========================================================  ==================

Any other interval (e.g. "10 days", "2 years") has no calendar-aligned Dagster equivalent: loading the code
location fails with a :class:`~audit_db_core.ConfigurationError` naming ``AUDIT_PARTITIONS__INTERVAL``.

The first partition is the period holding ``AUDIT_PARTITIONS__HISTORY_START`` (default: January 1st seven years
ago), so the history a seven-year retention keeps can be backfilled. The last one is the end of the premake
window: the current period plus ``AUDIT_PARTITIONS__PREMAKE`` future periods — exactly what
``PartitionManager.premake()`` creates. (Dagster's ``end_offset=0`` ends with the last *completed* period, so
``end_offset`` is ``premake + 1``.) Everything is UTC.

Example::

    key = PARTITIONS.get_last_partition_key()            # "2027-02-01" in November 2026 with premake 3
    db.partitions.create_partition(period_for_key(key))  # the same period in the core
"""

from __future__ import annotations

import datetime as dt

import dagster as dg

from audit_db_core import ConfigurationError
from audit_db_core.config import PartitionSettings, partition_settings_from_env
from audit_db_core.partitions import bounds_for

#: Partition key format of every definition built here (Dagster's default for day-aligned windows).
KEY_FORMAT = "%Y-%m-%d"

_MULTI_MONTH = (2, 3, 4, 6, 12)


def history_start(settings: PartitionSettings) -> dt.datetime:
    """The start of the period that holds ``settings.history_start`` (UTC): the first partition."""
    day = settings.history_start
    return bounds_for(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC), settings.interval).start


def build_partitions_def(settings: PartitionSettings | None = None) -> dg.TimeWindowPartitionsDefinition:
    """The partitions definition for ``settings`` (default: ``AUDIT_PARTITIONS__*`` from the environment).

    Raises :class:`ConfigurationError` for an interval Dagster cannot express as a calendar schedule.
    """
    settings = settings if settings is not None else partition_settings_from_env()
    interval = settings.interval
    start = history_start(settings).strftime(KEY_FORMAT)
    end_offset = settings.premake + 1  # + the current, still open period
    if interval.months == 1:
        return dg.MonthlyPartitionsDefinition(start_date=start, end_offset=end_offset, timezone="UTC", fmt=KEY_FORMAT)
    if interval.months in _MULTI_MONTH:
        months = ",".join(str(m) for m in range(1, 13, interval.months))
        return dg.TimeWindowPartitionsDefinition(
            start=start, fmt=KEY_FORMAT, cron_schedule=f"0 0 1 {months} *", timezone="UTC", end_offset=end_offset
        )
    if interval.days == 1:
        return dg.DailyPartitionsDefinition(start_date=start, end_offset=end_offset, timezone="UTC", fmt=KEY_FORMAT)
    if interval.days == 7:
        # day_offset=1: weeks start on Monday, like the core's weekly bounds (anchored on Monday 1970-01-05).
        return dg.WeeklyPartitionsDefinition(
            start_date=start, end_offset=end_offset, day_offset=1, timezone="UTC", fmt=KEY_FORMAT
        )
    reason = (
        f"{interval} has no Dagster partitions definition: the code location supports daily, weekly, monthly, "
        "2/3/4/6 months (quarterly) and yearly intervals"
    )
    raise ConfigurationError("settings", [("AUDIT_PARTITIONS__INTERVAL", reason)])


def period_for_key(key: str, partitions_def: dg.TimeWindowPartitionsDefinition | None = None) -> dt.datetime:
    """The start (aware, UTC) of the core period that partition ``key`` stands for — what
    :func:`audit_db_core.partitions.resolve_period` and every ``PartitionManager`` method accept.

    >>> period_for_key("2026-11-01")
    datetime.datetime(2026, 11, 1, 0, 0, tzinfo=datetime.timezone.utc)
    """
    fmt = (partitions_def or PARTITIONS).fmt
    try:
        return dt.datetime.strptime(key, fmt).replace(tzinfo=dt.UTC)
    except ValueError:
        raise ConfigurationError("partition key", [("partition_key", f"{key!r} does not match {fmt}")]) from None


def key_for_period(start: dt.datetime, partitions_def: dg.TimeWindowPartitionsDefinition | None = None) -> str:
    """The partition key of the core period starting at ``start`` (the inverse of :func:`period_for_key`)."""
    return start.astimezone(dt.UTC).strftime((partitions_def or PARTITIONS).fmt)


#: The partitions of ``audit_log_partition`` and ``audit_log_archive``, from the environment at load time.
PARTITIONS: dg.TimeWindowPartitionsDefinition = build_partitions_def()
