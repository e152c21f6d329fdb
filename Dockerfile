# One image for the three Dagster services of docker-compose.yml: the code location (gRPC server, where runs
# execute), dagster-webserver and dagster-daemon. The audit_db_core library comes with it.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DAGSTER_HOME=/opt/dagster/dagster_home

RUN groupadd --system --gid 10001 dagster \
 && useradd --system --uid 10001 --gid dagster --home-dir /opt/dagster --shell /usr/sbin/nologin dagster

WORKDIR /opt/dagster/app
COPY pyproject.toml README.md ./
COPY audit_db_core ./audit_db_core
COPY audit_platform ./audit_platform
# audit_local comes with the distribution, but not its extra: the image carries no embedded server binaries.
COPY audit_local ./audit_local
RUN pip install ".[platform]" && pip check

# Instance config (storage, run queue, telemetry off; secrets from the environment) and the gRPC workspace.
COPY dagster.yaml ${DAGSTER_HOME}/dagster.yaml
COPY docker/workspace.yaml /opt/dagster/workspace.yaml
# Named volumes start with the ownership of these directories, so the unprivileged user can write them.
RUN mkdir -p ${DAGSTER_HOME}/storage /var/lib/audit-archive /var/lib/audit-reports \
 && chown -R dagster:dagster ${DAGSTER_HOME} /var/lib/audit-archive /var/lib/audit-reports

USER dagster
EXPOSE 3000 4000
CMD ["dagster", "api", "grpc", "-h", "0.0.0.0", "-p", "4000", "-m", "audit_platform.definitions"]
