"""A worker's life from spawn to reaped exit: the node under a supervisor slot.

``run_worker`` spawns the process (or has ``LaunchSpec.open`` start it elsewhere), runs
the handshake, reports the ready :class:`~snakepit.worker.worker.Worker`, routes its
frames until the process goes away, and in its ``finally`` runs the shutdown ladder
shielded, so leaving it by any route leaves no process behind.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path

import trio

from snakepit import _realtime as realtime
from snakepit import telemetry
from snakepit.adapters import LaunchSpec
from snakepit.config import PoolConfig
from snakepit.errors import PoolClosed, ProtocolError, WorkerCrashed, WorkerStartupError
from snakepit.process.forkserver import Spawner
from snakepit.process.launch import OsProcess, WorkerProcess, host_environment, spawn
from snakepit.process.registry import (
    RUN_ID_ENV,
    RunRegistry,
    default_state_dir,
    registry_for,
)
from snakepit.process.shutdown import shutdown_ladder
from snakepit.protocol import shm, wire
from snakepit.protocol.codecs import JSON, available_codecs, get_codec
from snakepit.protocol.messages import Error, Hello, Welcome, from_wire
from snakepit.worker.worker import Worker, WorkerState

log = logging.getLogger("snakepit.worker")


def registry(config: PoolConfig) -> RunRegistry:
    """The run registry this pool's workers are recorded in."""
    return registry_for(Path(config.state_dir) if config.state_dir else default_state_dir())


def worker_extras(config: PoolConfig, launch: LaunchSpec) -> dict[str, str]:
    """What a worker's environment gets over its machine's: the pool's, adapter's and
    kind's variables, and ours (the run id is inherited by all it starts)."""
    return {**config.env, **launch.env, RUN_ID_ENV: registry(config).run_id,
            wire.ALLOWED_TARGETS_ENV: ",".join(config.allowed_targets)}


def worker_environment(config: PoolConfig, launch: LaunchSpec) -> dict[str, str]:
    """The environment of one local worker: the host's, plus :func:`worker_extras`."""
    return host_environment(worker_extras(config, launch))


def offered_codecs(config: PoolConfig, spoken: tuple[str, ...]) -> list[str]:
    """The codecs the host offers in its hello, most preferred first: the pool's choice,
    or with ``auto`` every codec both the host and the adapter's workers speak."""
    if config.codec != "auto":
        return [config.codec]
    return [codec for codec in available_codecs() if codec in spoken]


async def handshake(worker: Worker, offered: list[str]) -> None:
    """Hello (JSON) out, welcome (JSON) in; then both sides switch to the chosen codec.

    Raises:
        ProtocolError: the worker exited, refused, or answered out of protocol.
    """
    config, connection = worker.config, worker.connection
    # shared memory needs the worker on this machine: a local child, not a remote one
    use_shm = (config.shm_threshold is not None and isinstance(worker.process, OsProcess)
               and shm.available())
    connection.send(Hello(wire.PROTOCOL_VERSION, offered, config.max_frame_size, worker.id,
                          config.heartbeat_interval,
                          config.shm_threshold if use_shm else None, timing=True))
    payloads = await connection.read_payloads()
    if payloads is None:
        raise ProtocolError("the worker exited before its handshake")
    welcome = from_wire(JSON.decode(payloads[0]))
    if isinstance(welcome, Error):
        raise ProtocolError(f"the worker refused the handshake: {welcome.message}")
    if not isinstance(welcome, Welcome):
        raise ProtocolError(f"expected a welcome, got {type(welcome).__name__}")
    if welcome.codec not in offered:
        raise ProtocolError(f"worker chose codec {welcome.codec!r}, which was not offered")
    if welcome.version != wire.PROTOCOL_VERSION:
        raise ProtocolError(f"worker speaks protocol {welcome.version}, "
                            f"host speaks {wire.PROTOCOL_VERSION}")
    if len(payloads) > 1:
        raise ProtocolError("worker sent frames before the handshake completed")
    worker.welcome = welcome
    connection.codec = get_codec(welcome.codec)
    if use_shm and wire.SHM in welcome.capabilities and welcome.codec == "msgpack":
        assert config.shm_threshold is not None
        connection.codec = worker.shared_memory = shm.SharedMemoryCodec(
            config.shm_threshold,
            shm.segment_prefix(registry(config).run_id, os.getpid(), welcome.pid),
            config.max_frame_size)
    worker.capacity = max(1, welcome.concurrency)
    worker.state = WorkerState.READY


async def start(worker: Worker, offered: list[str]) -> None:
    """The handshake within ``startup_timeout``; failures carry the stderr tail.

    Raises:
        WorkerStartupError: no (valid) handshake in time.
    """
    config, process = worker.config, worker.process
    try:
        with realtime.fail_after(config.startup_timeout):
            await handshake(worker, offered)
    except (ProtocolError, trio.TooSlowError) as exc:
        if isinstance(exc, trio.TooSlowError):
            reason = f"no handshake within startup_timeout ({config.startup_timeout}s)"
            process.signal_group(signal.SIGKILL)
        else:
            reason = str(exc)
        with realtime.move_on_after(1.0):  # let a dying worker finish writing its traceback
            await process.wait_exit()
        raise WorkerStartupError(f"worker {worker.id} failed to start: {reason}",
                                 worker.stderr.drain()) from None


async def serve(worker: Worker) -> None:
    """Route the worker's frames until it goes away, then fail what is left in flight."""
    config, process = worker.config, worker.process
    drained = True  # read to EOF: every frame the worker wrote has been acted on
    try:
        await worker.connection.read_forever(worker.on_message, worker.on_result)
    except ProtocolError as exc:
        drained = False
        worker.kill(f"protocol error: {exc}")
        worker.end_reason = exc
    if worker.state is WorkerState.READY:
        worker.state = WorkerState.STOPPING
    with realtime.move_on_after(config.kill_timeout):
        await process.wait_exit()  # EOF usually comes a moment before the exit
    code = await shutdown_ladder(process, request_shutdown=None, grace=0,
                                 kill_timeout=config.kill_timeout)
    worker.state = WorkerState.DEAD
    worker.fail_all(worker.end_reason or WorkerCrashed(
        f"worker {worker.id} (pid {worker.pid}) died", exit_code=code), drained=drained)


async def retire_after(worker: Worker, seconds: float) -> None:
    """Recycle ``worker`` once it has lived ``seconds`` (``worker_ttl``)."""
    await trio.sleep(seconds)
    worker.retire(f"reached worker_ttl ({seconds}s)")


async def run_worker(config: PoolConfig, worker_id: str, release: Callable[[Worker], None],
                     on_ready: Callable[[Worker], None], launch: LaunchSpec,
                     offered: list[str], spawner: Spawner | None = None) -> Worker:
    """Run one worker from spawn to reaped exit.

    Calls ``on_ready`` with the :class:`Worker` once its handshake is done; returns it
    once its process has exited and every call in flight on it has been answered or
    failed. (A callback rather than ``task_status``: the slot runs workers one after
    another in its own task, so no nursery -- and no exception group -- sits between.)
    ``spawner`` starts the process (a fork server's); by default it is started cold.

    Raises:
        WorkerStartupError: the process could not be started or did not handshake.
    """
    local = launch.open is None
    process: WorkerProcess
    if launch.open is None:
        env, cwd = worker_environment(config, launch), launch.cwd or config.cwd
        if spawner is None:
            process = spawn(launch.argv, env=env, cwd=cwd)
        else:  # forked from the pool's template
            process = await spawner(launch.argv, env=env, cwd=cwd)
        registry(config).add(process.pid)
    else:  # elsewhere (a Ray node): the opener places it and sees that none outlives us
        process = await launch.open(config, worker_id, launch, worker_extras(config, launch))
    worker = Worker(worker_id, process, config, release)
    # a write to it that raises (a fault in the host) ends this worker, and only it
    worker.connection.on_write_error = lambda exc: worker.kill(
        f"writing to the worker failed: {exc!r}")
    if telemetry.enabled("worker.started"):
        telemetry.emit("worker.started", {}, {"pool": config.name, "worker": worker_id,
                                              "pid": process.pid})
    startup_error: WorkerStartupError | None = None
    try:
        async with trio.open_nursery() as nursery:
            worker.nursery = nursery
            nursery.start_soon(worker.stderr.pump)
            nursery.start_soon(worker.connection.flush_forever)
            try:
                await start(worker, offered)
            except WorkerStartupError as exc:
                startup_error = exc
                nursery.cancel_scope.cancel()
            else:
                log.debug("worker %s ready (pid %d)", worker_id, process.pid)
                on_ready(worker)
                if config.worker_ttl is not None:
                    nursery.start_soon(retire_after, worker, config.worker_ttl)
                await serve(worker)
                nursery.cancel_scope.cancel()
        if startup_error is not None:
            raise startup_error
    finally:
        with trio.CancelScope(shield=True):
            if worker.state is not WorkerState.DEAD:
                # a worker that never completed its handshake gets no shutdown frame
                polite = worker.state is not WorkerState.STARTING and not worker.shutdown_sent
                worker.state = WorkerState.STOPPING
                await shutdown_ladder(
                    process,
                    request_shutdown=worker.request_shutdown if polite else None,
                    grace=config.shutdown_grace,
                    kill_timeout=config.kill_timeout,
                )
                worker.state = WorkerState.DEAD
                worker.fail_all(worker.end_reason or PoolClosed("the pool is shutting down"))
            worker.stderr.drain()
            worker.connection.close()
            process.close_pipes()
            if worker.shared_memory is not None:
                # what the worker never read, and what it wrote that we never read
                worker.shared_memory.release_all()
                shm.remove_segments(shm.segment_prefix(registry(config).run_id, process.pid))
            if local and not getattr(process, "abandoned", False):
                # an abandoned process (it outlived SIGKILL) keeps its record: the next
                # start or `snakepit cleanup` reaps it
                registry(config).remove(process.pid)
    return worker
