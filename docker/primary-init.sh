#!/usr/bin/env bash
# Runs once, when the primary's data directory is created (docker-entrypoint-initdb.d): the replication role the
# replica streams with, its pg_hba entry, and Dagster's own role and database.
set -euo pipefail

: "${REPLICATION_PASSWORD:?REPLICATION_PASSWORD must be set}"
: "${DAGSTER_PG_PASSWORD:?DAGSTER_PG_PASSWORD must be set}"
DAGSTER_PG_USER="${DAGSTER_PG_USER:-dagster}"
DAGSTER_PG_DB="${DAGSTER_PG_DB:-dagster}"

# Values go in as psql variables (:'name' quotes a literal, :"name" an identifier): no quoting by hand.
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
     -v repl_password="$REPLICATION_PASSWORD" \
     -v dagster_user="$DAGSTER_PG_USER" -v dagster_password="$DAGSTER_PG_PASSWORD" -v dagster_db="$DAGSTER_PG_DB" <<'SQL'
CREATE ROLE replicator WITH REPLICATION LOGIN PASSWORD :'repl_password';
CREATE ROLE :"dagster_user" WITH LOGIN PASSWORD :'dagster_password';
CREATE DATABASE :"dagster_db" OWNER :"dagster_user";
SQL

# The image's pg_hba.conf ends with "host all all all scram-sha-256", and "all" does not match replication.
echo "host replication replicator all scram-sha-256" >> "$PGDATA/pg_hba.conf"
