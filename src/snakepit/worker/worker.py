"""A live worker: one OS process, one reader task, the calls in flight on it.

``run_worker`` is the worker's node in the supervision tree. It spawns the process,
runs the handshake, reports the :class:`Worker` through ``task_status.started`` and
then reads frames until the process goes away; its ``finally`` runs the shutdown ladder
shielded, so leaving it by any route leaves no process behind.
"""

from __future__ import annotations

import collections
import enum
import itertools
import logging
import math
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import outcome
import trio

from snakepit.config import PoolConfig
from snakepit.errors import (
    PoolClosed,
    ProtocolError,
    SnakepitError,
    WorkerCrashed,
    WorkerStartupError,
    WorkerTimeout,
)
from snakepit.process.launch import (
    OsProcess,
    bridge_pythonpath,
    host_environment,
    python_argv,
    spawn,
)
from snakepit.process.shutdown import shutdown_ladder
from snakepit.protocol import wire
from snakepit.protocol.codecs import JSON, Codec, available_codecs, get_codec
from snakepit.protocol.framing import FrameDecoder, encode_frame
from snakepit.protocol.messages import (
    Call,
    Cancel,
    Chunk,
    Credit,
    End,
    Error,
    Hello,
    Message,
    Progress,
    Result,
    Shutdown,
    Welcome,
    from_wire,
    to_wire,
)
from snakepit.worker.calls import ChunkBuffer, Pending, ProgressCallback, error_from_wire

log = logging.getLogger("snakepit.worker")
stderr_log = logging.getLogger("snakepit.worker.stderr")

_READ_SIZE = 1 << 20
_STDERR_TAIL_LINES = 40
# Reads handled back to back before the reader yields to let callers run.
_READS_PER_YIELD = 8


class WorkerState(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"
    DEAD = "dead"


class Worker:
    """The host's handle on one worker process.

    The pool's dispatcher hands a caller one unit of the worker's ``capacity`` (its
    declared concurrency); the unit comes back through ``release`` when the worker
    answers that call -- not when the caller stops waiting, so a worker never has more
    calls than it declared.
    """

    def __init__(self, worker_id: str, process: OsProcess, config: PoolConfig,
                 release: Callable[[Worker], None]) -> None:
        self.id = worker_id
        self.process = process
        self.pid = process.pid
        self.config = config
        self.state = WorkerState.STARTING
        self.capacity = 1
        self.reserved = 0
        """Capacity units handed out by the dispatcher and not yet released."""
        self.calls_served = 0
        self.welcome: Welcome | None = None
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=_STDERR_TAIL_LINES)
        self._release = release
        self._codec: Codec = JSON
        self._decoder = FrameDecoder(config.max_frame_size)
        self._inflight: dict[int, Pending] = {}
        self._ids = itertools.count(1)
        self._unsent = bytearray()
        self._unsent_lot = trio.lowlevel.ParkingLot()
        self._nursery: trio.Nursery | None = None
        self._end_reason: SnakepitError | None = None
        self._shutdown_sent = False
        self.killed_on_purpose = False
        """Set when the host killed the worker over a call (timeout, cancel), not a fault."""

    # -- state ---------------------------------------------------------------------
    @property
    def accepting(self) -> bool:
        """Whether new calls may be sent to this worker."""
        return self.state is WorkerState.READY

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    # -- writing -------------------------------------------------------------------
    def _send(self, message: Message) -> None:
        """Write one frame now, or queue it behind bytes the pipe has not taken yet.

        Synchronous on purpose: a write to a pipe with room costs one syscall and no
        task switch (~10 µs each, DESIGN.md); only a full pipe involves the flusher.
        """
        frame = encode_frame(self._codec.encode(to_wire(message)), self.config.max_frame_size)
        if self._unsent:
            self._unsent += frame
            return
        try:
            written = os.write(self.process.stdin, frame)
        except BlockingIOError:
            written = 0
        except OSError:  # the worker is gone; the reader will see EOF and report it
            return
        if written < len(frame):
            self._unsent += frame[written:]
            self._unsent_lot.unpark_all()

    async def _flush_unsent(self) -> None:
        fd = self.process.stdin
        while True:
            if not self._unsent:
                await self._unsent_lot.park()
                continue
            await trio.lowlevel.wait_writable(fd)
            try:
                written = os.write(fd, self._unsent)
            except BlockingIOError:
                continue
            except OSError:
                self._unsent.clear()
                return
            del self._unsent[:written]

    # -- reading -------------------------------------------------------------------
    async def _read_payloads(self) -> list[bytes] | None:
        """Wait for data and return every complete frame in it; ``None`` at EOF."""
        fd = self.process.stdout
        while True:
            await trio.lowlevel.wait_readable(fd)
            try:
                data = os.read(fd, _READ_SIZE)
            except BlockingIOError:
                continue
            if not data:
                return None
            payloads = self._decoder.feed(data)
            if payloads:
                return payloads

    async def _read_loop(self) -> None:
        """Route every frame until EOF; raises ProtocolError on a bad frame."""
        fd = self.process.stdout
        decode, decoder = self._codec.decode, self._decoder
        reads = 0
        while True:
            try:
                data = os.read(fd, _READ_SIZE)
            except BlockingIOError:
                reads = 0
                await trio.lowlevel.wait_readable(fd)
                continue
            if not data:
                return
            for payload in decoder.feed(data):
                self._on_message(from_wire(decode(payload)))
            reads += 1
            if reads >= _READS_PER_YIELD:
                reads = 0
                await trio.lowlevel.checkpoint()

    def _on_message(self, message: Message) -> None:
        if isinstance(message, Result):
            self._finish(message.id, outcome.Value(message.value))
        elif isinstance(message, Error):
            if message.id is None:
                raise ProtocolError(f"worker {self.id} reported: {message.message}")
            self._finish(message.id, outcome.Error(error_from_wire(message)))
        elif isinstance(message, Chunk):
            pending = self._lookup(message.id)
            if pending.stream is None:
                raise ProtocolError(f"chunk for call {message.id}, which is not a stream")
            if not pending.abandoned:
                pending.stream.push(message.value)
        elif isinstance(message, End):
            self._finish(message.id, outcome.Value(None))
        elif isinstance(message, Progress):
            pending = self._lookup(message.id)
            if pending.on_progress is not None and not pending.abandoned:
                try:
                    pending.on_progress(message.done, message.total, message.message)
                except Exception:
                    log.exception("on_progress callback of call %d raised", message.id)
        else:
            raise ProtocolError(f"unexpected {type(message).__name__} from worker {self.id}")

    def _lookup(self, call_id: int) -> Pending:
        pending = self._inflight.get(call_id)
        if pending is None:
            raise ProtocolError(f"worker {self.id} answered unknown call id {call_id}")
        return pending

    def _finish(self, call_id: int, answer: outcome.Outcome[Any]) -> None:
        pending = self._lookup(call_id)
        del self._inflight[call_id]
        self.calls_served += 1
        pending.settle(answer)
        self._release(self)

    # -- calls ---------------------------------------------------------------------
    def start_call(self, command: str, args: Any, *, deadline: float,
                   session_id: str | None = None, window: int | None = None) -> Pending:
        """Send a call on a capacity unit the caller holds; returns its :class:`Pending`.

        Raises:
            PayloadError: the arguments cannot be encoded or are too large; nothing was
                sent and the capacity unit has been returned.
        """
        call_id = next(self._ids)
        # The worker gets the tighter of the call's deadline and any enclosing scope's.
        deadline = min(deadline, trio.current_effective_deadline())
        wall_deadline = None
        if not math.isinf(deadline):
            wall_deadline = time.time() + (deadline - trio.current_time())
        try:
            self._send(Call(call_id, command, args, session_id, wall_deadline, window))
        except SnakepitError:  # PayloadError: unencodable or oversized
            self._release(self)
            raise
        pending = Pending(call_id, command)
        if window is not None:
            pending.stream = ChunkBuffer()
        self._inflight[call_id] = pending
        return pending

    async def call(self, command: str, args: Any, *, deadline: float,
                   session_id: str | None = None,
                   on_progress: ProgressCallback | None = None) -> Any:
        """Run one call on a capacity unit the caller holds and return its result."""
        pending = self.start_call(command, args, deadline=deadline, session_id=session_id)
        pending.on_progress = on_progress
        if math.isinf(deadline):  # no scope to enter and leave: ~8 µs a call saved
            return await self._wait_answer(pending)
        with trio.CancelScope(deadline=deadline):
            return await self._wait_answer(pending)
        raise WorkerTimeout(f"call {command!r} on worker {self.id} passed its deadline")

    async def _wait_answer(self, pending: Pending) -> Any:
        try:
            return await pending.wait()
        except BaseException:  # cancelled (deadline or caller): tell the worker to stop
            if not pending.answered:
                self.abandon(pending)
            raise

    def grant_credit(self, pending: Pending, n: int) -> None:
        """Let the worker send ``n`` more chunks of a streaming call."""
        if not pending.answered:
            self._send(Credit(pending.id, n))

    def abandon(self, pending: Pending) -> None:
        """The caller stopped waiting: ask the worker to stop, kill it if it will not.

        The call keeps its capacity unit until the worker answers, and that answer is
        discarded. A worker that does not answer within ``cancel_grace`` is killed,
        since its state is then unknown.
        """
        if pending.abandoned or pending.answered:
            return
        pending.abandoned = True
        pending.task = None
        if not self.accepting and self.state is not WorkerState.STOPPING:
            return
        if self.config.cancel_grace == 0:
            self.kill(f"call {pending.command!r} was cancelled (cancel_grace is 0)",
                      on_purpose=True)
            return
        self._send(Cancel(pending.id))
        pending.settled = trio.Event()
        try:
            if self._nursery is None:
                raise RuntimeError("no nursery")
            self._nursery.start_soon(self._cancel_watchdog, pending)
        except RuntimeError:
            # The worker's own tasks are already ending (the pool is being torn down
            # around us): nobody is left to watch the grace period, so do not wait.
            self.kill("cancelled while the worker was shutting down", on_purpose=True)

    async def _cancel_watchdog(self, pending: Pending) -> None:
        assert pending.settled is not None
        with trio.move_on_after(self.config.cancel_grace):
            await pending.settled.wait()
            return
        self.kill(f"call {pending.command!r} did not stop within cancel_grace "
                  f"({self.config.cancel_grace}s) after it was cancelled", on_purpose=True)

    # -- ending --------------------------------------------------------------------
    def kill(self, reason: str, *, on_purpose: bool = False) -> None:
        """Kill the process group now; calls in flight fail with WorkerCrashed(reason).

        ``on_purpose`` marks a kill over a call that would not stop (not a worker fault),
        which the supervisor does not count against the restart intensity.
        """
        if self.state is WorkerState.DEAD:
            return
        self.killed_on_purpose = self.killed_on_purpose or on_purpose
        log.warning("killing worker %s (pid %d): %s", self.id, self.pid, reason)
        self.state = WorkerState.STOPPING
        if self._end_reason is None:
            self._end_reason = WorkerCrashed(f"worker {self.id} was killed: {reason}")
        self.process.signal_group(signal.SIGKILL)

    def request_shutdown(self) -> None:
        """Send the shutdown frame: finish what is running, take nothing new, exit."""
        if self.state is WorkerState.READY or self.state is WorkerState.STARTING:
            self.state = WorkerState.STOPPING
        if not self._shutdown_sent and self.state is not WorkerState.DEAD:
            self._shutdown_sent = True
            self._end_reason = self._end_reason or PoolClosed("the pool is shutting down")
            self._send(Shutdown())

    def _fail_all(self, error: SnakepitError) -> None:
        pending_calls = list(self._inflight.values())
        self._inflight.clear()
        for pending in pending_calls:
            pending.settle(outcome.Error(error))

    # -- stderr ----------------------------------------------------------------------
    def _take_stderr(self, data: bytes, partial: bytearray) -> None:
        partial += data
        *lines, rest = partial.split(b"\n")
        partial[:] = rest
        for raw in lines:
            line = raw.decode("utf-8", "replace").rstrip()
            self.stderr_tail.append(line)
            stderr_log.info("[%s] %s", self.id, line, extra={"worker_id": self.id})

    async def _pump_stderr(self) -> None:
        fd = self.process.stderr
        partial = bytearray()
        while True:
            await trio.lowlevel.wait_readable(fd)
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                continue
            if not data:
                break
            self._take_stderr(data, partial)
        if partial:
            self._take_stderr(b"\n", partial)

    def drain_stderr(self) -> str:
        """Read whatever stderr holds right now (no waiting); return the recent tail."""
        partial = bytearray()
        while self.process.stderr >= 0:
            try:
                data = os.read(self.process.stderr, 65536)
            except (BlockingIOError, OSError):
                break
            if not data:
                break
            self._take_stderr(data, partial)
        if partial:
            self._take_stderr(b"\n", partial)
        return "\n".join(self.stderr_tail)

    # -- handshake -------------------------------------------------------------------
    def _offered_codecs(self) -> list[str]:
        if self.config.codec == "auto":
            return available_codecs()
        return [self.config.codec]

    async def _handshake(self) -> None:
        hello = Hello(wire.PROTOCOL_VERSION, self._offered_codecs(), self.config.max_frame_size,
                      self.id)
        self._send(hello)
        payloads = await self._read_payloads()
        if payloads is None:
            raise ProtocolError("the worker exited before its handshake")
        welcome = from_wire(JSON.decode(payloads[0]))
        if isinstance(welcome, Error):
            raise ProtocolError(f"the worker refused the handshake: {welcome.message}")
        if not isinstance(welcome, Welcome):
            raise ProtocolError(f"expected a welcome, got {type(welcome).__name__}")
        if welcome.codec not in self._offered_codecs():
            raise ProtocolError(f"worker chose codec {welcome.codec!r}, which was not offered")
        if welcome.version != wire.PROTOCOL_VERSION:
            raise ProtocolError(f"worker speaks protocol {welcome.version}, "
                                f"host speaks {wire.PROTOCOL_VERSION}")
        if len(payloads) > 1:
            raise ProtocolError("worker sent frames before the handshake completed")
        self.welcome = welcome
        self._codec = get_codec(welcome.codec)
        self.capacity = max(1, welcome.concurrency)
        self.state = WorkerState.READY

    async def _start(self) -> None:
        try:
            with trio.fail_after(self.config.startup_timeout):
                await self._handshake()
        except (ProtocolError, trio.TooSlowError) as exc:
            if isinstance(exc, trio.TooSlowError):
                reason = f"no handshake within startup_timeout ({self.config.startup_timeout}s)"
                self.process.signal_group(signal.SIGKILL)
            else:
                reason = str(exc)
            with trio.move_on_after(1.0):  # let a dying worker finish writing its traceback
                await self.process.wait_exit()
            raise WorkerStartupError(f"worker {self.id} failed to start: {reason}",
                                     self.drain_stderr()) from None

    async def _serve(self) -> None:
        """Route answers until the process goes away, then fail what is left in flight."""
        try:
            await self._read_loop()
        except ProtocolError as exc:
            self.kill(f"protocol error: {exc}")
            self._end_reason = exc
        if self.state is WorkerState.READY:
            self.state = WorkerState.STOPPING
        with trio.move_on_after(self.config.kill_timeout):
            await self.process.wait_exit()  # EOF usually comes a moment before the exit
        code = await shutdown_ladder(self.process, request_shutdown=None, grace=0,
                                     kill_timeout=self.config.kill_timeout)
        self.state = WorkerState.DEAD
        self._fail_all(self._end_reason or WorkerCrashed(
            f"worker {self.id} (pid {self.pid}) died", exit_code=code))


def worker_argv(config: PoolConfig) -> list[str]:
    """The command line that starts one worker of ``config``."""
    if config.command is not None:
        return list(config.command)
    return python_argv(config.python, config.handler)


def worker_environment(config: PoolConfig) -> dict[str, str]:
    env = host_environment(config.env)
    if config.command is None:
        extra = bridge_pythonpath(config.python)
        if extra is not None:
            env["PYTHONPATH"] = os.pathsep.join(p for p in (extra, env.get("PYTHONPATH")) if p)
    return env


async def run_worker(config: PoolConfig, worker_id: str, release: Callable[[Worker], None],
                     on_ready: Callable[[Worker], None]) -> Worker:
    """Run one worker from spawn to reaped exit; the node under a supervisor slot.

    Calls ``on_ready`` with the :class:`Worker` once its handshake is done; returns it
    once its process has exited and every call in flight on it has been answered or
    failed. (A callback rather than ``task_status``: the slot runs workers one after
    another in its own task, so no nursery -- and no exception group -- sits between.)

    Raises:
        WorkerStartupError: the process could not be started or did not handshake.
    """
    process = spawn(worker_argv(config), env=worker_environment(config), cwd=config.cwd)
    worker = Worker(worker_id, process, config, release)
    startup_error: WorkerStartupError | None = None
    try:
        async with trio.open_nursery() as nursery:
            worker._nursery = nursery
            nursery.start_soon(worker._pump_stderr)
            nursery.start_soon(worker._flush_unsent)
            try:
                await worker._start()
            except WorkerStartupError as exc:
                startup_error = exc
                nursery.cancel_scope.cancel()
            else:
                log.debug("worker %s ready (pid %d)", worker_id, process.pid)
                on_ready(worker)
                await worker._serve()
                nursery.cancel_scope.cancel()
        if startup_error is not None:
            raise startup_error
    finally:
        with trio.CancelScope(shield=True):
            if worker.state is not WorkerState.DEAD:
                # a worker that never completed its handshake gets no shutdown frame
                polite = worker.state is not WorkerState.STARTING and not worker._shutdown_sent
                worker.state = WorkerState.STOPPING
                await shutdown_ladder(
                    process,
                    request_shutdown=worker.request_shutdown if polite else None,
                    grace=config.shutdown_grace,
                    kill_timeout=config.kill_timeout,
                )
                worker.state = WorkerState.DEAD
                worker._fail_all(worker._end_reason or PoolClosed("the pool is shutting down"))
            worker.drain_stderr()
            process.close_pipes()
    return worker
