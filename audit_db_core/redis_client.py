"""Redis clients of the cache tier: one server by its URL, or the master of a Redis Sentinel group.

``AUDIT_REDIS_URL`` takes ``redis://``, ``rediss://`` and ``unix://`` URLs (one server), and
``redis+sentinel://`` URLs that name the Sentinels watching a master instead of the master itself::

    redis+sentinel://[:password@]sentinel1:26379,sentinel2:26379,sentinel3:26379/<service>[/<db>]

``<service>`` is the name the Sentinels monitor (``sentinel monitor <service> …``); ``<db>`` the database number
(0). The password, when given, is the Redis servers' (``requirepass`` of the master and its replicas); the
Sentinels themselves are reached without one. Every connection asks the Sentinels where the master is (redis-py's
``Sentinel`` client): after a Sentinel failover, a connection that finds its server demoted or gone is dropped and the
next one reaches the new master. Until then cache operations fail, the Redis breaker bypasses the tier, and no read
fails (docs/guides/deployment.md#redis-sentinel-for-the-cache-tier).

Example::

    client = redis_client("redis+sentinel://10.0.0.5:26379,10.0.0.6:26379/audit-cache/0", timeout=0.25)
    client.ping()
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import unquote

SENTINEL_SCHEME: Final = "redis+sentinel://"
DEFAULT_SENTINEL_PORT: Final = 26379
_HOST_PORT: Final = re.compile(r"^(?P<host>[A-Za-z0-9._-]+)(?::(?P<port>[0-9]{1,5}))?$")


@dataclass(frozen=True)
class SentinelURL:
    """A parsed ``redis+sentinel://`` URL.

    >>> SentinelURL.parse("redis+sentinel://:pw@s1,s2:26380/audit/2")
    SentinelURL(sentinels=(('s1', 26379), ('s2', 26380)), service='audit', db=2, password='pw')
    """

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int
    password: str | None

    @classmethod
    def parse(cls, url: str) -> SentinelURL:
        """Parse ``url``; a ``ValueError`` names what is wrong and never quotes the URL (it may hold a password)."""
        if not url.startswith(SENTINEL_SCHEME):
            raise ValueError(f"must start with {SENTINEL_SCHEME}")
        rest = url[len(SENTINEL_SCHEME):]
        if "?" in rest or "#" in rest:
            raise ValueError("takes no query options: write redis+sentinel://host:26379,host2:26379/service/0")
        netloc, _, path = rest.partition("/")
        userinfo, at, hosts = netloc.rpartition("@")
        password = None
        if at:
            _user, _, secret = userinfo.partition(":")
            password = unquote(secret) if secret else None
        sentinels = []
        for item in hosts.split(","):
            match = _HOST_PORT.match(item.strip())
            if not match:
                raise ValueError("names a Sentinel that is not host or host:port (IPv6 addresses are not supported)")
            port = int(match["port"] or DEFAULT_SENTINEL_PORT)
            if not 1 <= port <= 65535:
                raise ValueError("has a Sentinel port that is not a number from 1 to 65535")
            sentinels.append((match["host"], port))
        service, _, db = path.strip("/").partition("/")
        if not service:
            raise ValueError("names no service: write redis+sentinel://host:26379/<service monitored>/0")
        if db and not db.isdigit():
            raise ValueError("has a database that is not a number (such as /0) after the service")
        return cls(tuple(sentinels), unquote(service), int(db or 0), password)


def redis_client(url: str, *, timeout: float, max_connections: int | None = None, **options: Any) -> Any:
    """A ``redis.Redis`` for ``url`` (one server, or the master of a Sentinel group), with ``timeout`` seconds to
    connect and per command. ``max_connections``: a blocking pool of that size (threads beyond it wait up to
    ``timeout`` for a connection instead of being refused). ``options`` go to the connections.

    Example::

        redis_client("redis://127.0.0.1:6379/0", timeout=0.25, max_connections=50).ping()
    """
    import redis

    connection = {"socket_timeout": timeout, "socket_connect_timeout": timeout, "retry_on_timeout": False, **options}
    if not url.startswith(SENTINEL_SCHEME):
        if max_connections is None:
            return redis.Redis.from_url(url, **connection)
        pool = redis.BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=timeout,
                                                     **connection)
        return redis.Redis(connection_pool=pool)
    from redis.sentinel import Sentinel

    parsed = SentinelURL.parse(url)
    sentinel = Sentinel(list(parsed.sentinels), sentinel_kwargs={"socket_timeout": timeout,
                                                                  "socket_connect_timeout": timeout})
    pool_options: dict[str, Any] = {}
    if max_connections is not None:
        pool_options = {"connection_pool_class": _blocking_sentinel_pool(), "max_connections": max_connections,
                        "timeout": timeout}
    return sentinel.master_for(parsed.service, db=parsed.db, password=parsed.password, **pool_options, **connection)


_BLOCKING_SENTINEL_POOL: Any = None


def _blocking_sentinel_pool() -> Any:
    """redis-py's Sentinel pool refuses a connection beyond ``max_connections``; this one waits, as the cache's
    pool for a single server does (``BlockingConnectionPool``)."""
    global _BLOCKING_SENTINEL_POOL
    if _BLOCKING_SENTINEL_POOL is None:
        from redis import BlockingConnectionPool
        from redis.sentinel import SentinelConnectionPool

        class BlockingSentinelConnectionPool(SentinelConnectionPool, BlockingConnectionPool):  # type: ignore[misc]
            pass

        _BLOCKING_SENTINEL_POOL = BlockingSentinelConnectionPool
    return _BLOCKING_SENTINEL_POOL
