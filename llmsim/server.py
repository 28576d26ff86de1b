"""Running the simulator: in-process on a background thread (tests, benchmarks) or as a
blocking process (``python -m llmsim``, ``keel sim``)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import uvicorn

from llmsim.admin import ConfigUpdate
from llmsim.app import create_app
from llmsim.batches import Submission
from llmsim.config import CannedResponse, SimConfig, load_profile_file
from llmsim.faults import FaultKind, FaultProfile, FaultRule, ScriptedFault
from llmsim.state import RequestRecord, SimState

GRACEFUL_SHUTDOWN_S = 2
"""Backstop for in-flight requests at shutdown; sleeps and hangs already wake at once."""


class _Server(uvicorn.Server):
    def __init__(
        self,
        config: uvicorn.Config,
        state: SimState,
        on_started: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(config)
        self.sim_state = state
        self.on_started = on_started

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and self.on_started is not None:
            self.on_started()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Wake hanging and sleeping requests first, or uvicorn waits for them.
        self.sim_state.begin_shutdown()
        super().handle_exit(sig, frame)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must say TCP: asyncio only sets TCP_NODELAY on accepted sockets whose proto is
    # IPPROTO_TCP, and without it every keep-alive response stalls ~40 ms on delayed ACKs.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def _url(host: str, sock: socket.socket) -> str:
    port = sock.getsockname()[1]
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _uvicorn_config(state: SimState, *, log_config: Any) -> uvicorn.Config:
    """``log_config=None`` leaves logging to the host application (tests)."""
    cfg = state.config
    return uvicorn.Config(
        create_app(state),
        host=cfg.host,
        port=cfg.port,
        log_level=cfg.log_level,
        access_log=cfg.access_log,
        lifespan="on",
        loop="asyncio",
        http="h11",
        ws="none",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        timeout_keep_alive=30,
        backlog=4096,
        log_config=log_config,
    )


class SimServer:
    """The simulator on a background thread with its own event loop.

    ``with SimServer(SimConfig(latency_scale=0)) as sim: ...`` — ``sim.url`` is the root
    URL (OpenAI SDK: ``sim.openai_base_url``, Anthropic SDK: ``sim.anthropic_base_url``).
    The admin endpoints are mirrored by methods that act on the live state directly.
    """

    def __init__(self, config: SimConfig | None = None, **overrides: Any) -> None:
        base = config or SimConfig()
        if overrides:
            base = SimConfig.model_validate({**base.model_dump(), **overrides})
        self.config = base
        self.state = SimState(base)
        self._sock: socket.socket | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._url: str | None = None

    # --- lifecycle --------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """Root URL, no ``/v1`` (e.g. ``http://127.0.0.1:41234``)."""
        if self._url is None:
            raise RuntimeError("SimServer is not running; call start() or use it as a context")
        return self._url

    @property
    def openai_base_url(self) -> str:
        return self.url + "/v1"

    @property
    def anthropic_base_url(self) -> str:
        return self.url

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def start(self, timeout: float = 15.0) -> SimServer:
        """Start serving; returns once the port accepts connections."""
        if self._thread is not None:
            raise RuntimeError("SimServer already started")
        self._sock = _bind(self.config.host, self.config.port)
        ready = threading.Event()
        self._server = _Server(
            _uvicorn_config(self.state, log_config=None), self.state, on_started=ready.set
        )
        self._thread = threading.Thread(target=self._run, args=(ready,), name="llmsim", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            self.stop()
            raise TimeoutError(f"llmsim did not start within {timeout}s")
        if not self._server.started:
            error = self._error
            self.stop()
            raise RuntimeError("llmsim failed to start") from error
        self._url = _url(self.config.host, self._sock)
        return self

    def _run(self, ready: threading.Event) -> None:
        assert self._server is not None and self._sock is not None
        try:
            asyncio.run(self._server.serve(sockets=[self._sock]))
        except BaseException as exc:  # surfaced by start()
            self._error = exc
        finally:
            ready.set()  # unblock start() if serving ended before it began

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving; hanging and sleeping requests are cut short."""
        if self._server is not None:
            self.state.begin_shutdown()
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        self._cleanup()

    def _cleanup(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
        self._sock = None
        self._server = None
        self._thread = None
        self._url = None

    def __enter__(self) -> SimServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- admin (same effect as the /admin endpoints) -----------------------------------------
    def add_faults(
        self,
        kind: FaultKind | str,
        *,
        model: str = "*",
        count: int = 1,
        retry_after_s: float = 1.0,
        after_chunks: int = 2,
        hang_s: float = 900.0,
    ) -> None:
        """The next ``count`` requests to ``model`` fail with ``kind`` (FIFO per model)."""
        fault = ScriptedFault(
            model=model,
            kind=FaultKind(kind),
            count=count,
            retry_after_s=retry_after_s,
            after_chunks=after_chunks,
            hang_s=hang_s,
        )
        self.state.add_faults(scripted=[fault])

    def set_fault_rules(
        self, rules: list[FaultRule] | None = None, *, profile: str | None = None
    ) -> None:
        """Replace the probabilistic rules with a profile's and/or ``rules``."""
        self.state.add_faults(rules=rules if rules is not None else [], profile=profile)

    def clear_faults(self) -> None:
        self.state.clear_faults()

    def faults(self) -> dict[str, Any]:
        return self.state.faults_view()

    def add_canned_response(
        self, match: str, content: str, *, model: str | None = None, times: int | None = None
    ) -> None:
        """Reply ``content`` whenever the last user message contains ``match``."""
        self.state.add_canned(
            CannedResponse(match=match, content=content, model=model, times=times)
        )

    def clear_canned_responses(self) -> None:
        self.state.clear_canned()

    def configure(self, **changes: Any) -> dict[str, Any]:
        """Live config: seed, latency_scale, fixed_latency_s, min/max_output_tokens,
        stream_chunk_tokens, prompt_cache."""
        return self.state.configure(**ConfigUpdate.model_validate(changes).changes())

    def stats(self) -> dict[str, Any]:
        return self.state.stats()

    def requests(self) -> list[RequestRecord]:
        """Every request to a known model since the last reset, oldest first: arrival time,
        conversation hash, fault and Retry-After (see llmsim.state.RequestRecord)."""
        return self.state.requests()

    def batch_submissions(self) -> list[Submission]:
        """Every batch created through either batch API since the last reset, oldest first."""
        return self.state.batches.submissions()

    def reset(self) -> None:
        """Counters, stats and prompt cache cleared; faults and canned responses back to
        what the server started with."""
        self.state.reset()


def build_config(
    *,
    host: str = "127.0.0.1",
    port: int = 8299,
    profile: str = "none",
    seed: int = 0,
    latency_scale: float = 1.0,
    profile_file: str | Path | None = None,
    **extra: Any,
) -> SimConfig:
    faults = load_profile_file(profile_file) if profile_file else FaultProfile()
    return SimConfig(
        host=host,
        port=port,
        profile=profile,
        seed=seed,
        latency_scale=latency_scale,
        faults=faults,
        **extra,
    )


def serve(
    host: str = "127.0.0.1",
    port: int = 8299,
    profile: str = "none",
    seed: int = 0,
    latency_scale: float = 1.0,
    profile_file: str | Path | None = None,
    *,
    fixed_latency_s: float | None = None,
    log_level: str = "info",
    access_log: bool = True,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve in the foreground until SIGINT/SIGTERM. ``on_ready(url)`` runs once the port
    accepts connections (``port=0`` picks a free one)."""
    config = build_config(
        host=host,
        port=port,
        profile=profile,
        seed=seed,
        latency_scale=latency_scale,
        profile_file=profile_file,
        fixed_latency_s=fixed_latency_s,
        log_level=log_level,
        access_log=access_log,
    )
    state = SimState(config)
    sock = _bind(host, port)

    def started() -> None:
        if on_ready is not None:
            on_ready(_url(host, sock))

    uv_config = _uvicorn_config(state, log_config=uvicorn.config.LOGGING_CONFIG)
    server = _Server(uv_config, state, on_started=started)
    try:
        asyncio.run(server.serve(sockets=[sock]))
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
