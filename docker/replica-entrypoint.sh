#!/usr/bin/env bash
# Entrypoint of the streaming replica: on first start (empty data directory) take a base backup of the primary
# through a physical replication slot, with -R so PostgreSQL starts as a standby; then run the image's usual
# entrypoint, which finds the data directory initialised and just starts the server.
set -euo pipefail

: "${PRIMARY_HOST:?PRIMARY_HOST must be set}"
: "${REPLICATION_PG_PASSWORD:?REPLICATION_PG_PASSWORD must be set}"
PRIMARY_PORT="${PRIMARY_PORT:-5432}"
# The replication-only role docker/primary-init.sql makes (REPLICATION, no superuser, no CONNECT on the databases).
REPLICATION_PG_USER="${REPLICATION_PG_USER:-replicator}"
REPLICATION_SLOT="${REPLICATION_SLOT:-replica_1}"
PGDATA="${PGDATA:-/var/lib/postgresql/data}"
if [[ ! "$REPLICATION_SLOT" =~ ^[a-z0-9_]{1,63}$ ]]; then
  echo "replica: REPLICATION_SLOT must be lower-case letters, digits and underscores" >&2
  exit 2
fi
if [[ ! "$REPLICATION_PG_USER" =~ ^[a-z_][a-z0-9_]{0,62}$ ]]; then
  echo "replica: REPLICATION_PG_USER must be lower-case letters, digits and underscores" >&2
  exit 2
fi
export PGPASSWORD="$REPLICATION_PG_PASSWORD"

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  echo "replica: waiting for the primary at $PRIMARY_HOST:$PRIMARY_PORT"
  until pg_isready -h "$PRIMARY_HOST" -p "$PRIMARY_PORT" -U "$REPLICATION_PG_USER" -d postgres -q; do sleep 1; done

  mkdir -p "$PGDATA"
  chown postgres:postgres "$PGDATA"
  chmod 700 "$PGDATA"
  # -C creates the slot; when an earlier attempt already created it, stream through the existing one.
  slot_args=(-C -S "$REPLICATION_SLOT")
  if psql "host=$PRIMARY_HOST port=$PRIMARY_PORT user=$REPLICATION_PG_USER dbname=postgres replication=database" -tAc \
       "SELECT 1 FROM pg_replication_slots WHERE slot_name = '$REPLICATION_SLOT'" 2>/dev/null | grep -q 1; then
    slot_args=(-S "$REPLICATION_SLOT")
  fi
  echo "replica: pg_basebackup from $PRIMARY_HOST:$PRIMARY_PORT (slot $REPLICATION_SLOT)"
  gosu postgres env PGPASSWORD="$PGPASSWORD" pg_basebackup \
    -h "$PRIMARY_HOST" -p "$PRIMARY_PORT" -U "$REPLICATION_PG_USER" -D "$PGDATA" \
    -R -X stream -c fast "${slot_args[@]}" --progress
fi
unset PGPASSWORD

exec docker-entrypoint.sh "$@"
