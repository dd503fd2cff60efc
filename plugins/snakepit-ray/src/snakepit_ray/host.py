"""The host side: the ``ray`` pool kind, and the handle on a worker that runs in an actor.

Every call into Ray goes through :func:`ray_call`: ``trio.to_thread.run_sync`` under one
``CapacityLimiter`` per Trio run. Ray's Python API is synchronous -- even ``.remote()``
may wait on the cluster (exporting a class, registering an actor), ``ray.get`` blocks,
and its async support needs an asyncio loop -- and anything that blocks the Trio thread
stalls every pool's calls, deadlines and heartbeats. The limiter keeps a pool of many
workers starting at once from opening as many threads. Waiting for an actor's answer
holds no thread: the object ref's ``concurrent.futures.Future`` wakes the Trio task
through the run's token.

``ray.init`` itself runs in a thread of its own that lives as long as the process: a
local Ray started for development asks Linux to kill its processes when the *thread*
that started them exits, and Trio's worker threads exit when idle. Off the main thread,
Ray also leaves the host's SIGTERM handling alone.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import secrets
import signal
import socket
import struct
import sys
import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import trio

from snakepit.adapters import LaunchSpec
from snakepit.config import PoolConfig
from snakepit.errors import ConfigError, WorkerStartupError
from snakepit.kinds import BaseRuntime
from snakepit_ray import actor as actor_module
from snakepit_ray.auth import MAC_SIZE, MAGIC, NONCE_SIZE, AuthError, client_answer

log = logging.getLogger("snakepit.ray")

T = TypeVar("T")

THREADS = 8
"""Threads one Trio run may have inside Ray's API at once."""
RELEASE_TIMEOUT = 10.0
"""Seconds to wait for Ray to confirm a killed actor is gone (then a warning)."""

_limiter: trio.lowlevel.RunVar[trio.CapacityLimiter] = trio.lowlevel.RunVar("snakepit_ray")


def limiter() -> trio.CapacityLimiter:
    """The Trio run's limiter for threads calling into Ray."""
    try:
        return _limiter.get()
    except LookupError:
        _limiter.set(trio.CapacityLimiter(THREADS))
        return _limiter.get()


async def ray_call(function: Callable[..., T], *args: Any) -> T:
    """``function(*args)`` -- a call into Ray's API -- in a worker thread."""
    return await trio.to_thread.run_sync(function, *args, limiter=limiter())


async def wait_future(future: concurrent.futures.Future[T]) -> T:
    """The result of ``future`` (an object ref's), without holding a thread meanwhile."""
    if not future.done():
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()

        def wake(_: object) -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(done.set)

        future.add_done_callback(wake)
        await done.wait()
    return future.result()


# -- the driver --------------------------------------------------------------------------
_driver_lock = threading.Lock()


class _NotMainThread(logging.Filter):
    """Drops Ray's warning that it set no SIGTERM handler: on purpose, the host's
    signals stay the host's (Trio's, or the application's)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "SIGTERM handler is not set" not in record.getMessage()


def connect(address: str | None, init_options: Mapping[str, Any] | None = None) -> str:
    """Make this process a Ray driver, once; returns the cluster's GCS address.

    ``address`` None starts a local Ray (development); ``"auto"`` or ``host:port`` joins
    a running cluster. A process that already called ``ray.init`` keeps its connection.
    Blocking: from Trio, call it through :func:`ray_call`.
    """
    import ray

    with _driver_lock:
        if not ray.is_initialized():
            started: concurrent.futures.Future[None] = concurrent.futures.Future()

            def driver() -> None:
                quiet = _NotMainThread()
                ray_log = logging.getLogger("ray._private.worker")
                ray_log.addFilter(quiet)
                try:
                    ray.init(address=address, **dict(init_options or {}))
                except BaseException as exc:
                    started.set_exception(exc)
                    return
                finally:
                    ray_log.removeFilter(quiet)
                started.set_result(None)
                threading.Event().wait()  # a local Ray's processes die with this thread

            threading.Thread(target=driver, name="snakepit-ray-driver", daemon=True).start()
            started.result()
        return str(ray.get_runtime_context().gcs_address)


# -- the pool kind -----------------------------------------------------------------------
def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value >= 0


_OPTIONS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "address": (lambda v: v is None or (isinstance(v, str) and v != ""),
                "must be 'auto', 'host:port', or absent to start a local Ray"),
    "num_cpus": (_number, "must be a number >= 0"),
    "num_gpus": (_number, "must be a number >= 0"),
    "memory": (lambda v: v is None or (_number(v) and v > 0),
               "must be a number of bytes > 0"),
    "resources": (lambda v: isinstance(v, Mapping) and all(
        isinstance(k, str) and _number(n) for k, n in v.items()),
        "must map resource names to numbers >= 0"),
    "runtime_env": (lambda v: v is None or isinstance(v, Mapping),
                    "must be a table (Ray's runtime_env)"),
    "scheduling_strategy": (lambda v: v in ("DEFAULT", "SPREAD"),
                            "must be DEFAULT or SPREAD"),
    "bind": (lambda v: v is None or (isinstance(v, str) and v != ""),
             "must be an address of the node (default: the node's own address)"),
    "python": (lambda v: v is None or (isinstance(v, str) and v != ""),
               "must be the path of the interpreter on the nodes"),
    "placement_timeout": (lambda v: _number(v) and v > 0, "must be a number > 0"),
    "init": (lambda v: isinstance(v, Mapping) and all(isinstance(k, str) for k in v),
             "must be a table of ray.init keyword arguments"),
}
_DEFAULTS: dict[str, Any] = {"address": None, "num_cpus": 1, "num_gpus": 0, "memory": None,
                             "resources": {}, "runtime_env": None,
                             "scheduling_strategy": "DEFAULT", "bind": None, "python": None,
                             "placement_timeout": 60.0, "init": {}}


def check_options(config: PoolConfig) -> dict[str, Any]:
    """The ``ray`` kind's options with their defaults.

    Raises:
        ConfigError: naming every bad option (and settings a Ray pool cannot honour).
    """
    errors = [f"options.{name}: unknown option for kind 'ray' (known: "
              f"{', '.join(sorted(_OPTIONS))})" for name in config.options if name not in _OPTIONS]
    options = {**_DEFAULTS, **config.options}
    errors += [f"options.{name}: {message}" for name, (check, message) in _OPTIONS.items()
               if not check(options[name])]
    if config.memory_limit is not None:
        errors.append("memory_limit: a Ray pool's workers are on other machines, out of "
                      "this host's /proc; use options.memory (Ray's resource) instead")
    if errors:
        raise ConfigError(errors)
    return options


class RayPoolKind:
    """``PoolConfig(kind="ray", options={...})``: each worker in a Ray actor."""

    name = "ray"

    def prepare(self, config: PoolConfig) -> RayRuntime:
        return RayRuntime(config, check_options(config))


_actor_class: Any = None


def actor_class() -> Any:
    """``SnakepitWorker`` as a Ray actor class (threaded: a method may block)."""
    global _actor_class
    if _actor_class is None:
        import ray

        _actor_class = ray.remote(max_concurrency=4)(  # type: ignore[call-overload]
            actor_module.SnakepitWorker)
    return _actor_class


class RayRuntime(BaseRuntime):
    """The ``ray`` kind, running for one pool: places workers, remembers where."""

    def __init__(self, config: PoolConfig, options: dict[str, Any]) -> None:
        self.config = config
        self.options = options
        self.secret = secrets.token_bytes(32)
        """This pool's secret: handed to its actors through Ray, proved on every
        connection to them."""
        self.placed: dict[str, dict[str, Any]] = {}
        self._connected = False
        self._connecting = trio.Lock()

    # -- KindRuntime (environment and exits: BaseRuntime's nothing) ------------------------
    def worker_info(self, worker_id: str) -> Mapping[str, Any]:
        return dict(self.placed.get(worker_id, {}))

    # -- placing workers -------------------------------------------------------------------
    async def ensure_connected(self) -> None:
        async with self._connecting:
            if not self._connected:
                await ray_call(connect, self.options["address"], self.options["init"])
                self._connected = True

    def actor_options(self) -> dict[str, Any]:
        options = self.options
        placement: dict[str, Any] = {
            "num_cpus": options["num_cpus"], "num_gpus": options["num_gpus"],
            "max_restarts": 0,  # a dead worker's replacement is the slot's business
            "scheduling_strategy": options["scheduling_strategy"],
        }
        if options["resources"]:
            placement["resources"] = dict(options["resources"])
        if options["memory"] is not None:
            placement["memory"] = options["memory"]
        if options["runtime_env"] is not None:
            placement["runtime_env"] = dict(options["runtime_env"])
        return placement

    def argv(self, config: PoolConfig, spec: LaunchSpec) -> tuple[list[str], bool]:
        """The command for the node, and whether its first word is to be the actor's own
        interpreter (the bridge under the pool's default ``python``)."""
        argv = list(spec.argv)
        bridge = config.adapter == "python" and config.command is None
        if bridge and self.options["python"] is not None:
            argv[0] = self.options["python"]
            return argv, False
        own = bridge and os.path.abspath(argv[0]) == os.path.abspath(sys.executable)
        return argv, own

    async def open_worker(self, config: PoolConfig, worker_id: str, spec: LaunchSpec,
                          env: Mapping[str, str]) -> RayWorker:
        """Create the slot's actor, connect to it and start the worker (an Opener).

        Raises:
            WorkerStartupError: Ray could not place or start the actor in time, or the
                worker could not be started on its node.
        """
        await self.ensure_connected()
        argv, own_python = self.argv(config, spec)
        cls, options = actor_class(), self.actor_options()
        accept_timeout = config.startup_timeout + self.options["placement_timeout"]

        def create() -> Any:
            return cls.options(**options).remote(self.secret, argv, dict(env),
                                                 spec.cwd or config.cwd, own_python,
                                                 self.options["bind"], accept_timeout)

        handle = await ray_call(create)
        sockets: list[trio.socket.SocketType] = []
        try:
            address_future = await ray_call(lambda: handle.address.remote().future())
            gone_future = await ray_call(lambda: handle.wait_gone.remote().future())
            timeout = self.options["placement_timeout"]
            with trio.move_on_after(timeout) as placing:
                host, port, node_id, actor_pid = await wait_future(address_future)
            if placing.cancelled_caught:
                raise WorkerStartupError(
                    f"worker {worker_id}: Ray placed no actor within placement_timeout "
                    f"({timeout}s); does the cluster have {options['num_cpus']} CPU, "
                    f"{options['num_gpus']} GPU and {dict(self.options['resources'])} free?")
            with trio.fail_after(config.startup_timeout):
                for role in (b"c", b"e", b"w"):
                    sockets.append(await open_channel(host, port, self.secret, role))
                pid = await read_started(sockets[0])
        except BaseException as exc:
            for sock in sockets:
                sock.close()
            with trio.CancelScope(shield=True):
                await ray_call(_kill, handle)
            if isinstance(exc, WorkerStartupError | trio.Cancelled):
                raise
            if isinstance(exc, trio.TooSlowError):
                raise WorkerStartupError(f"worker {worker_id}: its actor did not accept the "
                                         f"connections within startup_timeout") from None
            if isinstance(exc, Exception):
                raise WorkerStartupError(
                    f"worker {worker_id} could not start in its Ray actor: {exc}") from exc
            raise
        self.placed[worker_id] = {"ray_node": host, "ray_node_id": node_id,
                                  "ray_actor": handle._actor_id.hex(), "actor_pid": actor_pid}
        worker = RayWorker(worker_id, handle, pid, sockets[0], sockets[1], sockets[2],
                           config.kill_timeout)
        worker.watch(gone_future)
        log.debug("worker %s on Ray node %s (actor pid %d, worker pid %d)", worker_id, host,
                  actor_pid, pid)
        return worker


def _kill(handle: Any) -> None:
    import ray

    with contextlib.suppress(Exception):
        ray.kill(handle, no_restart=True)


async def open_channel(host: str, port: int, secret: bytes,
                       role: bytes) -> trio.socket.SocketType:
    """Connect to an actor and pass the handshake as ``role``.

    Raises:
        WorkerStartupError: the actor is not there or did not prove the secret.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = trio.socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await sock.connect((host, port))
        greeting = await recv_exactly(sock, len(MAGIC) + NONCE_SIZE)
        answer, expected = client_answer(secret, role, greeting)
        await sock.send(answer)  # small enough for any socket buffer
        if await recv_exactly(sock, MAC_SIZE) != expected:
            raise AuthError("the actor did not prove this pool's secret")
    except (OSError, AuthError) as exc:
        sock.close()
        raise WorkerStartupError(f"cannot open the {role.decode()} connection to the "
                                 f"actor at {host}:{port}: {exc}") from exc
    except BaseException:
        sock.close()
        raise
    return sock


async def recv_exactly(sock: trio.socket.SocketType, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = await sock.recv(size - len(data))
        if not chunk:
            raise AuthError("the actor closed the connection")
        data += chunk
    return bytes(data)


async def read_started(control: trio.socket.SocketType) -> int:
    """The worker's pid, once the actor has started it.

    Raises:
        WorkerStartupError: the actor could not start it.
    """
    kind = await recv_exactly(control, 1)
    if kind == actor_module.STARTED:
        pid: int = struct.unpack("!q", await recv_exactly(control, 8))[0]
        return pid
    if kind == actor_module.FAILED:
        (size,) = struct.unpack("!I", await recv_exactly(control, 4))
        message = (await recv_exactly(control, size)).decode("utf-8", "replace")
        raise WorkerStartupError(message)
    raise AuthError(f"unexpected {kind!r} on the control connection")


# -- the handle ------------------------------------------------------------------------
class RayWorker:
    """The host's handle on a worker in a Ray actor (a ``WorkerProcess``).

    ``stdin`` and ``stdout`` are one TCP socket straight to the worker, ``stderr``
    another; the control connection to the actor carries signals one way and the exit
    status the other. SIGKILL also cuts the wire at once, so the host is done with the
    worker even if its node no longer answers. Exiting releases the actor with
    ``ray.kill``; an actor that dies by itself (its node failed, say) cuts the
    connections, so the worker's calls fail with ``WorkerCrashed`` as for a crash.
    """

    def __init__(self, worker_id: str, handle: Any, pid: int, control: trio.socket.SocketType,
                 stderr: trio.socket.SocketType, wire: trio.socket.SocketType,
                 kill_timeout: float) -> None:
        self.id = worker_id
        self.actor = handle
        self.pid = pid
        self._control, self._stderr, self._wire = control, stderr, wire
        self.stdin = self.stdout = wire.fileno()
        self.stderr = stderr.fileno()
        self._control_fd = control.fileno()
        self._kill_timeout = kill_timeout
        self._report = bytearray()
        self._status: int | None = None
        self._returncode: int | None = None
        self._killed = False
        self._kill_sent = False
        self._exited = False
        self.actor_gone = trio.Event()
        self.death: BaseException | None = None
        """What Ray said when the actor died, if it died by itself."""

    @property
    def returncode(self) -> int | None:
        return self._returncode

    def watch(self, gone: concurrent.futures.Future[Any]) -> None:
        """Learn from ``gone`` (the actor's ``wait_gone``) when the actor dies."""
        token = trio.lowlevel.current_trio_token()

        def died(future: concurrent.futures.Future[Any]) -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(self._actor_died, future.exception())

        gone.add_done_callback(died)

    def _actor_died(self, error: BaseException | None) -> None:
        self.actor_gone.set()
        if not self._kill_sent and not self._exited:
            self.death = error
            log.warning("the Ray actor of worker %s died: %s", self.id, error)
            self._cut(self._wire, self._control)

    @staticmethod
    def _cut(*sockets: trio.socket.SocketType) -> None:
        """End the host's side now: a reader waiting on it sees end of file."""
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    # -- WorkerProcess -----------------------------------------------------------------
    def signal_group(self, signum: int) -> None:
        if self._exited:
            return
        with contextlib.suppress(OSError):  # 2 bytes: a connected socket has room
            os.write(self._control_fd, actor_module.SIGNAL + bytes([signum]))
        if signum == signal.SIGKILL:
            self._killed = True
            self._cut(self._wire)

    async def wait_exit(self) -> None:
        if self._exited:
            return
        if self._killed:  # the actor's report of the kill, if it comes soon; then ray.kill
            with trio.move_on_after(min(1.0, self._kill_timeout)):
                await self._read_report()
        else:
            await self._read_report()
        await self._release()
        self._exited = True

    async def _read_report(self) -> None:
        """Until the actor reports the worker's exit, or the control connection ends."""
        while self._status is None:
            if len(self._report) >= 9 and self._report[:1] == actor_module.EXITED:
                self._status = struct.unpack("!q", self._report[1:9])[0]
                return
            await trio.lowlevel.wait_readable(self._control_fd)
            try:
                data = os.read(self._control_fd, 64)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                return
            self._report += data

    async def _release(self) -> None:
        """``ray.kill`` the actor and wait (bounded) for Ray to confirm it is gone."""
        if not self._kill_sent:
            self._kill_sent = True
            await ray_call(_kill, self.actor)
        with trio.move_on_after(RELEASE_TIMEOUT) as waiting:
            await self.actor_gone.wait()
        if waiting.cancelled_caught:
            log.warning("Ray has not confirmed that the actor of worker %s is gone", self.id)

    def reap(self) -> int:
        if self._returncode is None:
            self._returncode = self._status if self._status is not None else -signal.SIGKILL
        return self._returncode

    def close_pipes(self) -> None:
        for sock in (self._wire, self._stderr, self._control):
            sock.close()  # trio's close tells waiters first (notify_closing)
        self.stdin = self.stdout = self.stderr = self._control_fd = -1


__all__ = ["RayPoolKind", "RayRuntime", "RayWorker", "check_options", "connect", "limiter",
           "ray_call", "wait_future"]
