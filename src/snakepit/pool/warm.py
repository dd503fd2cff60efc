"""Warm start: the pool's fork server, when ``PoolConfig.warm_start`` asks for one."""

from __future__ import annotations

import logging
import sys

import trio

from snakepit.adapters import Adapter
from snakepit.config import PoolConfig
from snakepit.errors import ConfigError
from snakepit.process.forkserver import ForkServer, template_argv
from snakepit.worker.run import registry, worker_environment

log = logging.getLogger("snakepit.pool")


def check_warm_start(config: PoolConfig, adapter: Adapter) -> None:
    """Only the bridge (the python adapter) can be forked from a template.

    Raises:
        ConfigError: ``warm_start`` with another adapter or a ``command``.
    """
    if config.warm_start and adapter.name != "python":
        raise ConfigError([f"warm_start: only the python adapter's workers can be forked "
                           f"from a template, not the {adapter.name} adapter's"])


async def open_fork_server(config: PoolConfig, adapter: Adapter,
                           nursery: trio.Nursery) -> ForkServer | None:
    """Start the pool's template in ``nursery``; ``None`` where forking is unsupported.

    Raises:
        WorkerStartupError: the template could not start (a preload failed to import).
    """
    if not sys.platform.startswith("linux"):
        log.warning("pool %s: warm_start needs Linux; workers start cold", config.name)
        return None
    spec = adapter.launch(config, f"{config.name}-template")
    server = ForkServer(config.name, template_argv(config.python, config.handler,
                                                   config.preload),
                        env=worker_environment(config, spec), cwd=spec.cwd or config.cwd,
                        handler=config.handler, startup_timeout=config.startup_timeout,
                        kill_timeout=config.kill_timeout, registry=registry(config))
    started: ForkServer = await nursery.start(server.run)
    return started
