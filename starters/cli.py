"""The ``keel`` command: every way a person starts, steers and inspects keel's workflows."""

from __future__ import annotations

import typer

from starters.ask import ask
from starters.audit import audit
from starters.config import config_app
from starters.demo import demo
from starters.dev import dev_app
from starters.sim import sim
from starters.worker import worker

app = typer.Typer(
    name="keel",
    help="Durable LLM workflows on Temporal.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals can hold secrets
)
app.command()(ask)
app.command()(audit)
app.command()(worker)
app.command()(demo)
app.add_typer(config_app, name="config")
app.add_typer(dev_app, name="dev")
app.command()(sim)
