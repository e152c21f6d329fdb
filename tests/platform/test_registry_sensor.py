"""The partition registry sensor against a real database: partitions made through the core alone (no Dagster run)
appear in Dagster's own storage as materialized, archives and purges likewise, and a tick with nothing changed
reports nothing. Events reach the instance the way the sensor daemon sends them (``report_runless_asset_event``
for each of the tick's ``asset_events``)."""

from __future__ import annotations

import datetime as dt
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from audit_db_core import AuditDatabase, AuditSettings
from audit_db_core.partitions import PartitionInfo
from audit_local.demo import demo_events
from audit_platform.partitions import PARTITIONS, key_for_period
from audit_platform.resources import AuditDatabaseResource
from audit_platform.sensors import (
    ARCHIVE_ASSET,
    PARTITION_ASSET,
    PartitionRegistryError,
    partition_registry_sensor,
    reconcile_registry,
    registry_archive_event,
)

UTC = dt.UTC
MONTHS = ("2020-01-01", "2020-02-01", "2020-03-01")


@pytest.fixture(autouse=True)
def _lifecycle_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An archive root and a one-year retention (so 2020's months can be purged), for the core and the sensor."""
    for name in ("AUDIT_REPLICA_URLS", "AUDIT_REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    root = tmp_path / "archive"
    monkeypatch.setenv("AUDIT_ARCHIVE__ROOT_URI", root.as_uri())
    monkeypatch.setenv("AUDIT_RETENTION__DEFAULT", "1 year")
    return root


@pytest.fixture
def core(fresh_database: str) -> Iterator[AuditDatabase]:
    """The core alone — what migrations, the CLI or another deployment use; no Dagster anywhere."""
    with AuditDatabase(AuditSettings(database_url=fresh_database)) as db:
        yield db


class Daemon:
    """Ticks of ``partition_registry_sensor`` as the sensor daemon runs them: the cursor carried from tick to tick,
    and each tick's asset events recorded in the instance."""

    def __init__(self, database_url: str) -> None:
        self.instance = dg.DagsterInstance.ephemeral()
        self.resources = {"audit_db": AuditDatabaseResource(database_url=database_url)}
        self.cursor: str | None = None

    def tick(self) -> Any:
        with dg.build_sensor_context(instance=self.instance, cursor=self.cursor, resources=self.resources) as context:
            data = partition_registry_sensor.evaluate_tick(context)
        assert not data.run_requests
        for event in data.asset_events:
            self.instance.report_runless_asset_event(event)
        self.cursor = data.cursor
        return data

    def latest(self, asset: dg.AssetKey, key: str) -> dict[str, Any]:
        """The metadata of the latest materialization of ``asset`` partition ``key``, which no run made."""
        records = self.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=asset, asset_partitions=[key]), limit=1).records
        assert records and records[0].asset_materialization is not None, (asset, key)
        assert records[0].run_id == ""  # runless: reported by the sensor, not made by a run
        return {k: v.value for k, v in records[0].asset_materialization.metadata.items()}

    def observations(self, asset: dg.AssetKey, key: str) -> list[dict[str, Any]]:
        records = self.instance.fetch_observations(
            dg.AssetRecordsFilter(asset_key=asset, asset_partitions=[key]), limit=10).records
        return [{k: v.value for k, v in r.asset_observation.metadata.items()} for r in records if r.asset_observation]


def test_partitions_made_without_dagster_appear_materialized_once(fresh_database: str, core: AuditDatabase) -> None:
    pm = core.partitions
    for month in MONTHS:
        pm.create_partition(month)
    core.insert_many(demo_events(300, now=dt.datetime(2020, 4, 1, tzinfo=UTC), span=dt.timedelta(days=90)))
    registry = {key_for_period(p.start): p for p in pm.list_partitions()}
    keys = set(PARTITIONS.get_partition_keys())
    assert set(MONTHS) <= set(registry) and len(registry) >= 7  # + the current period and premade ones
    daemon = Daemon(fresh_database)

    first = daemon.tick()
    materialized = daemon.instance.get_materialized_partitions(PARTITION_ASSET)
    assert materialized == {k for k in registry if k in keys}
    assert daemon.instance.get_runs() == []
    jan = daemon.latest(PARTITION_ASSET, "2020-01-01")
    assert jan["partition"] == "audit_log_p2020_01" and jan["state"] == "active"
    assert jan["reported_by"] == "partition_registry_sensor"
    assert "rows" not in jan and jan["measured"].startswith("not yet")  # unmeasured: no number is made up
    assert len(first.asset_events) == len(materialized)
    assert "registered partition" in (first.skip_message or "")

    # Nothing changed: the second tick reports nothing, and says so.
    second = daemon.tick()
    assert second.asset_events == [] and second.cursor == first.cursor
    assert "registry unchanged" in (second.skip_message or "")

    # Index maintenance measures the active partitions: their rows and bytes are reported, as numbers.
    pm.optimize()
    measured = daemon.tick()
    assert {e.partition for e in measured.asset_events} == materialized
    jan = daemon.latest(PARTITION_ASSET, "2020-01-01")
    assert isinstance(jan["rows"], int) and isinstance(jan["bytes"], int) and jan["bytes"] > 0
    assert "measured" not in jan
    assert jan["dagster/row_count"] == jan["rows"] == pm.get("2020-01").row_count

    # One partition made later, by the core: exactly that one is reported.
    pm.create_partition("2019-06")
    later = daemon.tick()
    assert [(e.asset_key, e.partition) for e in later.asset_events] == [(PARTITION_ASSET, "2019-06-01")]
    assert daemon.tick().asset_events == []


def test_archived_and_purged_months_are_reported_as_such(fresh_database: str, core: AuditDatabase,
                                                          _lifecycle_env: Path) -> None:
    pm = core.partitions
    for month in MONTHS:
        pm.create_partition(month)
    core.insert_many(demo_events(300, now=dt.datetime(2020, 4, 1, tzinfo=UTC), span=dt.timedelta(days=90)))
    daemon = Daemon(fresh_database)
    daemon.tick()
    assert daemon.instance.get_materialized_partitions(ARCHIVE_ASSET) == set()

    pm.archive("2020-01")
    pm.archive("2020-02")
    pm.hold("2020-02", "litigation hold #7")  # keeps February archived through the purge below
    archived = daemon.tick()
    assert sorted((e.asset_key.to_user_string(), e.partition) for e in archived.asset_events) == [
        ("audit_log_archive", "2020-01-01"), ("audit_log_archive", "2020-02-01"),
        ("audit_log_partition", "2020-01-01"), ("audit_log_partition", "2020-02-01")]
    assert daemon.instance.get_materialized_partitions(ARCHIVE_ASSET) == {"2020-01-01", "2020-02-01"}
    info = pm.get("2020-01")
    archive = daemon.latest(ARCHIVE_ASSET, "2020-01-01")
    assert archive["status"] == "archived" and archive["manifest"] == "read"
    assert archive["rows"] == archive["dagster/row_count"] == info.row_count > 0
    assert archive["manifest_sha256"] == info.archive_manifest_sha256 and archive["files"] >= 1
    assert isinstance(archive["archive_bytes"], int) and archive["archive_bytes"] > 0
    assert archive["compression_ratio"] == round(info.bytes / archive["archive_bytes"], 2)
    feb = daemon.latest(PARTITION_ASSET, "2020-02-01")
    assert feb["state"] == "archived" and feb["legal_hold"] is True and feb["rows"] == pm.get("2020-02").row_count

    report = pm.purge(dry_run=False)
    assert report.purged == ["audit_log_p2020_01"]
    purged = daemon.tick()
    assert [(e.asset_key, e.partition, type(e)) for e in purged.asset_events] == [
        (PARTITION_ASSET, "2020-01-01", dg.AssetObservation)]  # the archive is kept: unchanged, not re-reported
    (observation,) = daemon.observations(PARTITION_ASSET, "2020-01-01")
    assert observation["state"] == "purged" and observation["rows"] == observation["bytes"] == 0
    assert observation["rows_archived"] == info.row_count and observation["purged_at"]
    assert "purged" in (purged.asset_events[0].description or "")
    assert daemon.tick().asset_events == []
    assert daemon.instance.get_runs() == []


def test_a_deleted_archive_and_an_unreadable_manifest_are_said_so() -> None:
    now = dt.datetime(2026, 1, 5, tzinfo=UTC)
    info = _info("2020-01", state="purged", archive_deleted_at=now)
    deleted = registry_archive_event(info, "2020-01-01", "unused")
    assert isinstance(deleted, dg.AssetObservation)
    assert deleted.metadata["status"].value == "archive_deleted" and "2026-01-05" in (deleted.description or "")
    missing = registry_archive_event(_info("2020-02"), "2020-02-01",
                                     "not read: AUDIT_ARCHIVE__ROOT_URI is not set")
    assert isinstance(missing, dg.AssetMaterialization)
    assert missing.metadata["manifest"].value.startswith("not read: AUDIT_ARCHIVE__ROOT_URI")
    assert "archive_bytes" not in missing.metadata


def test_a_first_tick_over_many_partitions_is_spread_over_ticks() -> None:
    infos = [_info(f"{year}-{month:02d}", state="active") for year in (2020, 2021) for month in range(1, 13)]
    keys = {key_for_period(i.start) for i in infos}
    first = reconcile_registry(infos, {}, keys, lambda: "unused", max_events=10)
    assert len(first.events) == 10 and first.deferred == 14
    second = reconcile_registry(infos, first.reported, keys, lambda: "unused", max_events=10)
    assert {e.partition for e in second.events}.isdisjoint({e.partition for e in first.events})
    third = reconcile_registry(infos, second.reported, keys, lambda: "unused", max_events=10)
    assert len(third.events) == 4 and third.deferred == 0
    assert reconcile_registry(infos, third.reported, keys, lambda: "unused").events == []
    outside = reconcile_registry([_info("1990-01")], {}, keys, lambda: "unused")
    assert outside.events == [] and outside.outside == ["audit_log_p1990_01"]
    assert "outside the Dagster partitions" in outside.summary()


def test_the_tick_fails_redacted_when_the_database_is_down() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    resource = AuditDatabaseResource(database_url=f"postgresql://app:hunter2@127.0.0.1:{port}/audit")
    with dg.build_sensor_context(resources={"audit_db": resource}, cursor=json.dumps({"partitions": {}})) as context:
        with pytest.raises(PartitionRegistryError) as info:
            partition_registry_sensor(context)
    assert "hunter2" not in str(info.value) and info.value.__cause__ is None


def _info(month: str, *, state: str = "archived", archive_deleted_at: dt.datetime | None = None) -> PartitionInfo:
    start = dt.datetime.strptime(month, "%Y-%m").replace(tzinfo=UTC)
    end = (start + dt.timedelta(days=32)).replace(day=1)
    archived = state != "active"
    return PartitionInfo(
        name=f"audit_log_p{start:%Y_%m}", start=start, end=end, state=state, legal_hold=False,
        legal_hold_reason=None, row_count=10 if archived else None, bytes=8192 if archived else None,
        archive_uri=f"file:///archive/audit_log_p{start:%Y_%m}/manifest.json" if archived else None,
        archive_checksum="0" * 64 if archived else None, archive_manifest_sha256="1" * 64 if archived else None,
        archived_at=start if archived else None, purged_at=start if state == "purged" else None, detached=False,
        retention_classes=None, archive_deleted_at=archive_deleted_at, created_at=start,
    )
