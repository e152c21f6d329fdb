"""The Prometheus view of the deployment: the ``/metrics`` endpoint the library serves, the compose services that
scrape it (``metrics`` → ``prometheus`` → ``grafana``), the provisioned dashboard's queries — and the real
``prometheus`` binary scraping a real endpoint with the deployment's own configuration.

The Prometheus test needs the ``prometheus`` binary on ``PATH`` (Debian's package: ``apt-get install -y
prometheus``); it is skipped, saying so, where it is absent.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from audit_db_core import AuditDatabase, AuditSettings, telemetry
from tests.platform.test_deploy_files import compose  # noqa: F401 - a fixture

pytest.importorskip("opentelemetry.exporter.prometheus", reason="the Prometheus exporter comes with 'platform'")

from audit_platform.metrics import DEFAULT_PORT, MetricsServer, serve_metrics  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_CONFIG = REPO / "deploy" / "prometheus" / "prometheus.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "audit-platform.json"
DATASOURCES = REPO / "deploy" / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
PROVIDERS = REPO / "deploy" / "grafana" / "provisioning" / "dashboards" / "audit-platform.yml"
#: Series names of every instrument (histograms by their three series), as Prometheus shows them.
SERIES = {
    name
    for spec in telemetry.INSTRUMENTS
    for base in [telemetry.prometheus_name(spec)]
    for name in ([f"{base}_bucket", f"{base}_count", f"{base}_sum"] if spec.kind == "histogram" else [base])
}
_PROMQL_WORDS = {"sum", "by", "rate", "increase", "max", "min", "histogram_quantile", "le", "without", "on", "and",
                 "or", "unless", "count", "avg"}


def dashboard_queries() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p.get("targets", [])]


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (identifiers not followed by ``(``, outside ``{…}`` and
    ``by (…)``)."""
    stripped = re.sub(r"\{[^}]*\}", "", expr)
    stripped = re.sub(r"\b(by|without)\s*\([^)]*\)", "", stripped)
    stripped = re.sub(r"\[[^\]]*\]", "", stripped)
    found = set(re.findall(r"\b([a-zA-Z_][a-zA-Z0-9_]*)\b(?!\s*\()", stripped))
    return {n for n in found if n not in _PROMQL_WORDS and not n.isdigit()}


# -- the endpoint ---------------------------------------------------------------------------------------------------


@pytest.fixture
def endpoint(settings: AuditSettings) -> Iterator[tuple[MetricsServer, AuditDatabase]]:
    server = serve_metrics(port=0)
    try:
        with AuditDatabase(settings) as db:
            telemetry.refresh(db)
            yield server, db
    finally:
        server.close()


def test_the_endpoint_serves_the_observed_figures(endpoint: tuple[MetricsServer, AuditDatabase]) -> None:
    server, db = endpoint
    text = urllib.request.urlopen(server.url, timeout=10).read().decode()
    names = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}
    assert {"audit_breaker_state", "db_client_connection_count", "audit_health_status", "audit_partitions",
            "audit_partition_default_rows", "audit_cache_hits_total"} <= names
    assert names - {"target_info"} <= SERIES  # every series is one of the documented instruments
    assert f'audit_deployment="{db.deployment_id}"' in text
    assert db.settings.database_url.get_secret_value() not in text


def test_an_unusable_port_is_a_configuration_error() -> None:
    from audit_db_core.errors import ConfigurationError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(ConfigurationError, match="--metrics-port"):
            serve_metrics(port=taken.getsockname()[1])


# -- compose, Prometheus and Grafana files ----------------------------------------------------------------------------


def test_compose_runs_the_endpoint_prometheus_and_grafana_wired_together(compose: dict[str, Any]) -> None:
    services = compose["services"]
    command = services["metrics"]["command"]
    assert command[:2] == ["audit-platform", "metrics"] and command[command.index("--port") + 1] == str(DEFAULT_PORT)
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    targets = [t for job in config["scrape_configs"] for sc in job.get("static_configs") or [] for t in sc["targets"]]
    assert f"metrics:{DEFAULT_PORT}" in targets
    assert "monitoring" in services["metrics"]["networks"] and "monitoring" in services["prometheus"]["networks"]
    mounts = " ".join(str(v) for v in services["prometheus"]["volumes"])
    assert "deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml" in mounts
    grafana_mounts = " ".join(str(v) for v in services["grafana"]["volumes"])
    assert "deploy/grafana/provisioning:/etc/grafana/provisioning" in grafana_mounts
    assert "deploy/grafana/dashboards:/var/lib/grafana/dashboards" in grafana_mounts
    sources = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    (prometheus,) = [s for s in sources if s["type"] == "prometheus"]
    assert prometheus["url"] == "http://prometheus:9090"
    assert yaml.safe_load(PROVIDERS.read_text())["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    panels = json.loads(DASHBOARD.read_text())["panels"]
    uids = {t["datasource"]["uid"] for p in panels for t in p.get("targets", [])}
    assert uids == {prometheus["uid"]}


def test_the_dashboard_queries_documented_instruments_and_shows_them_all() -> None:
    used: set[str] = set()
    for expr in dashboard_queries():
        names = metric_names(expr)
        assert names and names <= SERIES, (expr, names - SERIES)
        used |= names
    shown = {telemetry.prometheus_name(s) for s in telemetry.INSTRUMENTS
             if ({f"{telemetry.prometheus_name(s)}_bucket", f"{telemetry.prometheus_name(s)}_count"}
                 if s.kind == "histogram" else {telemetry.prometheus_name(s)}) & used}
    assert shown == {telemetry.prometheus_name(s) for s in telemetry.INSTRUMENTS}


# -- the real prometheus binary ---------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _api(base: str, query: str) -> dict[str, Any]:
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
    try:
        return json.loads(urllib.request.urlopen(url, timeout=10).read())
    except urllib.error.HTTPError as exc:  # a bad query: 400 with the error in the body
        return json.loads(exc.read())


@pytest.mark.slow
def test_prometheus_scrapes_the_endpoint_with_the_deployments_configuration(
    endpoint: tuple[MetricsServer, AuditDatabase],
) -> None:
    binary = shutil.which("prometheus")
    if binary is None:
        if os.environ.get("AUDIT_TEST_REQUIRE_PROMETHEUS"):  # .ci/run's observability lane asked for it
            pytest.fail("AUDIT_TEST_REQUIRE_PROMETHEUS is set but no prometheus binary is on PATH", pytrace=False)
        pytest.skip("the prometheus binary is not installed (Debian: apt-get install -y prometheus)")
    promtool = shutil.which("promtool")
    if promtool is not None:  # the file as shipped (promtool resolves no host names)
        checked = subprocess.run([promtool, "check", "config", str(PROMETHEUS_CONFIG)], capture_output=True,
                                 text=True, timeout=60)
        assert checked.returncode == 0, checked.stdout + checked.stderr
    server, db = endpoint
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"]["scrape_interval"] = "1s"
    for job in config["scrape_configs"]:
        for static in job.get("static_configs") or []:  # the compose host name → this test's endpoint
            static["targets"] = [f"127.0.0.1:{server.port}" if t == f"metrics:{DEFAULT_PORT}" else t
                                 for t in static["targets"]]
    workdir = Path(tempfile.mkdtemp(prefix="audit-prometheus-"))
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [binary, f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 90
        found: list[Any] = []
        while time.monotonic() < deadline and not found:
            assert process.poll() is None, process.stderr.read() if process.stderr else "prometheus exited"
            try:
                answer = _api(base, 'audit_breaker_state{audit_component="primary",audit_breaker_state="closed"}')
                found = answer["data"]["result"]
            except (urllib.error.URLError, ConnectionError, KeyError):
                pass
            time.sleep(0.5)
        assert found, "Prometheus never scraped audit_breaker_state"
        (sample,) = found
        assert sample["value"][1] == "1"
        assert sample["metric"]["audit_deployment"] == str(db.deployment_id)
        assert sample["metric"]["job"] == "audit-platform"
        for expr in dashboard_queries():  # every panel's query parses and evaluates
            answer = _api(base, expr)
            assert answer["status"] == "success", (expr, answer)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(workdir, ignore_errors=True)


# -- the commands ---------------------------------------------------------------------------------------------------


def test_the_metrics_port_comes_from_the_option_or_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    from audit_db_core.errors import ConfigurationError
    from audit_platform.metrics import port_from

    monkeypatch.delenv("AUDIT_METRICS_PORT", raising=False)
    assert port_from(argparse.Namespace(metrics_port=None)) is None
    assert port_from(argparse.Namespace(metrics_port=9500)) == 9500
    monkeypatch.setenv("AUDIT_METRICS_PORT", "9464")
    assert port_from(argparse.Namespace(metrics_port=None)) == 9464
    monkeypatch.setenv("AUDIT_METRICS_PORT", "lots")
    with pytest.raises(ConfigurationError, match="AUDIT_METRICS_PORT"):
        port_from(argparse.Namespace(metrics_port=None))


def test_audit_platform_metrics_serves_until_sigterm(fresh_database: str) -> None:
    import os
    import signal
    import sys

    port = _free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("AUDIT_")}, "AUDIT_DATABASE_URL": fresh_database}
    process = subprocess.Popen([sys.executable, "-m", "audit_db_core.cli", "metrics", "--port", str(port)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        text = ""
        while time.monotonic() < deadline and "audit_health_status" not in text:
            assert process.poll() is None, process.communicate()
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.2)
        # refreshed before the first scrape: health and partitions are there at once
        assert re.search(r'^audit_health_status\{audit_deployment="[0-9a-f-]{36}",audit_health_status="healthy"[^}]*\} 1\.0$',
                         text, re.M), text
        assert "audit_partitions{" in text
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    assert f"serving http://127.0.0.1:{port}/metrics" in out
