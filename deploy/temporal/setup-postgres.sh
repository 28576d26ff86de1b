#!/bin/sh
# Creates or upgrades Temporal's schemas in Postgres; run by the one-shot temporal-schema
# service (temporalio/admin-tools image) before the temporal server starts.
#
# Idempotent, so it runs on every `docker compose up`: an initialised database only gets its
# pending versioned updates (this is also how a Temporal upgrade migrates the schema); an empty
# one is set up from version 0.0 first. The databases and the `temporal` role are created by
# deploy/postgres/init/10-keel-databases.sh. temporal-sql-tool reads SQL_PASSWORD itself.
set -eu

DB_HOST="${DB_HOST:-postgres}"
DB_PORT="${DB_PORT:-5432}"
DB_USER="${DB_USER:-temporal}"
SCHEMA_ROOT="${SCHEMA_ROOT:-/etc/temporal/schema/postgresql/v12}"
: "${SQL_PASSWORD:?SQL_PASSWORD must be set}"
export SQL_PASSWORD

echo "Waiting for ${DB_HOST}:${DB_PORT}..."
tries=0
until nc -z -w 5 "${DB_HOST}" "${DB_PORT}"; do
    tries=$((tries + 1))
    if [ "${tries}" -ge 30 ]; then
        echo "Postgres at ${DB_HOST}:${DB_PORT} is unreachable" >&2
        exit 1
    fi
    sleep 2
done

sql_tool() {
    db="$1"
    shift
    # Short flag spellings as in Temporal's own compose samples (stable across releases).
    temporal-sql-tool --plugin postgres12 --ep "${DB_HOST}" -p "${DB_PORT}" -u "${DB_USER}" \
        --db "${db}" "$@"
}

migrate() {
    db="$1"
    dir="${SCHEMA_ROOT}/$2/versioned"
    echo "Schema for database '${db}' (${dir})"
    if sql_tool "${db}" update-schema -d "${dir}"; then
        echo "'${db}' was initialised; pending updates applied"
        return 0
    fi
    echo "'${db}' has no schema yet; setting it up from version 0.0"
    sql_tool "${db}" setup-schema -v 0.0
    sql_tool "${db}" update-schema -d "${dir}"
}

migrate temporal temporal
migrate temporal_visibility visibility
echo "Temporal schemas are up to date"
