"""The snakepit pytest plugin: the ``snakepit_pool`` fixture.

Registered through the ``pytest11`` entry point, so every pytest run in an environment
where snakepit is installed loads it: it imports nothing but pytest until a test asks
for the fixture. The fixture is async: it needs pytest-trio (trio mode, or tests marked
``@pytest.mark.trio``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from snakepit.testing._fixture import PoolFactory


@pytest.fixture
async def snakepit_pool(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[PoolFactory]:
    """Open snakepit pools for this test; they close after it, and the test fails if
    they left a process, a shared-memory segment or a file descriptor behind.

    A factory: ``pool = await snakepit_pool(config, **overrides)`` opens a pool (any
    number per test). ``snakepit_pool.inject("command", "crash")`` makes the next call
    of ``command`` crash its worker (also ``hang``, ``slow``, ``garbage``,
    ``oversized``; see :class:`snakepit.testing.Faults`). Needs pytest-trio.
    """
    from snakepit.testing._fixture import open_pool_factory

    async with open_pool_factory(tmp_path_factory.mktemp("snakepit-faults")) as factory:
        yield factory
