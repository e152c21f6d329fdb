"""The ``ha`` profile of docker-compose.yml: etcd, three Patroni nodes, and the audit clients pointed at the cluster
through multi-host URLs (docker/env.ha.example). Resolved and checked structurally, as test_deploy_files does."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from tests.platform import test_deploy_files as plain
from tests.platform.test_deploy_files import REPO, SECRETS, resolve_compose

HA_ENV_EXAMPLE = REPO / "docker" / "env.ha.example"
PATRONI_CONFIG = REPO / "docker" / "patroni" / "patroni.yml"
NODES = ("patroni1", "patroni2", "patroni3")
AUDIT_CLIENTS = ("migrate", "code-location", "metrics")


def _env_file(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


@pytest.fixture(scope="module")
def ha_compose() -> dict[str, Any]:
    return resolve_compose({**SECRETS, **_env_file(HA_ENV_EXAMPLE)}, profiles=("ha",))


def test_the_ha_services_run_only_with_the_profile(ha_compose: dict[str, Any]) -> None:
    plain = resolve_compose(dict(SECRETS))
    assert not {"etcd", *NODES} & set(plain["services"])
    assert {"etcd", *NODES} <= set(ha_compose["services"])
    for name in ("etcd", *NODES):
        assert ha_compose["services"][name].get("profiles") == ["ha"]


def test_with_the_profile_every_dependency_exists_waits_for_health_and_every_volume_is_declared(
    ha_compose: dict[str, Any],
) -> None:
    plain.test_compose_dependencies_exist_and_wait_for_health(ha_compose)
    plain.test_compose_services_have_healthchecks_and_declared_volumes(ha_compose)


def test_three_patroni_nodes_of_one_image_wait_for_etcd_with_their_own_data(ha_compose: dict[str, Any]) -> None:
    services = ha_compose["services"]
    images = {services[name]["image"] for name in NODES}
    assert len(images) == 1
    volumes = set()
    for name in NODES:
        node = services[name]
        env = node["environment"]
        assert env["PATRONI_NAME"] == name
        assert env["PATRONI_POSTGRESQL_CONNECT_ADDRESS"] == f"{name}:5432"
        assert env["PATRONI_RESTAPI_CONNECT_ADDRESS"] == f"{name}:8008"
        assert node["depends_on"]["etcd"]["condition"] == "service_healthy"
        assert "8008/health" in " ".join(node["healthcheck"]["test"])
        data = [v for v in node["volumes"] if (v["target"] if isinstance(v, dict) else v.split(":")[1])
                == "/var/lib/postgresql/patroni"]
        assert len(data) == 1
        volumes.add(data[0]["source"] if isinstance(data[0], dict) else data[0].split(":")[0])
    assert len(volumes) == 3, "each node needs a data volume of its own"
    assert "etcd" in services and services["etcd"]["healthcheck"]["test"]
    declared = set(ha_compose.get("volumes") or {})
    assert {"etcd-data", "patroni1-data", "patroni2-data", "patroni3-data"} <= declared


def test_audit_clients_reach_the_leader_and_the_standbys_through_multi_host_urls(ha_compose: dict[str, Any]) -> None:
    services = ha_compose["services"]
    for name in AUDIT_CLIENTS:
        url = services[name]["environment"]["AUDIT_DATABASE_URL"]
        hosts = urlsplit(url).netloc.rsplit("@", 1)[1].split(",")
        assert hosts == [f"{node}:5432" for node in NODES], url
        assert parse_qs(urlsplit(url).query) == {"target_session_attrs": ["read-write"]}
        for node in NODES:
            assert services[name]["depends_on"][node]["condition"] == "service_healthy"
    for name in ("code-location", "metrics"):
        replica = services[name]["environment"]["AUDIT_REPLICA_URLS"]
        assert urlsplit(replica).netloc.rsplit("@", 1)[1].split(",") == [f"{node}:5432" for node in NODES]
        assert parse_qs(urlsplit(replica).query) == {"target_session_attrs": ["prefer-standby"]}


def test_the_library_accepts_the_profiles_urls(ha_compose: dict[str, Any]) -> None:
    from audit_db_core import AuditSettings

    env = ha_compose["services"]["code-location"]["environment"]
    settings = AuditSettings(database_url=env["AUDIT_DATABASE_URL"], replica_urls=env["AUDIT_REPLICA_URLS"])
    assert "pw-maintainer" not in settings.display_database_url
    assert len(settings.replica_urls) == 1  # one multi-host URL: libpq picks a standby


def test_patroni_is_tuned_for_fast_failover_with_synchronous_mode() -> None:
    config = yaml.safe_load(PATRONI_CONFIG.read_text())
    dcs = config["bootstrap"]["dcs"]
    assert dcs["synchronous_mode"] is True
    assert dcs["loop_wait"] + 2 * dcs["retry_timeout"] <= dcs["ttl"]  # Patroni's own rule
    assert dcs["ttl"] <= 30 and dcs["primary_start_timeout"] == 0
    assert config["etcd3"]["hosts"] == "etcd:2379"
    hba = config["postgresql"]["pg_hba"]
    assert "host all postgres all reject" in hba  # the superuser stays off the network, as on the single primary
    assert config["bootstrap"]["post_bootstrap"] == "/usr/local/bin/primary-init.sh"


def test_the_nodes_hold_the_init_secrets_and_no_client_logs_in_as_the_superuser(ha_compose: dict[str, Any]) -> None:
    services = ha_compose["services"]
    for name in NODES:
        env = services[name]["environment"]
        assert env["AUDIT_HBA_FROM_PATRONI"] == "true"
        assert env["PATRONI_SUPERUSER_PASSWORD"] == SECRETS["POSTGRES_PASSWORD"]
    for name in AUDIT_CLIENTS:
        assert SECRETS["POSTGRES_PASSWORD"] not in str(services[name]["environment"])
