"""Failover on a real Patroni cluster, through ``AuditDatabase`` with a multi-host URL (issue #15, item 3).

Each test runs one drill of ``benchmarks/failover.py`` — writer and reader threads, a fault, the figures — on the
lane's cluster and asserts what a user would check: writes resume on the new leader, every acknowledged event is
there exactly once (synchronous mode), no read fails while a replica dies or during a switchover. Times are printed,
never asserted (the benchmark reports them against the targets).
"""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from audit_local.cluster import PatroniCluster
from benchmarks.failover import DrillOptions, run_drill
from tests.ha.conftest import HA_DATABASE

pytestmark = [pytest.mark.ha, pytest.mark.slow, pytest.mark.local_servers]

#: Generous: Patroni promotes in seconds (the whole node lost: its ttl), the library follows within about one more.
OPTIONS = DrillOptions(writers=8, readers=4, settle=2.0, after=2.0, deadline=75.0, down=4.0)


def _show(result: dict[str, Any]) -> None:
    print(f"\n{result['drill']}: " + json.dumps({k: result[k] for k in (
        "victim", "leader_before", "leader_after", "promotion_seconds", "write_unavailability_seconds",
        "fault_to_first_write_seconds")}) + f" writes {result['writes']} reads {result['reads']}")


def _assert_acknowledged_exactly_once(result: dict[str, Any]) -> None:
    events = result["events"]
    assert events["acknowledged"] > 0
    assert events["missing"] == 0, f"acknowledged events lost: {events}"
    assert events["duplicated"] == 0, f"events stored twice: {events}"


def _assert_writes_resumed_on(cluster: PatroniCluster, result: dict[str, Any], leader: str) -> None:
    assert result["resumed"], f"writes never resumed: {result['writes']}"
    assert result["writes"]["acknowledged_after_fault"] > 0
    assert result["writes_now_reach"] == leader == cluster.leader()
    with psycopg.connect(cluster.node_url(leader, HA_DATABASE), autocommit=True) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)


def test_leader_crash_during_writes_resumes_on_the_new_leader_without_losing_an_event(
    cluster: PatroniCluster,
) -> None:
    result = run_drill(cluster, HA_DATABASE, "leader_crash", OPTIONS)
    _show(result)
    assert result["leader_after"] != result["leader_before"]
    _assert_writes_resumed_on(cluster, result, result["leader_after"])
    _assert_acknowledged_exactly_once(result)
    assert result["reads"]["ok"] > 0 and result["reads"]["failed"] == 0, result["reads"]  # standbys served them
    # The crashed leader comes back as a replica of the new one (pg_rewind), and the cluster is whole again.
    members = {m.name: m for m in cluster.wait_healthy()}
    assert members[result["leader_before"]].role in ("replica", "sync_standby")


def test_replica_lost_fails_no_read(cluster: PatroniCluster) -> None:
    result = run_drill(cluster, HA_DATABASE, "replica_lost", OPTIONS)
    _show(result)
    assert result["reads"]["failed"] == 0, result["reads"]
    assert result["reads"]["ok"] > 0
    replica_reads = sum(n for server, n in result["reads"]["by_server"].items() if server.startswith("replica-"))
    assert replica_reads > 0, f"no read reached a replica: {result['reads']['by_server']}"
    _assert_acknowledged_exactly_once(result)


@pytest.fixture(scope="module")
def switchover(ha_cluster: PatroniCluster) -> dict[str, Any]:
    """One switchover drill, its figures shared by the tests below."""
    ha_cluster.ensure_healthy()
    result = run_drill(ha_cluster, HA_DATABASE, "switchover", OPTIONS)
    _show(result)
    return result


def test_switchover_through_patroni_writes_go_on_on_the_new_leader(
    ha_cluster: PatroniCluster, switchover: dict[str, Any]
) -> None:
    assert switchover["leader_after"] != switchover["leader_before"]
    _assert_writes_resumed_on(ha_cluster, switchover, switchover["leader_after"])
    _assert_acknowledged_exactly_once(switchover)


def test_switchover_through_patroni_fails_no_read(switchover: dict[str, Any]) -> None:
    assert switchover["reads"]["ok"] > 0
    assert switchover["reads"]["failed"] == 0, switchover["reads"]
