"""Dagster partition keys map 1:1 to the core's periods, for every supported interval."""

from __future__ import annotations

import datetime as dt

import dagster as dg
import pytest

from audit_db_core import ConfigurationError
from audit_db_core.config import PartitionSettings, partition_settings_from_env
from audit_db_core.partitions import bounds_for, following, resolve_period
from audit_platform.partitions import PARTITIONS, build_partitions_def, key_for_period, period_for_key

UTC = dt.UTC


@pytest.mark.parametrize(
    "interval,kind",
    [
        ("monthly", dg.MonthlyPartitionsDefinition),
        ("quarterly", dg.TimeWindowPartitionsDefinition),
        ("2 months", dg.TimeWindowPartitionsDefinition),
        ("6 months", dg.TimeWindowPartitionsDefinition),
        ("yearly", dg.TimeWindowPartitionsDefinition),
        ("weekly", dg.WeeklyPartitionsDefinition),
        ("daily", dg.DailyPartitionsDefinition),
    ],
)
def test_every_key_is_a_core_period(interval: str, kind: type) -> None:
    settings = PartitionSettings(interval=interval, history_start=dt.date(2019, 1, 1), premake=3)
    pdef = build_partitions_def(settings)
    assert isinstance(pdef, kind) and pdef.timezone == "UTC"
    keys = pdef.get_partition_keys()
    assert keys
    for key in keys:
        window = pdef.time_window_for_partition_key(key)
        bounds = resolve_period(period_for_key(key, pdef), settings.interval)
        assert bounds.start == window.start and bounds.end == window.end, key
        assert key_for_period(bounds.start, pdef) == key
    # The first key is the period holding the history start; the last ends the premake window (current + 3).
    first = bounds_for(dt.datetime(2019, 1, 1, tzinfo=UTC), settings.interval)
    assert period_for_key(keys[0], pdef) == first.start
    last = following(bounds_for(dt.datetime.now(UTC), settings.interval), settings.interval, 3)
    assert period_for_key(keys[-1], pdef) == last.start


def test_weeks_start_on_monday_like_the_core() -> None:
    pdef = build_partitions_def(PartitionSettings(interval="weekly", history_start=dt.date(2019, 1, 1)))
    keys = pdef.get_partition_keys()
    assert keys[0] == "2018-12-31"  # the Monday of the week holding 2019-01-01
    assert {period_for_key(k, pdef).weekday() for k in keys} == {0}


def test_history_start_is_aligned_down_to_the_interval() -> None:
    pdef = build_partitions_def(PartitionSettings(interval="quarterly", history_start=dt.date(2020, 5, 17)))
    assert pdef.get_first_partition_key() == "2020-04-01"


def test_default_partitions_are_monthly_from_seven_years_back() -> None:
    defaults = build_partitions_def(PartitionSettings())  # the defaults, whatever AUDIT_PARTITIONS__* says here
    assert isinstance(defaults, dg.MonthlyPartitionsDefinition)
    assert defaults.get_first_partition_key() == f"{dt.datetime.now(UTC).year - 7}-01-01"
    # The code location's own definition is built from the environment's settings the same way.
    assert PARTITIONS == build_partitions_def(partition_settings_from_env())
    assert period_for_key("2026-11-01") == dt.datetime(2026, 11, 1, tzinfo=UTC)


@pytest.mark.parametrize("interval", ["10 days", "2 weeks", "2 years"])
def test_intervals_without_a_dagster_equivalent_are_refused(interval: str) -> None:
    with pytest.raises(ConfigurationError, match="AUDIT_PARTITIONS__INTERVAL"):
        build_partitions_def(PartitionSettings(interval=interval))


def test_a_malformed_key_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="does not match"):
        period_for_key("2026-11")
