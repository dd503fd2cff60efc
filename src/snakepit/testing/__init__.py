"""Helpers for testing code that uses snakepit (public).

- :class:`ChaosHandler`: a worker handler whose commands misbehave on request; use it
  with ``PoolConfig(handler="snakepit.testing:ChaosHandler")``.
- :class:`Faults`: inject a crash, hang, slow answer, garbage frame or oversized answer
  into a chosen call of *your own* handler, without writing one.
- :class:`LeakCheck`: what a pool left behind -- processes, shared-memory segments,
  file descriptors.
- :class:`ThreadedPool`: a pool for synchronous code (hypothesis tests and state
  machines), in a Trio run on a helper thread.
- ``snakepit.testing.pytest_plugin``: the pytest plugin (the ``snakepit_pool`` fixture),
  registered through the ``pytest11`` entry point.
- ``snakepit.testing.strategies``: hypothesis strategies (needs hypothesis).

Importing this package needs neither trio nor hypothesis (worker processes import it
for :class:`ChaosHandler`), and it imports each name on first use (PEP 562), so the
pytest plugin, loaded by every pytest run, costs next to nothing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from snakepit.testing._chaos import ChaosHandler
    from snakepit.testing.faults import FAULT_KINDS, Fault, FaultInjector, Faults
    from snakepit.testing.leaks import LeakCheck
    from snakepit.testing.threaded import ThreadedPool

__all__ = ["FAULT_KINDS", "ChaosHandler", "Fault", "FaultInjector", "Faults", "LeakCheck",
           "ThreadedPool"]

_HOME = {"ChaosHandler": "_chaos", "FAULT_KINDS": "faults", "Fault": "faults",
         "FaultInjector": "faults", "Faults": "faults", "LeakCheck": "leaks",
         "ThreadedPool": "threaded"}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
