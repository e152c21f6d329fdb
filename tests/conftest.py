"""Real servers for the suite.

With ``AUDIT_TEST_DATABASE_URL`` (and optionally ``AUDIT_TEST_REPLICA_URLS``, ``AUDIT_TEST_REDIS_URL``) set, the
tests use those servers; otherwise one local PostgreSQL primary + streaming replica + Redis is started for the
session (``audit_local``) and stopped at the end, even when tests fail.

Each test that needs a clean schema gets its own database, cloned from a migrated template database, with a
deployment identity of its own (a clone would otherwise share the template's).

The L2 cache needs a key: the suite sets ``AUDIT_CACHE__KEY`` to a fixed test key (:data:`TEST_CACHE_KEY`) unless
the environment already holds one, so every ``AuditSettings`` built by a test (and by the processes it starts)
seals its L2 values.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from audit_db_core import AuditDatabase, AuditSettings
from audit_db_core.migrate import migrate


_PRIVATE_BASETEMP: str | None = None
#: The suite's L2 cache key (32 bytes, hex): test data only, never a deployment's.
TEST_CACHE_KEY = "7e57" * 16


_HA_LANE = Path(__file__).resolve().parent / "ha"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--ha", action="store_true", default=False,
        help="also collect tests/ha: a real 3-node Patroni cluster (needs etcd and Patroni: .ci/run installs them)",
    )


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """``tests/ha`` needs packages the README's test command does not install: collected only with ``--ha``."""
    if collection_path == _HA_LANE and not config.getoption("--ha"):
        return True
    return None


def pytest_configure(config: pytest.Config) -> None:
    """A private basetemp (unless one is given): pytest's shared /tmp/pytest-of-<user> is reset to 0700 by every
    new session, which would lock the unprivileged PostgreSQL user of another running session out of its data."""
    global _PRIVATE_BASETEMP
    os.environ.setdefault("AUDIT_CACHE__KEY", TEST_CACHE_KEY)
    if not config.option.basetemp and not hasattr(config, "workerinput"):
        _PRIVATE_BASETEMP = tempfile.mkdtemp(prefix="audit-pytest-")
        config.option.basetemp = _PRIVATE_BASETEMP


def pytest_unconfigure(config: pytest.Config) -> None:
    if _PRIVATE_BASETEMP:
        shutil.rmtree(_PRIVATE_BASETEMP, ignore_errors=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The fast lane (``pytest -m fast``): unit-level tests — no database or Redis (no ``servers`` fixture in their
    closure), no processes of their own, nothing heavy. Derived from what a test uses, so it cannot drift."""
    for item in items:
        heavy = item.get_closest_marker("slow") or item.get_closest_marker("local_servers")
        if not heavy and "servers" not in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.fast)


@dataclass(frozen=True)
class TestServers:
    database_url: str
    replica_urls: list[str] = field(default_factory=list)
    redis_url: str | None = None
    local: bool = False


def with_dbname(url: str, dbname: str) -> str:
    """The same server URL, another database: ``postgresql://u@h:p/old?x`` → ``postgresql://u@h:p/NEW?x``."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + dbname))


@pytest.fixture(scope="session")
def servers() -> Iterator[TestServers]:
    url = os.environ.get("AUDIT_TEST_DATABASE_URL")
    if url:
        replicas = [u for u in os.environ.get("AUDIT_TEST_REPLICA_URLS", "").split(",") if u.strip()]
        yield TestServers(url, replicas, os.environ.get("AUDIT_TEST_REDIS_URL") or None, local=False)
        return
    from audit_local.servers import LocalServers

    # A directory of its own, whatever the basetemp (see pytest_configure).
    directory = Path(tempfile.mkdtemp(prefix="audit-test-servers-"))
    local = LocalServers(directory / "servers")
    try:
        ep = local.up()
        yield TestServers(ep.database_url, list(ep.replica_urls), ep.redis_url, local=True)
    finally:
        local.down(remove=True)
        shutil.rmtree(directory, ignore_errors=True)


@contextmanager
def scratch_database(server_url: str, prefix: str, template: str | None = None) -> Iterator[str]:
    """Create a uniquely named database (optionally cloned from ``template``, then given a deployment identity of
    its own), yield its URL, drop it."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    create = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if template is not None:
        create += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
    with psycopg.connect(server_url, autocommit=True, connect_timeout=10) as conn:
        conn.execute(create)
    try:
        url = with_dbname(server_url, name)
        if template is not None:
            # The clone stands in for a freshly migrated database, whose migration drew an identity of its own and
            # recorded nothing: a plain UPDATE, not new_deployment_id (which also writes a ledger entry).
            with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
                conn.execute("UPDATE audit_deployment SET deployment_id = gen_random_uuid()")
        yield url
    finally:
        with psycopg.connect(server_url, autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def template_db(servers: TestServers) -> Iterator[str]:
    """A migrated database that per-test databases are cloned from (CREATE DATABASE … TEMPLATE)."""
    with scratch_database(servers.database_url, "audit_tpl") as url:
        migrate(url)
        with AuditDatabase(AuditSettings(database_url=url)) as db:
            db.partitions.premake()
        yield dbname_of(url)


@pytest.fixture
def fresh_database(servers: TestServers, template_db: str) -> Iterator[str]:
    """The URL of a new, migrated database of this test's own (dropped afterwards)."""
    with scratch_database(servers.database_url, "audit_t", template_db) as url:
        yield url


@pytest.fixture
def empty_database(servers: TestServers) -> Iterator[str]:
    """The URL of a new database with no schema at all (for migration tests)."""
    with scratch_database(servers.database_url, "audit_e") as url:
        yield url


@pytest.fixture(scope="session")
def shared_database(servers: TestServers, template_db: str) -> Iterator[str]:
    """One migrated database for tests that do not need isolation (e.g. property tests)."""
    with scratch_database(servers.database_url, "audit_s", template_db) as url:
        yield url


@pytest.fixture
def settings(fresh_database: str) -> AuditSettings:
    return AuditSettings(database_url=fresh_database)


@pytest.fixture
def db(settings: AuditSettings) -> Iterator[AuditDatabase]:
    with AuditDatabase(settings) as database:
        yield database


def dbname_of(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def archive_dir(root: Path, partition: str) -> Path:
    """Where ``partition``'s archive lies under the archive root ``root``: ``<root>/<deployment id>/<partition>``
    (each test database has an identity of its own, and a test's root holds one deployment's archives)."""
    deployments = [p for p in root.iterdir() if p.is_dir() and _is_uuid(p.name)] if root.is_dir() else []
    assert len(deployments) <= 1, f"archives of several deployments under {root}: {deployments}"
    return (deployments[0] if deployments else root / "no-deployment-directory") / partition


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True
