"""The ``keel`` command: every way a person starts, steers and inspects keel's workflows."""

from __future__ import annotations

import signal
import sys
from typing import Any, NoReturn

import typer
from rich.markup import escape

from infra.process_exit import exit_code_of, exit_process
from starters.api import api
from starters.approvals import approvals_app, approve, edit, reject
from starters.ask import ask
from starters.audit import audit_app
from starters.batch import batch_app
from starters.budget import budget_app
from starters.chat import chat, session_app
from starters.codec_server import codec_server
from starters.config import config_app
from starters.cost import cost
from starters.demo import demo
from starters.dev import dev_app
from starters.encryption_keys import encryption_keys_app
from starters.output import print_error
from starters.purge import purge
from starters.review import review_app
from starters.reviewers import reviewers_app
from starters.routes import routes
from starters.show import show
from starters.sim import sim
from starters.tokens import token_app
from starters.top import top
from starters.top_level_errors import explain
from starters.worker import worker


class KeelCli(typer.Typer):
    """The ``keel`` entry point (``starters.cli:app``): runs the command, then leaves through
    :func:`exit_process`, never through interpreter finalization, which aborts the process when a
    Temporal core thread is still handing back a result (infra/process_exit.py says why).
    CliRunner tests invoke the click command directly and are not affected."""

    def __call__(self, *args: Any, **kwargs: Any) -> NoReturn:
        try:
            super().__call__(*args, **kwargs)
            code = 0
        except SystemExit as leaving:  # click ends every standalone run this way
            code = exit_code_of(leaving.code)
        except KeyboardInterrupt:
            code = 128 + signal.SIGINT
        except Exception as error:
            explanation = explain(error)
            if explanation is None:  # a bug: shown the way it would have been
                sys.excepthook(type(error), error, error.__traceback__)
            else:  # messages quote exceptions and paths: brackets in them are text, not markup
                message, hint = explanation
                print_error(escape(message), escape(hint) if hint else None)
            code = 1
        exit_process(code)


app = KeelCli(
    name="keel",
    help="Durable LLM workflows on Temporal.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals can hold secrets
)
app.command()(ask)
app.add_typer(audit_app, name="audit")
app.command()(worker)
app.command()(demo)
app.add_typer(config_app, name="config")
app.command()(cost)
app.add_typer(budget_app, name="budget")
app.command()(routes)
app.add_typer(batch_app, name="batch")
app.add_typer(review_app, name="review")
app.add_typer(approvals_app, name="approvals")
app.add_typer(reviewers_app, name="reviewers")
app.command()(approve)
app.command()(reject)
app.command()(edit)
app.command()(show)
app.command()(top)
app.add_typer(dev_app, name="dev")
app.command()(sim)
app.command()(chat)
app.add_typer(session_app, name="session")
app.command()(api)
app.command()(purge)
app.add_typer(token_app, name="token")
app.command(name="codec-server")(codec_server)
app.add_typer(encryption_keys_app, name="encryption-keys")
