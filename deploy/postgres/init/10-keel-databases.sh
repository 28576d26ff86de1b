#!/usr/bin/env bash
# Runs once, when the postgres service initialises an empty data volume (the postgres image
# executes /docker-entrypoint-initdb.d/*.sh as the superuser). It creates one login role and
# its databases per tenant of this Postgres:
#
#   temporal  ->  temporal, temporal_visibility   (schemas applied by the temporal-schema service)
#   keel      ->  keel                            (schema applied by keel-migrate / Alembic)
#
# Passwords come from the container environment (TEMPORAL_DB_PASSWORD, KEEL_DB_PASSWORD) and
# are passed to psql as variables, never spliced into SQL text. Changing them in .env later
# does NOT change them here: use ALTER ROLE ... PASSWORD, or recreate the volume.
set -euo pipefail

: "${TEMPORAL_DB_PASSWORD:?TEMPORAL_DB_PASSWORD must be set}"
: "${KEEL_DB_PASSWORD:?KEEL_DB_PASSWORD must be set}"

psql --no-psqlrc -v ON_ERROR_STOP=1 \
    --username "${POSTGRES_USER}" --dbname "${POSTGRES_DB}" \
    --set=temporal_password="${TEMPORAL_DB_PASSWORD}" \
    --set=keel_password="${KEEL_DB_PASSWORD}" <<'EOSQL'
CREATE ROLE temporal LOGIN PASSWORD :'temporal_password';
CREATE DATABASE temporal OWNER temporal;
CREATE DATABASE temporal_visibility OWNER temporal;

CREATE ROLE keel LOGIN PASSWORD :'keel_password';
CREATE DATABASE keel OWNER keel;

-- keel's least-privilege roles (migration 0008 grants them their privileges): the application's
-- sessions take keel_app (audit rows: INSERT only), `keel purge` takes keel_retention. `keel`
-- migrates and may SET ROLE to both. For a stricter setup, log the application in as a user
-- that is only a member of keel_app (see ARCHITECTURE.md, "Database roles").
CREATE ROLE keel_app NOLOGIN;
CREATE ROLE keel_retention NOLOGIN;
GRANT keel_app, keel_retention TO keel;
EOSQL

# The database owners own their `public` schema too (Postgres 15+ no longer lets every role
# create objects there), and nobody else may connect.
for db in temporal temporal_visibility keel; do
    owner=$([ "${db}" = keel ] && echo keel || echo temporal)
    psql --no-psqlrc -v ON_ERROR_STOP=1 --username "${POSTGRES_USER}" --dbname "${db}" \
        -c "ALTER SCHEMA public OWNER TO ${owner};" \
        -c "REVOKE ALL ON DATABASE ${db} FROM PUBLIC;"
done
