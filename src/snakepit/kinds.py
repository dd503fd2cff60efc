"""Pool kinds: what a pool does around its workers' lives (placement, health of devices).

The ``standard`` kind does nothing. Plugins add kinds -- the GPU pool gives each worker
its own device and keeps a crash barrier -- through the ``snakepit.pool_kinds``
entry-point group (a module or object with a ``POOL_KINDS`` list) or the
``snakepit_pool_kinds`` hook. ``PoolConfig.kind`` selects one; ``PoolConfig.options``
carries its settings.

A kind may also decide *where* workers run: a runtime whose ``opener`` is an
:data:`~snakepit.adapters.Opener` is handed every launch, so the ``ray`` kind runs the
adapter's command on a Ray node instead of as a local child.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import attrs
import trio

from snakepit.adapters import LaunchSpec, Opener
from snakepit.config import PoolConfig
from snakepit.errors import ConfigError

__all__ = ["BaseRuntime", "KindRuntime", "PoolKind", "StandardKind", "apply_kind",
           "complete_runtime", "find_kind"]


class KindRuntime(Protocol):
    """A pool kind, running for one pool.

    Its methods are called on the event loop and must not block (no subprocesses, no
    I/O): keep the state they need cached. Subclass :class:`BaseRuntime` and override
    what the kind needs; a runtime that does not is completed by :func:`complete_runtime`.
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

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Background work for the pool's life (refreshing a GPU's memory readings, say):
        started with ``nursery.start`` once, before any worker, and cancelled when the
        pool closes. Until it calls ``task_status.started()`` the pool waits; an
        exception it raises (``WorkerStartupError``, ``ConfigError``) fails the start."""
        ...

    @property
    def opener(self) -> Opener | None:
        """An :data:`~snakepit.adapters.Opener` that starts workers elsewhere (a Ray
        node), or ``None`` for local children (see :func:`apply_kind`)."""
        ...


def apply_kind(runtime: KindRuntime, spec: LaunchSpec, worker_id: str) -> LaunchSpec:
    """The adapter's ``spec`` for slot ``worker_id`` with what the pool kind adds: its
    environment, and its ``open_worker`` when it has one.

    Raises:
        ConfigError: both the adapter and the kind want to decide where workers run.
    """
    opener = runtime.opener
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

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        task_status.started()  # no background work

    @property
    def opener(self) -> Opener | None:
        return None


class _Completed(BaseRuntime):
    """A plugin's runtime that does not subclass :class:`BaseRuntime`, with the optional
    methods it lacks filled in (so the pool calls them directly)."""

    def __init__(self, runtime: Any) -> None:
        self._runtime = runtime
        self._run = runtime.run if hasattr(runtime, "run") else None
        self._opener: Opener | None = getattr(runtime, "open_worker", None)

    def worker_env(self, worker_id: str) -> Mapping[str, str]:
        env: Mapping[str, str] = self._runtime.worker_env(worker_id)
        return env

    def worker_exited(self, worker_id: str, pid: int, exit_code: int | None,
                      stderr_tail: str) -> None:
        self._runtime.worker_exited(worker_id, pid, exit_code, stderr_tail)

    def worker_info(self, worker_id: str) -> Mapping[str, Any]:
        info: Mapping[str, Any] = self._runtime.worker_info(worker_id)
        return info

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        if self._run is None:
            task_status.started()
        else:
            await self._run(task_status=task_status)

    @property
    def opener(self) -> Opener | None:
        return self._opener


def complete_runtime(runtime: Any) -> KindRuntime:
    """``runtime`` with every optional method, for a plugin's that does not subclass
    :class:`BaseRuntime` (an older one: ``open_worker`` is its opener)."""
    completed: KindRuntime = runtime if isinstance(runtime, BaseRuntime) else _Completed(runtime)
    return completed


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
    from snakepit.plugins import plugin_pool_kinds

    kinds: dict[str, Any] = {"standard": StandardKind(),
                             **{kind.name: kind for kind in plugin_pool_kinds()}}
    if config.kind not in kinds:
        raise ConfigError([f"kind: no pool kind named {config.kind!r}; installed: "
                           f"{', '.join(sorted(kinds))}"])
    kind: PoolKind = kinds[config.kind]
    return kind
