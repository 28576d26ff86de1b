"""What each model can honour: tools, a JSON schema, images, a seed.

A request needing something a model lacks is never sent to it (the provider would drop it or
refuse it): the API refuses the request when no model of its chain can answer it, and the route
planner marks such a model so the chain skips it with an audit row saying why.

keel knows the limits of a few model families; any other model is taken to support everything
its provider's API does (so a model unknown to keel is not refused for a guess), and
KEEL_MODEL_CAPABILITIES states a model's capabilities exactly.

Some values a provider's API cannot carry, whatever the model (``provider_refusals``): for
Anthropic, a temperature above 1, an image ``detail`` other than auto, a JSON schema's
description. A model asked for one is treated like one lacking a capability: refused by the API
when no model of the chain can do better, skipped (audited) by the chain otherwise.
"""

from __future__ import annotations

from contracts.llm import Capability, ChatMessage, LlmParameters, LlmRequest, provider_for_model
from infra.settings import KeelSettings

EVERYTHING = frozenset(Capability)
# Anthropic's Messages API has no seed.
PROVIDER_CAPABILITIES = {
    "openai": EVERYTHING,
    "anthropic": EVERYTHING - {Capability.SEED},
}
# Families known to lack something (first matching prefix wins).
KNOWN_LIMITS: tuple[tuple[str, frozenset[str]], ...] = (
    ("gpt-3.5", frozenset({Capability.TOOLS, Capability.SEED})),
    ("gpt-4-", frozenset({Capability.TOOLS, Capability.SEED})),
    ("claude-2", frozenset()),
    ("claude-instant", frozenset()),
)


def model_capabilities(model: str, settings: KeelSettings) -> frozenset[str]:
    provider, name = provider_for_model(model)
    for key in (model, name):
        if key in settings.model_capabilities:
            return frozenset(settings.model_capabilities[key])
    for prefix, capabilities in KNOWN_LIMITS:
        if name.startswith(prefix):
            return capabilities
    return PROVIDER_CAPABILITIES.get(provider, EVERYTHING)


def missing_capabilities(model: str, needs: set[str], settings: KeelSettings) -> list[str]:
    return sorted(needs - model_capabilities(model, settings))


# Anthropic's temperature range is 0-1 (OpenAI's 0-2): a higher one is refused, never clamped.
ANTHROPIC_MAX_TEMPERATURE = 1.0


def provider_refusals(
    model: str, messages: list[ChatMessage], parameters: LlmParameters
) -> list[tuple[str, str]]:
    """What of a request ``model``'s provider API cannot carry, as (the request field, why):
    sent anyway, it would be dropped or changed, so the model is not asked."""
    provider, _ = provider_for_model(model)
    if provider != "anthropic":
        return []
    refusals: list[tuple[str, str]] = []
    if parameters.temperature is not None and parameters.temperature > ANTHROPIC_MAX_TEMPERATURE:
        refusals.append(
            (
                "temperature",
                f"Anthropic models take a temperature of at most {ANTHROPIC_MAX_TEMPERATURE:g} "
                f"(the request asks {parameters.temperature:g})",
            )
        )
    details = sorted(
        {
            str(image.detail)
            for m in messages
            for image in m.images
            if image.detail not in (None, "auto")
        }
    )
    if details:
        refusals.append(
            (
                "image_url.detail",
                f"Anthropic models take no image detail (the request asks {', '.join(details)}); "
                "send 'auto' or leave it out",
            )
        )
    if parameters.json_schema is not None and parameters.json_schema_description is not None:
        refusals.append(
            (
                "response_format.json_schema.description",
                "Anthropic's structured outputs take a schema without a description",
            )
        )
    return refusals


def unsupported_reason(model: str, request: LlmRequest, settings: KeelSettings) -> str | None:
    """Why ``model`` cannot answer ``request`` as asked, or None."""
    missing = missing_capabilities(model, request.required_capabilities(), settings)
    reasons = [f"{model} does not support {', '.join(missing)}"] if missing else []
    reasons += [
        f"{model} cannot honour {field}: {why}"
        for field, why in provider_refusals(model, request.messages, request.parameters)
    ]
    return "; ".join(reasons) or None
