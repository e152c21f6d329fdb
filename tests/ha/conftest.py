"""The HA lane: a real 3-node Patroni cluster (etcd, PostgreSQL) on loopback, shared by the lane's tests.

Collected only with ``pytest --ha`` (see ``tests/conftest.py``): the README's test command does not install what it
needs. ``.ci/run`` installs it (Debian's ``etcd-server``; Patroni in a virtual environment of the system's Python)
and runs ``pytest tests/ha --ha``. Asked for with ``--ha`` but without those packages, the lane fails at once,
naming what is missing: a lane that was requested and did not run is a failure, not a pass.

Each test starts from a healthy cluster (a leader, both other nodes streaming, one of them the synchronous
standby): nodes a previous test killed or stopped are started again first.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from audit_local.cluster import PatroniCluster, missing_requirements, patroni_cluster
from benchmarks.failover import prepare_database

HA_DATABASE = "audit_ha"


@pytest.fixture(scope="session")
def ha_cluster() -> Iterator[PatroniCluster]:
    missing = missing_requirements()
    if missing:
        pytest.fail("HA lane asked for (--ha) but it cannot run: " + "; ".join(missing), pytrace=False)
    # Outside pytest's basetemp, as the suite's other servers (see tests/conftest.py).
    directory = Path(tempfile.mkdtemp(prefix="audit-ha-test-"))
    try:
        with patroni_cluster(directory, synchronous=True) as cluster:
            prepare_database(cluster, HA_DATABASE)
            yield cluster
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def cluster(ha_cluster: PatroniCluster) -> PatroniCluster:
    """The session's cluster, healthy again."""
    ha_cluster.ensure_healthy()
    return ha_cluster
