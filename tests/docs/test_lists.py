"""Lists in the docs that mirror the code are checked against it, as sets (the code may grow; a doc that misses a
name, or names one that is gone, fails):

- the Dagster guide's overview (assets and their groups, jobs, schedules, asset checks, sensors, resources), its
  table of jobs and schedules (which schedule runs which job, at which cron) and its table of asset checks, against
  ``audit_platform.definitions.defs``;
- the command line reference (commands and their actions) against ``audit_db_core.cli.build_parser()``;
- the settings tables of the configuration page (every variable, and every default written as a value) against
  ``AuditSettings``, walked recursively through its sections;
- the error hierarchy (class, parents, category, severity, retryable) against the classes of
  ``audit_db_core.errors``.
"""

from __future__ import annotations

import argparse
import enum
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from audit_db_core import errors
from audit_db_core.cli import build_parser
from audit_db_core.config import AuditSettings
from tests.docs.test_examples import subcommands

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
_CODE = re.compile(r"`([^`]+)`")
_DUMMY_URL = "postgresql://docs@localhost/docs"


# -- reading Markdown tables ----------------------------------------------------------------------------------------


def tables(path: Path, *, until_heading: str | None = None) -> list[list[list[str]]]:
    """The pipe tables of ``path`` (stopping at the heading ``until_heading``), each a list of rows of cells, header
    row first (the separator row left out)."""
    found: list[list[list[str]]] = []
    current: list[list[str]] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if until_heading is not None and line.startswith("#") and line.lstrip("#").strip() == until_heading:
            break
        if line.startswith("|"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            if not all(set(c) <= set("-: ") for c in cells):
                current.append(cells)
        elif current:
            found.append(current)
            current = []
    if current:
        found.append(current)
    return found


def table(path: Path, *header: str) -> list[list[str]]:
    """The rows (without the header) of the one table of ``path`` whose header starts with ``header``."""
    matches = [t for t in tables(path) if [h.lower() for h in t[0][: len(header)]] == list(header)]
    assert len(matches) == 1, f"{path.relative_to(ROOT)}: expected one table with header {header}, found {len(matches)}"
    return matches[0][1:]


def names(cell: str) -> list[str]:
    """The `code` spans of a cell, in order."""
    return _CODE.findall(cell)


def test_tables_are_read_as_written(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("intro\n\n| a | b |\n|---|---|\n| `x`, `y` | z \\| w |\n\n"
                    "# Stop\n\n| a | b |\n|---|---|\n| q | r |\n")
    assert tables(page) == [[["a", "b"], ["`x`, `y`", "z \\| w"]], [["a", "b"], ["q", "r"]]]
    assert tables(page, until_heading="Stop") == [[["a", "b"], ["`x`, `y`", "z \\| w"]]]
    assert names("`x`, `y` (`z`)") == ["x", "y", "z"]


# -- Dagster --------------------------------------------------------------------------------------------------------

DAGSTER = DOCS / "guides" / "dagster-platform.md"


@pytest.fixture(scope="module")
def repo() -> Any:
    pytest.importorskip("dagster")
    from audit_platform.definitions import defs

    return defs.get_repository_def()


def _overview() -> dict[str, list[tuple[str, list[str]]]]:
    """The overview table by kind (``assets``, ``jobs``, …): (the kind cell, the names) per row."""
    out: dict[str, list[tuple[str, list[str]]]] = {}
    for kind, cell in table(DAGSTER, "kind", "names"):
        out.setdefault(kind.split(" (")[0], []).append((kind, names(cell)))
    return out


def _jobs(repo: Any) -> set[str]:
    return {j.name for j in repo.get_all_jobs() if not j.name.startswith("__")}  # not Dagster's implicit asset job


def test_the_dagster_overview_lists_what_the_code_location_defines(repo: Any) -> None:
    overview = _overview()
    listed = {kind: {n for _, ns in rows for n in ns} for kind, rows in overview.items()}
    assert listed["jobs"] == _jobs(repo)
    assert listed["schedules"] == {s.name for s in repo.schedule_defs}
    assert listed["sensors"] == {s.name for s in repo.sensor_defs}
    assert {n for n in listed["resources"] if not n.endswith("Resource")} == set(repo.get_top_level_resources())
    graph = repo.asset_graph
    assets = {k.to_user_string(): graph.get(k).group_name for k in graph.get_all_asset_keys()}
    documented_groups = {}
    for kind, ns in overview["assets"]:
        (group,) = names(kind)  # "assets (group `g`)"
        documented_groups.update(dict.fromkeys(ns, group))
    assert documented_groups == assets
    checks = {(c.asset_key.to_user_string(), c.name) for c in graph.asset_check_keys}
    documented_checks = set()
    for kind, ns in overview["asset checks"]:
        (asset,) = names(kind)  # "asset checks (on `a`)"
        documented_checks |= {(asset, n) for n in ns}
    assert documented_checks == checks


def test_the_dagster_jobs_table_names_every_job_with_its_schedule_and_cron(repo: Any) -> None:
    rows = table(DAGSTER, "job", "schedule")
    jobs = {names(job)[0]: (names(schedule), names(cron)) for job, schedule, cron, _ in rows}
    assert set(jobs) == _jobs(repo)
    schedules = {s.name: s for s in repo.schedule_defs}
    documented = {sched[0]: job for job, (sched, _) in jobs.items() if sched}
    assert set(documented) == set(schedules)
    for name, job in documented.items():
        assert schedules[name].job_name == job, f"{name} runs {schedules[name].job_name}, not {job}"
        assert jobs[job][1][:1] == [schedules[name].cron_schedule], f"{name}: cron in the docs differs"


def test_the_dagster_checks_table_names_every_check(repo: Any) -> None:
    documented = {names(check)[0] for check, *_ in table(DAGSTER, "check", "severity")}
    assert documented == {c.name for c in repo.asset_graph.asset_check_keys}


# -- the command line -----------------------------------------------------------------------------------------------


def _actions(parser: argparse.ArgumentParser) -> set[str]:
    """The choices of a command's first positional argument that has them (``partitions plan|list|…``)."""
    for action in parser._actions:
        if not action.option_strings and action.choices:
            return {str(c) for c in action.choices}
    return set()


def test_the_cli_reference_lists_every_command_and_action() -> None:
    rows = table(DOCS / "api" / "cli.md", "command", "actions")
    documented = {names(command)[0]: set(names(actions)) for command, actions, *_ in rows}
    commands = subcommands(build_parser())
    assert set(documented) == set(commands)
    for name, parser in commands.items():
        assert documented[name] == _actions(parser), f"audit-platform {name}: actions differ"


# -- settings -------------------------------------------------------------------------------------------------------

CONFIGURATION = DOCS / "getting-started" / "configuration.md"
_NONE = {"none", "*required*", "unset", "none (off)"}


def setting_fields(model: type[BaseModel], prefix: str = "AUDIT_") -> Iterator[tuple[str, tuple[str, ...]]]:
    """``(environment variable, path of attribute names)`` of every leaf setting, sections walked recursively."""
    for name, info in model.model_fields.items():
        section = info.annotation if isinstance(info.annotation, type) else None
        if section is not None and issubclass(section, BaseModel):
            for variable, path in setting_fields(section, f"{prefix}{name.upper()}__"):
                yield variable, (name, *path)
        else:
            yield f"{prefix}{name.upper()}", (name,)


def documented_settings() -> dict[str, str]:
    """Every variable of the settings tables (before the Dagster section) with its default cell; the breakers'
    table (a field per row, a breaker per column) is expanded to ``AUDIT_BREAKERS__<NAME>__<FIELD>``."""
    out: dict[str, str] = {}
    for rows in tables(CONFIGURATION, until_heading="Dagster platform"):
        header, body = rows[0], rows[1:]
        if header[0].startswith("field (`AUDIT_BREAKERS__"):
            breakers = [names(h)[0] for h in header[2:]]
            for row in body:
                for breaker, default in zip(breakers, row[2:], strict=True):
                    out[f"AUDIT_BREAKERS__{breaker}__{names(row[0])[0]}"] = default
        elif header[:2] == ["variable", "default"]:
            for row in body:
                for variable in names(row[0]):
                    out[variable] = row[1]
    return out


def _value(settings: AuditSettings, path: tuple[str, ...]) -> Any:
    value: Any = settings
    for name in path:
        value = getattr(value, name)
    return value.get_secret_value() if hasattr(value, "get_secret_value") else value


def test_the_configuration_page_lists_every_setting() -> None:
    documented = documented_settings()
    actual = dict(setting_fields(AuditSettings))
    assert set(documented) - set(actual) == set(), "documented, but no such setting"
    assert set(actual) - set(documented) == set(), "settings missing from the configuration page"


def test_the_documented_defaults_are_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """A default written as a value (`…`) read back as that variable gives the default; "none" / *required* /
    "unset" means no value. Defaults described in words (a date computed at start) are left alone."""
    import os

    for name in list(os.environ):
        if name.upper().startswith("AUDIT_"):
            monkeypatch.delenv(name)
    defaults = AuditSettings(database_url=_DUMMY_URL)
    fields = dict(setting_fields(AuditSettings))
    checked = 0
    for variable, cell in documented_settings().items():
        path = fields[variable]
        if cell.lower() in _NONE:
            if variable != "AUDIT_DATABASE_URL":
                assert not _value(defaults, path), f"{variable}: documented as {cell}, is {_value(defaults, path)!r}"
            continue
        written = names(cell)
        if not cell.startswith("`") or not written:
            continue  # a default in words
        with monkeypatch.context() as env:
            env.setenv(variable, written[0])
            parsed = AuditSettings(database_url=_DUMMY_URL)
        assert _value(parsed, path) == _value(defaults, path), f"{variable}: the docs say {written[0]}"
        checked += 1
    assert checked > 50  # the check reads the tables it means to


# -- errors ---------------------------------------------------------------------------------------------------------


def _error_classes() -> dict[str, type[errors.AuditError]]:
    return {
        name: cls for name, cls in vars(errors).items()
        if isinstance(cls, type) and issubclass(cls, errors.AuditError) and cls.__module__ == errors.__name__
    }


def test_the_error_hierarchy_matches_the_classes() -> None:
    rows = table(DOCS / "api" / "errors.md", "class", "parent", "category", "severity", "retryable")
    documented = {names(row[0])[0]: row for row in rows}
    classes = _error_classes()
    assert set(documented) == set(classes)
    for name, (_, parents, category, severity, retryable, *_) in documented.items():
        cls = classes[name]
        assert names(parents) == [b.__name__ for b in cls.__bases__], f"{name}: parents"
        assert names(category) == [_enum_value(cls.category)], f"{name}: category"
        assert names(severity) == [_enum_value(cls.severity)], f"{name}: severity"
        assert retryable.split()[0] == ("yes" if cls.retryable else "no"), f"{name}: retryable"


def _enum_value(value: enum.Enum) -> str:
    return str(value.value)


# -- OpenTelemetry instruments --------------------------------------------------------------------------------------

OBSERVABILITY = DOCS / "guides" / "observability.md"
_KIND_WORDS = {"counter": "counter", "histogram": "histogram", "gauge": "gauge (observable)",
               "observable_counter": "counter (observable)",
               "observable_up_down_counter": "up-down counter (observable)"}


def test_the_observability_guide_lists_every_instrument_as_defined() -> None:
    from audit_db_core import telemetry

    rows = table(OBSERVABILITY, "instrument", "kind", "unit", "attributes")
    documented = {names(name)[0]: (kind, names(unit)[0], names(attrs), names(prom)[0])
                  for name, kind, unit, attrs, prom, _ in rows}
    defined = {i.name: (_KIND_WORDS[i.kind], i.unit, list(i.attributes), telemetry.prometheus_name(i))
               for i in telemetry.INSTRUMENTS}
    assert documented == defined
