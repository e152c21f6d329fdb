#!/usr/bin/env bash
# Runs once, when the primary's data directory is created (docker-entrypoint-initdb.d), as the server's superuser
# over the local socket: docker/primary-init.sql makes the roles of migration 0007_roles, one login per kind of
# client, the replication role, Dagster's role and the two databases; then pg_hba.conf lets the replication role
# stream and refuses the superuser from the network. Names and passwords come from the environment.
set -euo pipefail

# Where docker-compose.yml mounts it (the tests point this at the repository's copy).
INIT_SQL="${PRIMARY_INIT_SQL:-/usr/local/share/audit/primary-init.sql}"
PGDATA="${PGDATA:-/var/lib/postgresql/data}"

for var in OWNER_PG_PASSWORD MAINTAINER_PG_PASSWORD WRITER_PG_PASSWORD READER_PG_PASSWORD \
           REPLICATION_PG_PASSWORD DAGSTER_PG_PASSWORD; do
  if [ -z "${!var:-}" ]; then
    echo "primary-init: $var must be set (see docker/env.example)" >&2
    exit 2
  fi
done
# Names go into pg_hba.conf below and into SQL as identifiers: plain lower-case names only.
for var in POSTGRES_USER AUDIT_PG_DB DAGSTER_PG_DB OWNER_PG_USER MAINTAINER_PG_USER WRITER_PG_USER READER_PG_USER \
           REPLICATION_PG_USER DAGSTER_PG_USER; do
  if [[ ! "${!var:-}" =~ ^[a-z_][a-z0-9_]{0,62}$ ]]; then
    echo "primary-init: $var must be set to lower-case letters, digits and underscores (at most 63)" >&2
    exit 2
  fi
  export "${var?}"
done
export OWNER_PG_PASSWORD MAINTAINER_PG_PASSWORD WRITER_PG_PASSWORD READER_PG_PASSWORD REPLICATION_PG_PASSWORD \
       DAGSTER_PG_PASSWORD

psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname postgres --file "$INIT_SQL"

# Under Patroni (the `ha` profile), Patroni owns pg_hba.conf (docker/patroni/patroni.yml): nothing to add here.
if [ "${AUDIT_HBA_FROM_PATRONI:-false}" = true ]; then
  exit 0
fi
# The image's pg_hba.conf ends with "host all all all scram-sha-256" (loopback is trusted above it). Before that
# line: the superuser may not log in from the network at all, and the replication role may stream ("all" does not
# match replication connections). Lines already there (the script run again) are not added twice.
hba="$PGDATA/pg_hba.conf"
rules=""
for rule in "host all $POSTGRES_USER all reject" "host replication $REPLICATION_PG_USER all scram-sha-256"; do
  grep -qxF "$rule" "$hba" || rules="$rules$rule"$'\n'
done
if [ -n "$rules" ]; then
  awk -v rules="${rules%$'\n'}" '!done && /^host[ \t]+all[ \t]+all[ \t]+all[ \t]/ { print rules; done = 1 } { print }
                                  END { if (!done) print rules }' "$hba" > "$hba.new"
  cat "$hba.new" > "$hba"   # keeps the file's owner and mode
  rm -f "$hba.new"
fi
# Run again on a live server (docker compose exec postgres …), the new rules apply at once; during the first
# start the image restarts the server after the init scripts anyway.
psql -v ON_ERROR_STOP=1 --no-psqlrc --quiet --username "$POSTGRES_USER" --dbname postgres \
     --command "SELECT pg_reload_conf()" > /dev/null
