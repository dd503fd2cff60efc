"""Pool kinds: what a pool does around its workers' lives (placement, health of devices).

The ``standard`` kind does nothing. Plugins add kinds -- the GPU pool gives each worker
its own device and keeps a crash barrier -- through the ``snakepit.pool_kinds``
entry-point group (a module or object with a ``POOL_KINDS`` list) or the
``snakepit_pool_kinds`` hook. ``PoolConfig.kind`` selects one; ``PoolConfig.options``
carries its settings.

A kind may also decide *where* workers run: a runtime with an ``open_worker`` method (an
:data:`~snakepit.adapters.Opener`) is handed every launch, so the ``ray`` kind runs the
adapter's command on a Ray node instead of as a local child.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import attrs

from snakepit.adapters import LaunchSpec
from snakepit.config import PoolConfig
from snakepit.errors import ConfigError

__all__ = ["BaseRuntime", "KindRuntime", "PoolKind", "StandardKind", "apply_kind", "find_kind"]


class KindRuntime(Protocol):
    """A pool kind, running for one pool.

    Its methods are called on the event loop and must not block (no subprocesses, no
    I/O): keep the state they need cached. A runtime that must refresh such state (a
    GPU's memory readings) may also define ``async def run(self, *, task_status)``: the
    pool starts it with ``nursery.start`` once, before any worker, and cancels it when
    the pool closes. Until it calls ``task_status.started()`` the pool waits, and an
    exception it raises (``WorkerStartupError``, ``ConfigError``) fails the pool start.
    """

    def worker_env(self, worker_id: str) -> Mapping[str, str]:
        """Environment for the process about to start in slot ``worker_id`` (called
        before every spawn, replacements included: the place to pick a device)."""
        ...

    def worker_exited(self, worker_id: str, pid: int, exit_code: int | None,
                      stderr_tail: str) -> None:
        """The process of slot ``worker_id`` exited (for any reason)."""
        ...

    def worker_info(self, worker_id: str) -> Mapping[str, Any]:
        """Extra facts about the slot for ``pool.stats()`` (e.g. its device's memory)."""
        ...

    # Optional: ``async def open_worker(self, config, worker_id, spec, env)``, an
    # :data:`~snakepit.adapters.Opener` that starts the worker elsewhere (see apply_kind).


def apply_kind(runtime: KindRuntime, spec: LaunchSpec, worker_id: str) -> LaunchSpec:
    """The adapter's ``spec`` for slot ``worker_id`` with what the pool kind adds: its
    environment, and its ``open_worker`` when it has one.

    Raises:
        ConfigError: both the adapter and the kind want to decide where workers run.
    """
    opener = getattr(runtime, "open_worker", None)
    if opener is not None and spec.open is not None:
        raise ConfigError(["kind: this pool kind runs workers itself, and so does the "
                           "adapter; pick one of them"])
    return attrs.evolve(spec, env={**spec.env, **runtime.worker_env(worker_id)},
                        open=opener or spec.open)


class PoolKind(Protocol):
    name: str

    def prepare(self, config: PoolConfig) -> KindRuntime:
        """Called once as the pool starts, before any worker, on the event loop: check
        the options and return the runtime; leave slow discovery to its ``run``.

        Raises:
            ConfigError: bad ``options``.
            WorkerStartupError: the pool cannot run here (no GPU, say).
        """
        ...


class BaseRuntime:
    """A :class:`KindRuntime` that adds nothing: no environment, no facts, deaf to exits.

    The standard kind's runtime; a plugin's runtime may subclass it and override only
    what its kind needs.
    """

    def worker_env(self, worker_id: str) -> Mapping[str, str]:
        return {}

    def worker_exited(self, worker_id: str, pid: int, exit_code: int | None,
                      stderr_tail: str) -> None:
        pass

    def worker_info(self, worker_id: str) -> Mapping[str, Any]:
        return {}


class StandardKind:
    """A plain pool."""

    name = "standard"

    def prepare(self, config: PoolConfig) -> KindRuntime:
        return BaseRuntime()


def find_kind(config: PoolConfig) -> PoolKind:
    """The pool kind ``config.kind`` names.

    Raises:
        ConfigError: no installed pool kind has that name.
    """
    from snakepit.plugins import not_found, plugin_pool_kinds

    kinds: dict[str, Any] = {"standard": StandardKind(),
                             **{kind.name: kind for kind in plugin_pool_kinds()}}
    if config.kind not in kinds:  # a plugin that failed to load is named, with why
        raise ConfigError([
            f"kind: {not_found('pool kind', config.kind, 'snakepit.pool_kinds', kinds)}"])
    kind: PoolKind = kinds[config.kind]
    return kind
