"""Admin endpoints: change faults, canned responses and live config; read stats.

Bodies are validated with the same pydantic models the Python API uses; anything off is
answered 422 with ``{"error": {"message", "details"}}``.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from llmsim.config import BatchSimConfig, CannedResponse
from llmsim.faults import PROFILES, FaultRule, ScriptedFault
from llmsim.state import SimState


class FaultsUpdate(BaseModel):
    """``POST /admin/faults``: queue ``scripted``; replace the rules with ``profile``'s
    and/or ``rules`` (omit both to keep the current rules)."""

    model_config = ConfigDict(extra="forbid")

    scripted: list[ScriptedFault] = Field(default_factory=list)
    rules: list[FaultRule] | None = None
    profile: str | None = None


class CannedUpdate(BaseModel):
    """``POST /admin/responses``: one canned response, or several under ``responses``."""

    model_config = ConfigDict(extra="forbid")

    responses: list[CannedResponse]


class ConfigUpdate(BaseModel):
    """``POST /admin/config``: only the fields present change (``fixed_latency_s: null``
    turns fixed latency off)."""

    model_config = ConfigDict(extra="forbid")

    seed: int | None = None
    latency_scale: float | None = Field(default=None, ge=0)
    fixed_latency_s: float | None = Field(default=None, ge=0)
    min_output_tokens: int | None = Field(default=None, ge=1)
    max_output_tokens: int | None = Field(default=None, ge=1)
    stream_chunk_tokens: int | None = Field(default=None, ge=1)
    prompt_cache: bool | None = None
    batch: BatchSimConfig | None = None

    def changes(self) -> dict[str, Any]:
        out = {name: getattr(self, name) for name in self.model_fields_set}
        for name, value in list(out.items()):
            if value is None and name != "fixed_latency_s":
                raise ValueError(f"{name} cannot be null")
        return out


def unprocessable(message: str, details: Any = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "details": details}}, status_code=422)


def invalid(what: str, exc: ValidationError) -> JSONResponse:
    """422 whose message names each bad field, e.g. ``invalid fault update:
    scripted.0.kind: Input should be 'rate_limit', ...``."""
    problems = "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}" for err in exc.errors()
    )
    return unprocessable(f"invalid {what}: {problems}", json.loads(exc.json()))


async def _json(request: Request) -> Any:
    raw = await request.body()
    return json.loads(raw) if raw.strip() else {}


def admin_routes(state: SimState) -> list[Route]:
    async def post_faults(request: Request) -> JSONResponse:
        try:
            update = FaultsUpdate.model_validate(await _json(request))
            view = state.add_faults(update.scripted, update.rules, update.profile)
        except ValidationError as exc:
            return invalid("fault update", exc)
        except ValueError as exc:  # JSON syntax, or a rule the models cannot express
            return unprocessable(f"invalid request body: {exc}")
        return JSONResponse(view)

    async def get_faults(request: Request) -> JSONResponse:
        return JSONResponse({**state.faults_view(), "profiles": sorted(PROFILES)})

    async def delete_faults(request: Request) -> JSONResponse:
        state.clear_faults()
        return JSONResponse(state.faults_view())

    async def get_stats(request: Request) -> JSONResponse:
        return JSONResponse(state.stats())

    async def post_reset(request: Request) -> JSONResponse:
        state.reset()
        return JSONResponse({"ok": True})

    async def post_responses(request: Request) -> JSONResponse:
        try:
            data = await _json(request)
            items = (
                CannedUpdate.model_validate(data).responses
                if isinstance(data, dict) and "responses" in data
                else [CannedResponse.model_validate(data)]
            )
        except ValidationError as exc:
            return invalid("canned response", exc)
        except ValueError as exc:  # JSON syntax, or a rule the models cannot express
            return unprocessable(f"invalid request body: {exc}")
        for item in items:
            state.add_canned(item)
        return JSONResponse({"responses": state.canned_view()})

    async def get_responses(request: Request) -> JSONResponse:
        return JSONResponse({"responses": state.canned_view()})

    async def delete_responses(request: Request) -> JSONResponse:
        state.clear_canned()
        return JSONResponse({"responses": []})

    async def post_config(request: Request) -> JSONResponse:
        try:
            update = ConfigUpdate.model_validate(await _json(request))
            view = state.configure(**update.changes())
        except ValidationError as exc:
            return invalid("config update", exc)
        except ValueError as exc:  # JSON syntax, or a rule the models cannot express
            return unprocessable(f"invalid request body: {exc}")
        return JSONResponse(view)

    async def get_config(request: Request) -> JSONResponse:
        return JSONResponse(state.config_view())

    async def get_batches(request: Request) -> JSONResponse:
        """Every batch created through either batch API since the last reset, oldest first."""
        return JSONResponse(
            {
                "submissions": [
                    {
                        "provider": s.provider,
                        "batch_id": s.batch_id,
                        "created_at": s.created_at,
                        "requests": s.requests,
                        "metadata": s.metadata,
                        "custom_ids": list(s.custom_ids),
                    }
                    for s in state.batches.submissions()
                ]
            }
        )

    async def get_profiles(request: Request) -> JSONResponse:
        return JSONResponse({name: p.model_dump(mode="json") for name, p in PROFILES.items()})

    return [
        Route("/admin/faults", post_faults, methods=["POST"]),
        Route("/admin/faults", get_faults, methods=["GET"]),
        Route("/admin/faults", delete_faults, methods=["DELETE"]),
        Route("/admin/stats", get_stats, methods=["GET"]),
        Route("/admin/reset", post_reset, methods=["POST"]),
        Route("/admin/responses", post_responses, methods=["POST"]),
        Route("/admin/responses", get_responses, methods=["GET"]),
        Route("/admin/responses", delete_responses, methods=["DELETE"]),
        Route("/admin/config", post_config, methods=["POST"]),
        Route("/admin/config", get_config, methods=["GET"]),
        Route("/admin/profiles", get_profiles, methods=["GET"]),
        Route("/admin/batches", get_batches, methods=["GET"]),
    ]
