"""A Prometheus ``/metrics`` endpoint for the library's OpenTelemetry figures, and ``audit-platform metrics``.

:func:`serve_metrics` configures an OpenTelemetry SDK ``MeterProvider`` with the Prometheus exporter's reader (on a
registry of its own) for :mod:`audit_db_core.telemetry` alone — the process's global providers are left to the
application — and serves it over HTTP. ``audit-platform dev --metrics-port 9464`` (or ``AUDIT_METRICS_PORT``) runs it
beside the Dagster UI; ``audit-platform metrics`` runs it on its own, for the deployment's Prometheus (the compose
file's ``metrics`` service): it keeps one :class:`~audit_db_core.AuditDatabase` open, so replica lag, breakers,
health, partitions by state and DEFAULT rows are observed, refreshed every ``AUDIT_TELEMETRY__INSPECT_INTERVAL_SECONDS``.

Example::

    server = serve_metrics(port=9464)      # http://127.0.0.1:9464/metrics
    ...
    server.close()
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
from dataclasses import dataclass
from typing import Any

from audit_db_core import telemetry
from audit_db_core.cli import command_database, require_extra
from audit_db_core.errors import ConfigurationError

#: The port the OpenTelemetry Prometheus exporter uses by convention.
DEFAULT_PORT = 9464
PORT_ENV = "AUDIT_METRICS_PORT"
#: What the ``platform`` extra brings that the endpoint needs.
METRICS_EXTRA_MODULES = ("opentelemetry.sdk", "opentelemetry.exporter.prometheus", "prometheus_client")


@dataclass
class MetricsServer:
    """A running ``/metrics`` endpoint; :meth:`close` stops it and hands the library back to the global providers."""

    host: str
    port: int
    _server: Any
    _thread: threading.Thread
    _provider: Any

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        telemetry.configure()
        self._provider.shutdown()


def serve_metrics(host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> MetricsServer:
    """Serve the library's metrics in Prometheus' text format at ``http://host:port/metrics`` (``port`` 0: any free
    port, see :attr:`MetricsServer.port`)."""
    require_extra("platform", "the /metrics endpoint", *METRICS_EXTRA_MODULES)
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry()
    provider = MeterProvider(metric_readers=[PrometheusMetricReader(registry=registry)])
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        provider.shutdown()
        raise ConfigurationError("arguments", [("--metrics-port", f"{host}:{port} cannot be served: {exc.strerror}")]) \
            from None
    telemetry.configure(meter_provider=provider)
    return MetricsServer(host, int(server.server_port), server, thread, provider)


def port_from(args: argparse.Namespace) -> int | None:
    """``--metrics-port``, else ``AUDIT_METRICS_PORT``, else ``None`` (no endpoint)."""
    if getattr(args, "metrics_port", None) is not None:
        return int(args.metrics_port)
    raw = os.environ.get(PORT_ENV, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise ConfigurationError("settings", [(PORT_ENV, "must be a port number (1-65535)")])
    return int(raw)


def cmd_metrics(args: argparse.Namespace) -> int:
    """Serve ``/metrics`` for the database of the ``AUDIT_*`` settings until SIGTERM / Ctrl-C."""
    port = port_from(args)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with command_database() as db:
            telemetry.refresh(db)  # before serving: the first scrape already has health and partitions
            server = serve_metrics(args.host, DEFAULT_PORT if port is None else port)
            try:
                print(f"serving {server.url} (deployment {db.deployment_id}); Ctrl-C stops", flush=True)
                stop.wait()
            finally:
                server.close()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def add_metrics_parser(sub: Any) -> None:
    metrics = sub.add_parser(
        "metrics", help="serve the library's OpenTelemetry metrics at /metrics for Prometheus, until Ctrl-C (the "
        "'platform' extra)")
    metrics.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    metrics.add_argument("--port", dest="metrics_port", type=int, default=None,
                         help=f"port (default ${PORT_ENV}, else {DEFAULT_PORT})")
    metrics.set_defaults(func=cmd_metrics)
