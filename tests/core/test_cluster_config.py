"""The HA lane's cluster (``audit_local.cluster``) without starting it: Patroni's configuration keeps Patroni's own
timing rule and synchronous mode, the URLs reach every node, and what is missing is named (no processes)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("psutil", reason="the HA lane's cluster is part of the 'local' extra")

from audit_local import cluster as ha  # noqa: E402
from audit_local.cluster import FAST_FAILOVER, PatroniCluster, _Node  # noqa: E402


def _cluster(tmp_path: Path, *, synchronous: bool = True) -> PatroniCluster:
    c = PatroniCluster(tmp_path / "ha", synchronous=synchronous)
    c._etcd_port = 2379
    c._nodes = {name: _Node(name, 5001 + i, 8001 + i, tmp_path / name) for i, name in enumerate(("node1", "node2"))}
    return c


def test_patroni_timings_keep_patronis_rule_and_fail_over_fast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ha.PG_BIN_DIR_ENV, str(tmp_path))
    (tmp_path / "postgres").touch()
    config = _cluster(tmp_path)._patroni_config(_cluster(tmp_path)._nodes["node2"])
    dcs = config["bootstrap"]["dcs"]
    assert dcs["loop_wait"] + 2 * dcs["retry_timeout"] <= dcs["ttl"] and dcs["ttl"] >= 20  # Patroni refuses less
    assert dcs["primary_start_timeout"] == 0 and dcs["synchronous_mode"] is True
    assert config["postgresql"]["listen"] == "127.0.0.1:5002" and config["restapi"]["listen"] == "127.0.0.1:8002"
    assert config["etcd3"]["hosts"] == ["127.0.0.1:2379"]
    assert config["postgresql"]["bin_dir"] == str(tmp_path)
    asynchronous = _cluster(tmp_path, synchronous=False)
    assert asynchronous._patroni_config(asynchronous._nodes["node1"])["bootstrap"]["dcs"]["synchronous_mode"] is False
    assert dict(FAST_FAILOVER)["ttl"] == dcs["ttl"]


def test_urls_name_every_node(tmp_path: Path) -> None:
    c = _cluster(tmp_path)
    assert c.primary_url("audit") == (
        "postgresql://postgres@127.0.0.1:5001,127.0.0.1:5002/audit?target_session_attrs=read-write"
    )
    assert c.replica_urls("audit") == ["postgresql://postgres@127.0.0.1:5001/audit",
                                       "postgresql://postgres@127.0.0.1:5002/audit"]


def test_what_is_missing_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ha.ETCD_ENV, str(tmp_path / "no-etcd"))
    monkeypatch.setenv(ha.PATRONI_ENV, str(tmp_path / "no-patroni"))
    monkeypatch.setenv(ha.PG_BIN_DIR_ENV, str(tmp_path))
    missing = " | ".join(ha.missing_requirements())
    assert "AUDIT_HA_PATRONI" in missing and "not an executable" in missing
    assert "etcd" in missing and "AUDIT_HA_ETCD" in missing
    assert "no postgres binary" in missing
    with pytest.raises(ha.LocalServerError, match="cannot start a Patroni cluster"):
        PatroniCluster(tmp_path / "ha").up()
