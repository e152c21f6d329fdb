"""The lifecycle assets materialized in process against real PostgreSQL (a fresh migrated database per test)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import pytest
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from audit_db_core import AuditDatabase, AuditSettings
from audit_local.demo import demo_events
from audit_db_core.ledger import entries
from audit_db_core.partitions import bounds_for
from audit_platform.assets import BACKFILL_POLICY, audit_log_archive, audit_log_partition
from audit_platform.partitions import key_for_period
from audit_platform.resources import AuditDatabaseResource
from tests.conftest import archive_dir

UTC = dt.UTC


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AUDIT_REPLICA_URLS", "AUDIT_REDIS_URL", "AUDIT_ARCHIVE__ROOT_URI", "AUDIT_PARTITIONS__PREMAKE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def archive_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "archive"
    monkeypatch.setenv("AUDIT_ARCHIVE__ROOT_URI", root.as_uri())
    return root


def resources(url: str) -> dict[str, Any]:
    return {"audit_db": AuditDatabaseResource(database_url=url)}


def materialize(assets: list[Any], url: str, **kwargs: Any) -> dg.ExecuteInProcessResult:
    return dg.materialize(assets, resources=resources(url), instance=dg.DagsterInstance.ephemeral(), **kwargs)


def metadata_of(result: dg.ExecuteInProcessResult, asset: str) -> dict[str, Any]:
    (mat,) = [m for m in result.asset_materializations_for_node(asset)]
    return {k: v.value for k, v in mat.metadata.items()}


def count(url: str, table: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(psycopg.sql.SQL("SELECT count(*) FROM {}").format(psycopg.sql.Identifier(table))).fetchone()
    return int(row[0])  # type: ignore[index]


def failure_description(result: dg.ExecuteInProcessResult) -> str:
    (event,) = result.get_step_failure_events()
    data = event.step_failure_data
    if data.user_failure_data is not None and data.user_failure_data.description:
        return data.user_failure_data.description
    return data.error.message if data.error else ""


def test_current_month(fresh_database: str) -> None:
    current = bounds_for(dt.datetime.now(UTC), AuditSettings(database_url=fresh_database).partitions.interval)
    with AuditDatabase(AuditSettings(database_url=fresh_database)) as db:
        db.insert_many(demo_events(120, span=dt.timedelta(minutes=30)))
    result = materialize([audit_log_partition], fresh_database, partition_key=key_for_period(current.start))
    assert result.success
    meta = metadata_of(result, "audit_log_partition")
    assert meta["partition"] == current.name
    assert meta["created"] is False  # the migrated database premade it already
    assert meta["rows"] == count(fresh_database, current.name) == 120
    assert meta["rescued_rows"] == 0 and meta["bytes"] > 0
    with psycopg.connect(fresh_database) as conn:
        (parent_indexes,) = conn.execute(
            "SELECT count(*) FROM pg_index WHERE indrelid = 'audit_log'::regclass").fetchone()  # type: ignore[misc]
    assert meta["indexes"] == parent_indexes
    assert meta["index_table"].count("\n") == parent_indexes + 1 and "brin" in meta["index_table"]


def test_old_month_rescues_default_rows(fresh_database: str) -> None:
    with AuditDatabase(AuditSettings(database_url=fresh_database)) as db:
        db.insert_many(demo_events(250, now=dt.datetime(2021, 4, 1, tzinfo=UTC), span=dt.timedelta(days=31)))
        assert db.partitions.default_row_count() == 250  # March 2021 has no partition: DEFAULT took them
    result = materialize([audit_log_partition], fresh_database, partition_key="2021-03-01", tags={"t": "old"})
    assert result.success
    meta = metadata_of(result, "audit_log_partition")
    assert meta["partition"] == "audit_log_p2021_03" and meta["created"] is True
    assert meta["rescued_rows"] == 250 == meta["rows"] and meta["duration_ms"] > 0
    assert count(fresh_database, "audit_log_default") == 0
    assert count(fresh_database, "audit_log_p2021_03") == 250
    with psycopg.connect(fresh_database) as conn:
        created = entries(conn, partition="audit_log_p2021_03", operation="create")
    assert [e.run_id for e in created] == [result.run_id]  # the ledger knows which Dagster run did it


def test_old_month_archive(fresh_database: str, archive_root: Path) -> None:
    with AuditDatabase(AuditSettings(database_url=fresh_database)) as db:
        db.insert_many(demo_events(300, now=dt.datetime(2021, 4, 1, tzinfo=UTC), span=dt.timedelta(days=31)))
    result = materialize([audit_log_partition, audit_log_archive], fresh_database, partition_key="2021-03-01")
    assert result.success
    meta = metadata_of(result, "audit_log_archive")
    assert meta["archive_uri"] == (archive_dir(archive_root, "audit_log_p2021_03") / "manifest.json").as_uri()
    assert meta["archive_uri"].startswith(archive_root.as_uri())
    assert meta["rows"] == 300 and meta["files"] >= 1 and meta["archive_bytes"] > 0
    assert meta["compression_ratio"] > 1 and len(meta["content_digest"]) == 64 and len(meta["manifest_sha256"]) == 64
    with AuditDatabase(AuditSettings(database_url=fresh_database)) as db:
        info = db.partitions.get("2021-03")
    assert info.state == "archived" and info.archive_checksum == meta["content_digest"]
    assert info.archive_manifest_sha256 == meta["manifest_sha256"]
    with psycopg.connect(fresh_database) as conn:
        (archived,) = entries(conn, partition="audit_log_p2021_03", operation="archive")
    assert archived.run_id == result.run_id and archived.outcome == "ok"


def test_archive_inside_the_active_window_fails_with_the_reason(fresh_database: str, archive_root: Path) -> None:
    current = bounds_for(dt.datetime.now(UTC), AuditSettings(database_url=fresh_database).partitions.interval)
    result = materialize([audit_log_archive], fresh_database, partition_key=key_for_period(current.start),
                         raise_on_error=False)
    assert not result.success
    description = failure_description(result)
    until = current.end + dt.timedelta(days=90)
    assert f"{current.name} is still inside the active window (90 days) until {until:%Y-%m-%d %H:%M} UTC" in description
    assert "Nothing was archived" in description
    with AuditDatabase(AuditSettings(database_url=fresh_database)) as db:
        assert db.partitions.get(current.start).state == "active"
    assert not archive_root.exists() or not any(archive_root.iterdir())


def test_a_three_month_range_in_one_run(fresh_database: str) -> None:
    with AuditDatabase(AuditSettings(database_url=fresh_database)) as db:
        db.insert_many(demo_events(90, now=dt.datetime(2021, 9, 1, tzinfo=UTC), span=dt.timedelta(days=92)))
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(
        [audit_log_partition], resources=resources(fresh_database), instance=instance,
        tags={ASSET_PARTITION_RANGE_START_TAG: "2021-06-01", ASSET_PARTITION_RANGE_END_TAG: "2021-08-01"},
    )
    assert result.success
    with AuditDatabase(AuditSettings(database_url=fresh_database)) as db:
        names = [p.name for p in db.partitions.list_partitions() if p.start.year == 2021]
        assert db.partitions.default_row_count() == 0
    assert names == ["audit_log_p2021_06", "audit_log_p2021_07", "audit_log_p2021_08"]
    assert sum(count(fresh_database, n) for n in names) == 90
    mats = result.asset_materializations_for_node("audit_log_partition")
    assert sorted(m.partition for m in mats) == ["2021-06-01", "2021-07-01", "2021-08-01"]
    meta = {k: v.value for k, v in mats[0].metadata.items()}  # a range run's totals, on each partition's event
    assert meta["created_partitions"] == 3 and meta["rescued_rows"] == 90 and meta["partition_count"] == 3
    assert "audit_log_p2021_07" in meta["partitions"]
    materialized = instance.get_materialized_partitions(dg.AssetKey("audit_log_partition"))
    assert materialized == {"2021-06-01", "2021-07-01", "2021-08-01"}
    # …and each partition's own numbers as an observation of that partition.
    observed = instance.fetch_observations(dg.AssetKey("audit_log_partition"), limit=10).records
    own = {r.partition_key: r.asset_observation.metadata["rows"].value for r in observed}  # type: ignore[union-attr]
    assert own == {"2021-06-01": count(fresh_database, "audit_log_p2021_06"),
                   "2021-07-01": count(fresh_database, "audit_log_p2021_07"),
                   "2021-08-01": count(fresh_database, "audit_log_p2021_08")}


def test_backfill_policy() -> None:
    assert audit_log_partition.backfill_policy == audit_log_archive.backfill_policy == BACKFILL_POLICY
    assert BACKFILL_POLICY.max_partitions_per_run == 12  # 24 months → 2 runs per asset


def test_a_range_failing_part_way_keeps_what_it_finished(fresh_database: str, archive_root: Path) -> None:
    with AuditDatabase(AuditSettings(database_url=fresh_database)) as db:
        db.partitions.create_partition("2021-01")  # February has no partition: its archive cannot be made
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(
        [audit_log_archive], resources=resources(fresh_database), instance=instance, raise_on_error=False,
        tags={ASSET_PARTITION_RANGE_START_TAG: "2021-01-01", ASSET_PARTITION_RANGE_END_TAG: "2021-02-01"},
    )
    assert not result.success
    assert "no partition audit_log_p2021_02 is registered" in failure_description(result)
    assert instance.get_materialized_partitions(dg.AssetKey("audit_log_archive")) == {"2021-01-01"}
    with AuditDatabase(AuditSettings(database_url=fresh_database)) as db:
        assert db.partitions.get("2021-01").state == "archived"
