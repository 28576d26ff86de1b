"""What the commands that change keel's tables share: run the change, then close the engines, and
the ``--by`` option naming who made it (recorded in the audit trail)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import typer

from infra.database import dispose_engines

BY_OPTION = typer.Option(None, "--by", help="Who makes the change (default: your login name).")


def run_then_close_database(coroutine: Coroutine[Any, Any, None]) -> None:
    """Run one command's coroutine; close the engines on the same loop so asyncpg exits cleanly."""

    async def main() -> None:
        try:
            await coroutine
        finally:
            await dispose_engines()

    asyncio.run(main())
