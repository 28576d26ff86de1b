#!/bin/sh
# Registers the namespace keel runs in (TEMPORAL_NAMESPACE, default "default") and keel's custom
# search attributes (SEARCH_ATTRIBUTES: space-separated NAME=Type pairs, the ones
# contracts/search_attributes.py defines); run by the one-shot temporal-namespace service once the
# temporal server is healthy. The plain temporalio/server image, unlike the deprecated
# auto-setup image, creates neither. Idempotent: what already exists is left as it is.
set -eu

ADDRESS="${TEMPORAL_ADDRESS:-temporal:7233}"
NAMESPACE="${TEMPORAL_NAMESPACE:-default}"
RETENTION="${TEMPORAL_NAMESPACE_RETENTION:-72h}"
SEARCH_ATTRIBUTES="${SEARCH_ATTRIBUTES:-}"

echo "Waiting for the Temporal frontend at ${ADDRESS}..."
tries=0
until temporal operator cluster health --address "${ADDRESS}" >/dev/null 2>&1; do
    tries=$((tries + 1))
    if [ "${tries}" -ge 60 ]; then
        echo "Temporal at ${ADDRESS} did not become healthy" >&2
        exit 1
    fi
    sleep 2
done

if temporal operator namespace describe --address "${ADDRESS}" --namespace "${NAMESPACE}" \
    >/dev/null 2>&1; then
    echo "Namespace '${NAMESPACE}' already exists"
else
    temporal operator namespace create --address "${ADDRESS}" --namespace "${NAMESPACE}" \
        --retention "${RETENTION}"
    echo "Namespace '${NAMESPACE}' created (retention ${RETENTION})"
    # A new namespace reaches every frontend's cache only after a few seconds.
    tries=0
    until temporal operator namespace describe --address "${ADDRESS}" \
        --namespace "${NAMESPACE}" >/dev/null 2>&1; do
        tries=$((tries + 1))
        if [ "${tries}" -ge 30 ]; then
            echo "Namespace '${NAMESPACE}' did not become visible" >&2
            exit 1
        fi
        sleep 2
    done
fi

existing=$(temporal operator search-attribute list --address "${ADDRESS}" \
    --namespace "${NAMESPACE}")
for pair in ${SEARCH_ATTRIBUTES}; do
    name="${pair%%=*}"
    type="${pair#*=}"
    if printf '%s\n' "${existing}" | grep -qw -- "${name}"; then
        echo "Search attribute ${name} already exists"
    else
        temporal operator search-attribute create --address "${ADDRESS}" \
            --namespace "${NAMESPACE}" --name "${name}" --type "${type}"
        echo "Search attribute ${name} (${type}) created"
    fi
done
