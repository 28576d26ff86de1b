"""keel's LLM simulator: an HTTP server speaking enough of the OpenAI Chat Completions and
Anthropic Messages APIs for the real SDKs, with deterministic replies, a latency model and
seeded fault injection.

    from llmsim import SimConfig, SimServer
    with SimServer(SimConfig(latency_scale=0)) as sim:
        client = openai.AsyncOpenAI(base_url=sim.openai_base_url, api_key="sim")
"""

from llmsim.catalog import DEFAULT_MODELS, ModelSpec, build_catalog
from llmsim.config import CannedResponse, SimConfig, load_profile_file
from llmsim.faults import PROFILES, FaultKind, FaultProfile, FaultRule, ScriptedFault
from llmsim.server import SimServer, build_config, serve
from llmsim.tokens import MESSAGE_OVERHEAD_TOKENS, count_message_tokens, count_tokens

__all__ = [
    "DEFAULT_MODELS",
    "MESSAGE_OVERHEAD_TOKENS",
    "PROFILES",
    "CannedResponse",
    "FaultKind",
    "FaultProfile",
    "FaultRule",
    "ModelSpec",
    "ScriptedFault",
    "SimConfig",
    "SimServer",
    "build_catalog",
    "build_config",
    "count_message_tokens",
    "count_tokens",
    "load_profile_file",
    "serve",
]
