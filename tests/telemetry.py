"""The real OpenTelemetry SDK, in memory, for tests: a metric reader and a span exporter handed to
:func:`audit_db_core.telemetry.configure` (the global providers can be set once per process; this can be done per
test), and helpers to read what they hold."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from audit_db_core import telemetry


@dataclass
class Collected:
    reader: Any  # InMemoryMetricReader
    exporter: Any  # InMemorySpanExporter
    tracer_provider: Any  # the TracerProvider: an application's own spans, around the library's
    meter_provider: Any  # the MeterProvider

    def metrics(self) -> dict[str, list[tuple[dict[str, Any], Any]]]:
        """Every metric collected now: name → [(attributes, value)], a histogram's value being its data point
        (``count``, ``sum``, ``bucket_counts``)."""
        out: dict[str, list[tuple[dict[str, Any], Any]]] = {}
        data = self.reader.get_metrics_data()
        for rm in data.resource_metrics if data else []:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    points = out.setdefault(metric.name, [])
                    for p in metric.data.data_points:
                        points.append((dict(p.attributes or {}), p if hasattr(p, "bucket_counts") else p.value))
        return out

    def spans(self) -> list[Any]:
        return list(self.exporter.get_finished_spans())


@pytest.fixture
def otel() -> Iterator[Collected]:
    """An SDK MeterProvider (in-memory reader) and TracerProvider (in-memory exporter) for this test only."""
    pytest.importorskip("opentelemetry.sdk", reason="the OpenTelemetry SDK comes with the 'dev' extra")
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    reader = InMemoryMetricReader()
    exporter = InMemorySpanExporter()
    meters = MeterProvider(metric_readers=[reader])
    tracers = TracerProvider()
    tracers.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry.configure(meter_provider=meters, tracer_provider=tracers)
    try:
        yield Collected(reader, exporter, tracers, meters)
    finally:
        telemetry.configure()
        meters.shutdown()
        tracers.shutdown()


def value(points: list[tuple[dict[str, Any], Any]], **attributes: Any) -> Any:
    """The one value whose attributes include ``attributes`` (dotted names: ``value(points, **{"a.b": v})``)."""
    found = [v for attrs, v in points if all(attrs.get(k) == w for k, w in attributes.items())]
    assert len(found) == 1, f"expected one point with {attributes}, found {len(found)} in {points}"
    return found[0]


def all_attribute_values(collected: Collected) -> list[str]:
    """Every attribute value (as text) of every metric point and span collected: what must never hold an
    identifier or an event's value."""
    texts = [str(v) for points in collected.metrics().values() for attrs, _ in points for v in attrs.values()]
    for span in collected.spans():
        texts += [str(v) for v in (span.attributes or {}).values()]
        texts.append(span.name)
        if span.status.description:
            texts.append(span.status.description)
    return texts
