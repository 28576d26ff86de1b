"""Fixtures for the dev-stack tests: a throw-away KEEL_HOME on free, non-default ports.

Real processes throughout (Temporal dev server, embedded Postgres); the simulator and the workers
are stand-ins (tests/devstack/fake_parts.py) started through ``up(overrides=…)``. Every process a
test starts is stopped by a finalizer, even when the test fails.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from devstack_helpers import Stack, fake_overrides, make_settings, throwaway_home


@pytest.fixture(scope="module")
def dev_stack() -> Iterator[Stack]:
    """A stack (temporal + embedded postgres + stand-ins), brought up once for the module; each
    test that needs it running calls ``up()`` again (idempotent), so tests also run alone."""
    with throwaway_home() as home:
        settings = make_settings(home)
        dev = Stack(settings, fake_overrides(settings))
        dev.first_up = dev.up()
        yield dev


@pytest.fixture
def scratch_home() -> Iterator[Path]:
    with throwaway_home() as home:
        yield home
