"""What the pool starts in its slots: the adapter's command, shaped by the pool kind, and
forked from a template when the pool starts warm.

Set up once as the pool starts (:meth:`Launcher.prepare`): leftovers of dead hosts are
reaped, the adapter does its slow set-up, the pool kind is prepared (and its background
work started), and the fork server's template is started when ``warm_start`` asks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import trio

from snakepit.adapters import LaunchSpec, find_adapter
from snakepit.config import PoolConfig
from snakepit.errors import ConfigError
from snakepit.kinds import KindRuntime, apply_kind, complete_runtime, find_kind
from snakepit.pool.warm import check_warm_start, open_fork_server
from snakepit.process.forkserver import ForkServer
from snakepit.process.registry import reap_orphans
from snakepit.worker.run import offered_codecs, registry
from snakepit.worker.worker import Worker


class Launcher:
    """The pool's adapter, pool kind and fork server.

    Raises:
        ConfigError: no such adapter, a codec its workers do not speak, or
            ``warm_start`` with an adapter whose workers cannot be forked.
    """

    def __init__(self, config: PoolConfig) -> None:
        self.config = config
        self.adapter = find_adapter(config)
        if config.codec != "auto" and config.codec not in self.adapter.codecs:
            raise ConfigError([f"codec: the {self.adapter.name} adapter's workers speak "
                               f"{', '.join(self.adapter.codecs)}, not {config.codec}"])
        check_warm_start(config, self.adapter)
        self.kind: KindRuntime | None = None
        self.fork_server: ForkServer | None = None

    async def prepare(self, nursery: trio.Nursery) -> None:
        """Everything before the first worker; background work goes into ``nursery``.

        Raises:
            ConfigError, WorkerStartupError: the adapter, the kind or the template
                cannot run here.
        """
        config = self.config
        await trio.to_thread.run_sync(reap_orphans, registry(config).state_dir)
        await self.adapter.prepare(config)  # slow set-up, off the loop
        self.kind = complete_runtime(find_kind(config).prepare(config))
        await nursery.start(self.kind.run)  # its background work, for the pool's life
        if config.warm_start:
            self.fork_server = await open_fork_server(config, self.adapter, nursery)

    def launch(self, worker_id: str) -> tuple[LaunchSpec, list[str]]:
        """What to start in slot ``worker_id``: the adapter's command, with the pool
        kind's environment for this slot (a GPU, say), and the codecs to offer."""
        spec = self.adapter.launch(self.config, worker_id)
        if self.kind is not None:
            spec = apply_kind(self.kind, spec, worker_id)
        return spec, offered_codecs(self.config, self.adapter.codecs)

    def worker_exited(self, worker: Worker) -> None:
        """Tell the pool kind (a GPU's crash barrier, say)."""
        if self.kind is not None:
            self.kind.worker_exited(worker.id, worker.pid, worker.process.returncode,
                                    "\n".join(worker.stderr.tail))

    def worker_info(self, slot_id: str) -> dict[str, Any]:
        """The pool kind's facts about slot ``slot_id`` (for stats and telemetry)."""
        info: Mapping[str, Any] = self.kind.worker_info(slot_id) if self.kind else {}
        return dict(info)

    @property
    def template_startup(self) -> float | None:
        """Seconds the warm-start template took to start, if the pool has one."""
        return self.fork_server.template_startup if self.fork_server is not None else None
