"""Record the replay test's histories: ``python -m tests.replay.record [NAME ...]``.

Runs each scenario on a throwaway stack (fresh dev server, scratch database, simulator) and writes
the workflow's history as JSON under tests/replay/histories/.
"""

from __future__ import annotations

import asyncio
import sys

from devstack.ephemeral import ephemeral_stack
from tests.replay.scenarios import SCENARIOS
from tests.replay.test_replay import HISTORIES


async def record(names: list[str]) -> None:
    # Recorded unencrypted: the files are fixtures read in code review, and replaying them with
    # keel's encrypting converter proves pre-encryption histories still replay.
    unencrypted = {"KEEL_ENCRYPTION": "off"}
    async with ephemeral_stack(queues=("interactive", "batch"), extra_env=unencrypted) as stack:
        for name in names:
            stack.simulator.reset()
            handle = await SCENARIOS[name](stack.client, stack.settings, stack.simulator)
            history = await handle.fetch_history()
            (HISTORIES / f"{name}.json").write_text(history.to_json())
            print(f"recorded {name}: {len(history.events)} events")


if __name__ == "__main__":
    asyncio.run(record(sys.argv[1:] or sorted(SCENARIOS)))
