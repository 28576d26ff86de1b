"""``keel ask``: one durable question, answered by the first healthy model in a route."""

from __future__ import annotations

import asyncio
import uuid

import typer
from pydantic import ValidationError
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError

from contracts.llm import FallbackPolicy
from contracts.traffic import BudgetPolicy
from infra.database import dispose_engines, session_factory
from infra.input_limits import (
    InputTooLarge,
    PromptLimits,
    UnstorableText,
    check_model_name,
    check_prompt_with_system,
)
from infra.payload_codec import PayloadDecryptionError
from infra.settings import KeelSettings, get_settings
from infra.temporal_client import connect
from services.asks import LedgerAttempts, ledger_attempts, start_ask
from starters.output import console, fail, workflow_link
from workflows.ask import AskInput, AskOutput


def check_question(
    prompt: str, system: str | None, models: list[str], settings: KeelSettings
) -> None:
    """The prompt, system prompt and model names within keel's limits and storable, or
    InputTooLarge / UnstorableText saying which is not."""
    for name in models:
        check_model_name(name, f"--model {name[:40]!r}")
    check_prompt_with_system(prompt, system, PromptLimits.from_settings(settings), "the prompt")


def print_answer(result: AskOutput, ledger: LedgerAttempts | None = None) -> None:
    answer = result.answer
    console.print(answer.text, markup=False, highlight=False)
    cost = f"${answer.cost_usd:.6f}" if answer.cost_usd is not None else "unknown (unpriced model)"
    # Every metered attempt of every model, not only the answering model's retries.
    attempts = (
        f"attempts {ledger.attempts}"
        + (f" over {len(ledger.models)} models" if len(ledger.models) > 1 else "")
        if ledger is not None
        else f"attempts {answer.attempts} on {answer.model}"
    )
    fell_back = bool(answer.failed_models) and not answer.fallback_used
    console.print(
        f"[dim]model {answer.model} · tokens in {answer.usage.input_tokens} / out "
        f"{answer.usage.output_tokens} · cost {cost} · {attempts}"
        + (" · cached" if answer.cached else "")
        + (" · fallback used" if fell_back else "")
        + (" · FALLBACK RESPONSE" if answer.fallback_used else "")
        + "[/]"
    )
    for model, cause in answer.failed_models:
        console.print(f"[yellow]fell back from {model}: {cause}[/]")


def result_command(settings: KeelSettings, workflow_id: str) -> str:
    """The Temporal CLI command that prints the workflow's result readably: payloads are
    encrypted, so without keel's codec server it would print ciphertext."""
    command = f"temporal workflow result --workflow-id {workflow_id}"
    if not settings.uses_dev_temporal or settings.dev_temporal_port != 7233:
        command += f" --address {settings.effective_temporal_address}"
    if settings.temporal_namespace != "default":
        command += f" --namespace {settings.temporal_namespace}"
    if settings.encryption:
        host = settings.codec_server_host
        shown_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        command += f" --codec-endpoint http://{shown_host}:{settings.codec_server_port}"
        if settings.codec_server_token is not None:
            # The variable, never the token: a command people copy ends up in shell histories.
            command += ' --codec-auth "Bearer $KEEL_CODEC_SERVER_TOKEN"'
    return command


async def _ask(params: AskInput, workflow_id: str, wait: bool) -> None:
    settings = get_settings()
    try:
        client = await connect(settings)
    except ConnectionError as error:
        fail(str(error), "nothing was started")
    handle = await start_ask(client, settings, params, workflow_id)
    console.print(f"[bold]workflow[/] {workflow_id}  {workflow_link(settings, workflow_id)}")
    if not wait:
        console.print(
            f"follow: [cyan]keel show {workflow_id}[/]  · trail: keel audit {workflow_id}"
        )
        console.print(f"answer: [cyan]{result_command(settings, workflow_id)}[/]", soft_wrap=True)
        if settings.encryption:
            console.print(
                "[dim](decrypted by the codec server: keel codec-server, or keel dev up)[/]"
            )
        return
    try:
        result = await handle.result()
    except WorkflowFailureError as error:
        cause = error.cause or error
        hint = f"see what happened: keel show {workflow_id} · keel audit {workflow_id}"
        if isinstance(cause, ApplicationError) and cause.type == PayloadDecryptionError.__name__:
            hint = (
                "the worker that picked the question up holds other encryption keys than this "
                "command: run keel with the worker's home (KEEL_HOME; `keel config show` prints "
                "the home in use) or give both the same KEEL_ENCRYPTION_KEYS"
            )
        fail(str(cause), hint)
    except PayloadDecryptionError as error:  # the answer is encrypted with a key this lacks
        fail(str(error), f"see what happened: keel show {workflow_id}")
    try:
        ledger = await ledger_attempts(session_factory(), workflow_id, handle.result_run_id)
    finally:
        await dispose_engines()
    print_answer(result, ledger)
    console.print(f"[dim]trail: keel audit {workflow_id}[/]")


def ask(
    prompt: str = typer.Argument(..., help="The question."),
    route: str | None = typer.Option(None, help="Named route (see settings.routes)."),
    model: list[str] | None = typer.Option(
        None, "--model", "-m", help="Explicit model chain, in fallback order (repeatable)."
    ),
    system: str | None = typer.Option(None, help="System prompt."),
    max_tokens: int = typer.Option(512, min=1),
    temperature: float | None = typer.Option(None, min=0, max=2),
    tenant: str = typer.Option("default"),
    fallback: FallbackPolicy | None = typer.Option(
        None, help="What to do when every model fails (default from settings)."
    ),
    fallback_response: str | None = typer.Option(None, help="Text for --fallback response."),
    cache: bool = typer.Option(False, help="Answer identical temperature-0 calls from cache."),
    budget_policy: BudgetPolicy | None = typer.Option(
        None, help="When the tenant's budget cannot cover the call (default from settings)."
    ),
    workflow_id: str | None = typer.Option(None, "--id", help="Workflow id (default: generated)."),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Wait for and print the answer."),
) -> None:
    """Ask one question durably; prints the answer, the model, tokens, cost and the workflow id."""
    settings = get_settings()
    if route and model:
        fail("give either --route or --model, not both")
    if route and route not in settings.routes:
        fail(f"unknown route {route!r}", f"configured routes: {', '.join(sorted(settings.routes))}")
    try:
        check_question(prompt, system, model or [], settings)
        params = AskInput(
            prompt=prompt,
            system=system,
            route=route,
            models=model or None,
            max_tokens=max_tokens,
            temperature=temperature,
            tenant=tenant,
            fallback_policy=fallback,
            fallback_response=fallback_response,
            use_cache=cache,
            budget_policy=budget_policy,
        )
    except (InputTooLarge, UnstorableText) as error:
        fail(str(error), "nothing was started")
    except ValidationError as error:
        problem = error.errors()[0]
        fail(f"{'.'.join(map(str, problem['loc']))}: {problem['msg']}", "nothing was started")
    asyncio.run(_ask(params, workflow_id or f"ask-{uuid.uuid4().hex[:12]}", wait))
