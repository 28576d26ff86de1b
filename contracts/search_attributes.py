"""keel's custom search attributes: what makes keel's runs filterable in the Temporal Web UI.

The dev stack registers them at start (``temporal server start-dev --search-attribute``); a real
cluster registers them once with ``temporal operator search-attribute create`` (see README).
"""

from __future__ import annotations

from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes

KEEL_TENANT = SearchAttributeKey.for_keyword("KeelTenant")
KEEL_WORKFLOW_KIND = SearchAttributeKey.for_keyword("KeelKind")
KEEL_AWAITING = SearchAttributeKey.for_keyword("KeelAwaiting")
KEEL_COST_USD = SearchAttributeKey.for_float("KeelCostUsd")

ALL_SEARCH_ATTRIBUTES = (KEEL_TENANT, KEEL_WORKFLOW_KIND, KEEL_AWAITING, KEEL_COST_USD)


def tenant_search_attributes(tenant: str, kind: str) -> TypedSearchAttributes:
    """What a workflow keel starts carries from its first event: its tenant and its kind."""
    return TypedSearchAttributes(
        [SearchAttributePair(KEEL_TENANT, tenant), SearchAttributePair(KEEL_WORKFLOW_KIND, kind)]
    )


# The spelling `temporal server start-dev --search-attribute NAME=TYPE` and
# `temporal operator search-attribute create --type TYPE` expect.
_CLI_TYPE_NAMES = {
    "KEYWORD": "Keyword",
    "DOUBLE": "Double",
    "BOOL": "Bool",
    "INT": "Int",
}


def cli_search_attribute_flags() -> list[str]:
    flags: list[str] = []
    for key in ALL_SEARCH_ATTRIBUTES:
        flags += [
            "--search-attribute",
            f"{key.name}={_CLI_TYPE_NAMES[key.indexed_value_type.name]}",
        ]
    return flags
