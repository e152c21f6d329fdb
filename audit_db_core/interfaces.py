"""The seams of the library as Protocols: what the rest of the world codes against.

The seed's interface table, in Python. The concrete classes satisfy these structurally (``isinstance`` works:
they are runtime-checkable, and a type checker verifies the signatures), and the code that only needs a seam
asks for the Protocol — so an application can pass its own implementation:

=======================  ==========================================  ===============================================
Protocol                 concrete class                              who depends on the Protocol
=======================  ==========================================  ===============================================
:class:`AuditStore`      :class:`~audit_db_core.AuditDatabase`,      applications; the Dagster resource's
                         :class:`~audit_db_core.AuditTransaction`    ``open()``; ``audit-platform demo``
:class:`PartitionLifecycle`  :class:`~audit_db_core.PartitionManager`    the CLI's ``partitions`` commands; the Dagster
                                                                     lifecycle assets
:class:`ResultCache`     :class:`~audit_db_core.cache.QueryCache`    :class:`~audit_db_core.AuditDatabase`
                                                                     (``AuditDatabase(settings, cache=...)``)
:class:`ConnectionProvider`  :class:`~audit_db_core.ConnectionManager`   health, the lifecycle managers
:class:`ErrorHandler`    :class:`~audit_db_core.breakers.ErrorPolicy`  :class:`~audit_db_core.AuditDatabase` (every
                                                                     operation's errors and retries)
=======================  ==========================================  ===============================================

The error handler is no parallel mechanism: ``classify`` is :func:`audit_db_core.errors.classify`, ``recover`` is
:func:`audit_db_core.breakers.retry` under the settings' retry policy, ``handle`` is what every ``AuditDatabase``
operation does with a failure (classify, name the operation, log it without row values).

This module imports only types: it is cheap to import and creates no cycle.

Example::

    from audit_db_core.interfaces import AuditStore

    def record_login(store: AuditStore, user: str) -> None:
        store.insert(AuditEvent(action="user.login", status="success", principal_id=user))

    with AuditDatabase(settings) as db:
        assert isinstance(db, AuditStore)
        record_login(db, "u1")
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

if TYPE_CHECKING:
    import datetime as dt

    from audit_db_core.errors import AuditError
    from audit_db_core.events import AuditEvent
    from audit_db_core.query import AuditQuery, QueryPage

T = TypeVar("T")


@runtime_checkable
class AuditStore(Protocol):
    """Write and read audit events (the seed's ``AuditDatabase`` interface).

    ``insert`` returns ``False`` when the same event was already stored; ``insert_many`` (of events, or of plain
    dicts of their fields, checked as events are) returns how many events were newly written — both idempotent. ``transaction()`` yields a store whose writes commit together.
    """

    def insert(self, event: AuditEvent) -> bool: ...

    def insert_many(self, events: Iterable[AuditEvent | Mapping[str, Any]]) -> int: ...

    def query(self, query: AuditQuery) -> QueryPage: ...

    def count(self, query: AuditQuery) -> int: ...


@runtime_checkable
class TransactionalAuditStore(AuditStore, Protocol):
    """An :class:`AuditStore` that also opens transactions (the database itself, not a transaction)."""

    def transaction(self) -> AbstractContextManager[AuditStore]: ...


@runtime_checkable
class PartitionLifecycle(Protocol):
    """The partition lifecycle (the seed's ``PartitionManager``: create, drop, optimize, and the rest of the four
    phases). Periods are keys such as ``"2026-11"``, ``"2026-Q4"``, a partition name, or a datetime inside."""

    @property
    def interval(self) -> Any: ...  # the partition interval (config.Period)

    def create_partition(self, period: Any, *, run_id: str | None = None) -> Any: ...

    def premake(self, n: int | None = None, *, now: dt.datetime | None = None,
                run_id: str | None = None) -> list[Any]: ...

    def rescue_default(self, *, run_id: str | None = None) -> list[Any]: ...

    def run_maintenance(self, *, now: dt.datetime | None = None, run_id: str | None = None) -> Any: ...

    def plan(self, now: dt.datetime | None = None) -> Any: ...

    def list_partitions(self, state: str | None = None) -> list[Any]: ...

    def archive(self, period: Any, *, now: dt.datetime | None = None, run_id: str | None = None,
                progress: Callable[[int], None] | None = None) -> Any: ...

    def purge(self, now: dt.datetime | None = None, *, dry_run: bool = True, run_id: str | None = None) -> Any: ...

    def drop_partition(self, period: Any, *, now: dt.datetime | None = None, run_id: str | None = None) -> None: ...

    def optimize(self, *, run_id: str | None = None) -> Any: ...

    def hold(self, period: Any, reason: str, *, run_id: str | None = None) -> Any: ...

    def release(self, period: Any, reason: str, *, run_id: str | None = None) -> Any: ...

    def restore(self, period: Any, *, table: str | None = None, run_id: str | None = None) -> Any: ...


@runtime_checkable
class ResultCache(Protocol):
    """The query cache (the seed's ``QueryCache``: get / set / invalidate / stats) as :class:`AuditDatabase` uses it.

    Keys come from :meth:`key`; a value is valid while the generations of its ``scope`` (UTC days / months of the
    query's window) stay at or under the ``limits`` it was stored with; :meth:`invalidate` moves scopes to a new
    generation (the commit's WAL position) and :meth:`publish` hands pending moves to other processes.
    ``report_breaker`` / ``fleet_breakers`` share breaker states between processes (``fleet_breakers`` returns
    ``None`` when the cache cannot see other processes).
    """

    @property
    def enabled(self) -> bool: ...

    def open(self) -> Any: ...

    def close(self) -> None: ...

    def key(self, query_type: str, normalized_query: Any, params: Any) -> str: ...

    def generations(self, scope: Iterable[str]) -> tuple[int, ...]: ...

    def get(self, key: str, scope: tuple[str, ...], decode: Callable[[Any], Any] | None = None, *,
            min_generation: int = 0) -> Any: ...

    def set(self, key: str, value: Any, *, scope: tuple[str, ...], limits: tuple[int, ...], closed: bool,
            encode: Callable[[Any], Any] | None = None) -> None: ...

    def invalidate(self, scopes: Iterable[str], lsn: int, *, publish: bool = True) -> None: ...

    def publish(self) -> None: ...

    def stats(self) -> dict[str, Any]: ...

    def report_breaker(self, name: str, state: str, detail: Any = None) -> None: ...

    def fleet_breakers(self) -> list[dict[str, Any]] | None: ...

    def fleet_stats(self) -> dict[str, Any] | None: ...  # lookups / hits summed over the processes sharing it


@runtime_checkable
class ConnectionProvider(Protocol):
    """Connections to the primary (the seed's ``ConnectionManager``: connection / health_check / pool_stats)."""

    def connection(self, *, operation: str = ...) -> AbstractContextManager[Any]: ...

    def health_check(self) -> dict[str, Any]: ...

    def pool_stats(self) -> dict[str, dict[str, Any]]: ...


@runtime_checkable
class ErrorHandler(Protocol):
    """What happens to a failure (the seed's error handling: handle / classify / recover)."""

    def classify(self, exc: BaseException, *, operation: str | None = None) -> AuditError: ...

    def handle(self, exc: BaseException, *, operation: str) -> AuditError: ...

    def recover(self, fn: Callable[[], T], *, operation: str | None = None) -> T: ...
