"""The worker-side server loop (standard library + optional msgpack; never trio).

Two ways to serve, chosen by the handler's ``concurrency``:

- **serial** (``concurrency == 1``, the default): the main thread reads a frame, runs
  the call and writes the answer -- no thread handoff on the hot path, which is what
  keeps a worker near the raw-pipe floor. Cancel and credit frames that arrive while a
  call runs are read when the call looks (``ctx.cancelled``, ``ctx.wait_cancelled``, or
  between chunks of a stream); calls that arrive meanwhile wait in a queue, and the
  wire is polled once more before each of them starts.
- **threaded** (``concurrency > 1``): a reader thread applies control frames at once
  and hands calls to a pool of that many threads.

Either way calls start in the order they arrived, at most ``concurrency`` at once, each
only after an earlier one was answered; and a call is never started once it has been
cancelled or its deadline has passed: it is answered at once as never started
(``cancelled`` or ``expired``). The host relies on both rules to tell a call that waited
in the pipe from one that ran (``QueueTimeout`` versus ``WorkerTimeout``). A call the
host withdraws before it starts is answered ``withdrawn`` and never runs here.

The wire uses private duplicates of fds 0 and 1. Fd 0 is then pointed at /dev/null and
fd 1 at stderr, so a stray ``print`` (or a C library writing to stdout) cannot corrupt
the wire, and a subprocess a handler spawns does not inherit the wire.
"""

from __future__ import annotations

import collections
import fcntl
import math
import os
import queue
import select
import sys
import termios
import threading
import time
import traceback
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from snakepit.bridge.batch import BatchExpired, run_batch
from snakepit.bridge.context import CallContext, ControlChannel, SerialChannel, ThreadedChannel
from snakepit.bridge.handler import CommandHandler
from snakepit.bridge.process import (
    Terminated,
    die_with_parent,
    install_signal_handlers,
    private_wire_fds,
)
from snakepit.errors import CallCancelled, PayloadError, ProtocolError
from snakepit.protocol import shm, wire
from snakepit.protocol.codecs import JSON, Codec, available_codecs, get_codec
from snakepit.protocol.framing import FrameDecoder, encode_frame
from snakepit.protocol.segments import keep_freed_memory

_READ_SIZE = 1 << 20
_STOP = object()


class _HostGone(BaseException):
    """The wire is closed: the host exited or closed the pipe. Exit quietly."""


def _field_id(message: dict[str, Any]) -> int:
    """The frame's ``id``, which must be an integer."""
    call_id = message.get("id")
    if type(call_id) is not int:
        raise ProtocolError(f"malformed {message.get(wire.TAG)!r:.20} frame, id must be an "
                            f"integer: {message!r:.200}")
    return call_id


def _is_number(value: Any) -> bool:
    """An int or float (not a bool), and not NaN."""
    return type(value) in (int, float) and value == value


class BridgeServer:
    """Serves one :class:`CommandHandler` over a pair of file descriptors."""

    def __init__(self, handler: CommandHandler, *, read_fd: int, write_fd: int,
                 concurrency: int | None = None) -> None:
        self.handler = handler
        handler.bridge = self  # for handlers that need the wire itself (rarely: chaos tests)
        self.concurrency = max(1, concurrency or handler.concurrency)
        self._read_fd = read_fd
        self._write_fd = write_fd
        self._codec: Codec = JSON
        self._max_frame_size = wire.DEFAULT_MAX_FRAME_SIZE
        self._decoder = FrameDecoder(self._max_frame_size)
        self._frames: collections.deque[bytes] = collections.deque()
        self._scratch = bytearray(_READ_SIZE)
        self._write_lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._active: dict[int, CallContext] = {}
        self._eof = False
        self._reading = False  # threaded mode: the reader thread is running
        self._stopping = False
        self._protocol_error: ProtocolError | None = None
        self._heartbeat: float | None = None
        # serial mode: calls read while another ran; threaded mode: the hand-off queue
        self._backlog: collections.deque[CallContext] = collections.deque()
        self._calls: queue.SimpleQueue[Any] = queue.SimpleQueue()
        # Threaded mode: held by the reader while it reads and applies a batch of frames,
        # and by a call thread while it decides to start a call; notified after each
        # batch. Serial mode: uncontended.
        self._changed = threading.Condition()
        self._channel: ControlChannel = (
            SerialChannel(self.pump) if self.concurrency == 1 else ThreadedChannel(self._changed)
        )

    # -- wire ----------------------------------------------------------------------
    def _fill(self, timeout: float | None) -> bool:
        """Read what the wire has, waiting up to ``timeout`` (None: forever) for data.

        Returns False when nothing arrived in time. At end of stream (the host is gone)
        it sets ``_eof`` and cancels every call.
        """
        if self._eof:
            return False
        if timeout is not None:
            ready, _, _ = select.select([self._read_fd], [], [], max(timeout, 0.0))
            if not ready:
                return False
        # Into one reused buffer: os.read(fd, 1 MiB) allocates (mmap) and frees a
        # megabyte for every read, three syscalls per call on the hot path.
        count = os.readv(self._read_fd, [self._scratch])
        if not count:
            self._eof = True
            self._cancel_all()
            return False
        with memoryview(self._scratch) as view:
            self._frames.extend(self._decoder.feed(view[:count]))
        return True

    def _unread(self) -> int:
        """Bytes the host has written that this side has not read yet."""
        try:
            count = fcntl.ioctl(self._read_fd, termios.FIONREAD, bytes(4))
        except OSError:
            return 0
        return int.from_bytes(count, sys.byteorder, signed=True)

    def _cancel_all(self) -> None:
        """Cancel every call, running or waiting, and wake those that wait (for credit, or
        in ``ctx.wait_cancelled``): the host is gone or unusable, so nothing may block
        the exit on a frame that will never come."""
        with self._changed:
            for ctx in list(self._active.values()):
                ctx._cancel()
            self._changed.notify_all()

    def _read_frame(self) -> bytes | None:
        """Blocking read of one frame payload; ``None`` at end of stream."""
        while not self._frames:
            if self._eof or (not self._fill(None) and self._eof):
                return None
        return self._frames.popleft()

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        with self._write_lock:
            try:
                while view:
                    view = view[os.write(self._write_fd, view) :]
            except OSError as exc:  # EPIPE and friends: the host is gone
                raise _HostGone from exc

    def send(self, message: dict[str, Any]) -> bool:
        """Encode and send ``message``; a result or chunk that cannot travel becomes an
        error frame for its call instead (returning False: the call is answered), so
        the worker stays in service."""
        try:
            frame = encode_frame(self._codec.encode(message), self._max_frame_size)
        except (PayloadError, ProtocolError) as exc:
            if message.get(wire.TAG) not in (wire.RESULT, wire.CHUNK, wire.RESULTS):
                raise
            self._send_error(message["id"], wire.KIND_PAYLOAD, None,
                             f"result cannot be sent: {exc}", etype="PayloadError")
            return False
        self._write(frame)
        return True

    def _send_error(self, call_id: int | None, kind: str, exc: BaseException | None,
                    message: str = "", etype: str = "") -> None:
        frame: dict[str, Any] = {wire.TAG: wire.ERROR, "id": call_id, "kind": kind,
                                 "etype": etype, "msg": message}
        if exc is not None:
            frame["etype"] = f"{type(exc).__module__}.{type(exc).__qualname__}".removeprefix(
                "builtins.")
            frame["msg"] = str(exc)
            # the three-argument form: worker interpreters older than 3.10 lack the other
            frame["tb"] = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            if getattr(exc, "retryable", False) is True and kind == wire.KIND_HANDLER:
                frame["retryable"] = True  # the handler says: transient, send it again
        self.send(frame)

    # -- handshake -----------------------------------------------------------------
    def handshake(self) -> None:
        """Read the host's hello (JSON), pick a codec, answer with a welcome (JSON)."""
        payload = self._read_frame()
        if payload is None:
            raise _HostGone
        hello = JSON.decode(payload)
        if hello.get(wire.TAG) != wire.HELLO:
            raise ProtocolError(f"expected hello, got {hello.get(wire.TAG)!r}")
        offered = hello.get("codecs") or ["json"]
        if not isinstance(offered, list) or not all(isinstance(n, str) for n in offered):
            raise ProtocolError(f"malformed hello, codecs must be a list: {offered!r:.100}")
        usable = [name for name in offered if name in available_codecs()]
        if not usable:
            raise ProtocolError(
                f"host offers codecs {offered}, this worker has {available_codecs()}"
                " (install msgpack in the worker's environment, or use codec='json')")
        max_frame = hello.get("max_frame_size")
        if type(max_frame) is int and max_frame > 0:
            self._max_frame_size = max_frame
            self._decoder = FrameDecoder(max_frame)
        heartbeat: Any = hello.get("heartbeat")
        if _is_number(heartbeat) and 0 < heartbeat < math.inf:
            self._heartbeat = float(heartbeat)
        threshold = hello.get("shm")
        use_shm = (isinstance(threshold, int) and threshold > 0 and usable[0] == "msgpack"
                   and shm.available())
        handler_type = type(self.handler)
        self._write(encode_frame(JSON.encode({
            wire.TAG: wire.WELCOME,
            "version": wire.PROTOCOL_VERSION,
            "pid": os.getpid(),
            "codec": usable[0],
            "concurrency": self.concurrency,
            "capabilities": [*wire.CAPABILITIES, *([wire.SHM] if use_shm else [])],
            "python": sys.version.split()[0],
            "handler": f"{handler_type.__module__}:{handler_type.__qualname__}",
        }), self._max_frame_size))
        self._codec = get_codec(usable[0])
        if use_shm and isinstance(threshold, int):  # large results go out of band
            prefix = shm.segment_prefix(os.environ.get(shm.RUN_ID_ENV, "0-0"), os.getpid())
            self._codec = shm.SharedMemoryCodec(threshold, prefix, self._max_frame_size,
                                                track=False)
            keep_freed_memory()  # large buffers read out of segments land in warm memory

    # -- routing frames ----------------------------------------------------------------
    def _route_pending(self) -> None:
        """Act on every frame read so far."""
        frames, decode = self._frames, self._codec.decode
        while frames:
            self._route(decode(frames.popleft()))

    def _route(self, message: dict[str, Any]) -> None:
        """Act on one frame from the host.

        Raises:
            ProtocolError: an unknown message type, or a field of the wrong type or
                range (the worker then reports it and exits: the host is broken).
        """
        tag = message.get(wire.TAG)
        if tag == wire.CALL:
            call_id, name = _field_id(message), message.get("cmd")
            session_id, deadline = message.get("sid"), message.get("dl")
            window, batch = message.get("window"), message.get("batch")
            if (not isinstance(name, str) or not (session_id is None or isinstance(session_id, str))
                    or not (deadline is None or _is_number(deadline))
                    or not (window is None or (type(window) is int and window > 0))
                    or not (batch is None or (type(batch) is int and batch > 0 and window is None
                                              and type(message.get("args")) is list
                                              and len(message["args"]) == batch))):
                raise ProtocolError(f"malformed call frame: {message!r:.200}")
            if call_id in self._active:
                raise ProtocolError(f"call id {call_id} is already in use")
            ctx = CallContext(call_id, name, message.get("args"), session_id=session_id,
                              deadline=deadline, window=window,
                              report=self.send, channel=self._channel,
                              sessions=self.handler.session_state)
            ctx.batch = batch or 0
            if ctx.expired:
                self._send_error(call_id, wire.KIND_EXPIRED, None,
                                 "the call's deadline passed before the worker received it")
                return
            if self._eof:  # read before the end of the wire: the host is gone anyway
                ctx._cancel()
            self._active[call_id] = ctx
            if self.concurrency == 1:
                self._backlog.append(ctx)
            else:
                self._calls.put(ctx)
        elif tag == wire.CANCEL:
            target = self._active.get(_field_id(message))
            if target is not None:
                with self._changed:
                    target._cancel()
                    if not (target._started or target._refused):
                        target._refused = True  # still queued: answer now, never run it
                        self._refuse(target)
                    else:
                        self._changed.notify_all()
        elif tag == wire.WITHDRAW:
            target = self._active.get(_field_id(message))
            if target is not None:
                with self._changed:
                    if not (target._started or target._refused):
                        # still queued: it will never run here; the host sends it elsewhere
                        target._refused = True
                        self._active.pop(target.id, None)
                        self.send({wire.TAG: wire.WITHDRAWN, "id": target.id})
        elif tag == wire.CREDIT:
            target = self._active.get(_field_id(message))
            n = message.get("n")
            if type(n) is not int or n < 0:
                raise ProtocolError(f"malformed credit frame: {message!r:.200}")
            if target is not None:
                with self._changed:
                    target._grant(n)
                    self._changed.notify_all()
        elif tag == wire.PING:
            self.send({wire.TAG: wire.PONG, "id": _field_id(message)})
        elif tag == wire.DROP:
            session_id = message.get("sid")
            if not isinstance(session_id, str):
                raise ProtocolError(f"malformed drop frame: {message!r:.200}")
            self.handler.end_session(session_id)
        elif tag == wire.SHUTDOWN:
            self._stopping = True
        else:
            raise ProtocolError(f"unexpected message type {tag!r:.100}")

    def pump(self, timeout: float | None) -> None:
        """Serial mode: read and apply control frames, waiting up to ``timeout``.

        Runs inside handler code (via ``ctx.cancelled``), so a protocol error is kept
        for the serve loop rather than raised into the handler, and every call is
        cancelled: the host is unusable.
        """
        if self._eof or self._protocol_error is not None:
            # No frame will come again, and every call is cancelled, so no caller should
            # be here; one that is anyway waits rather than spins.
            time.sleep(1.0 if timeout is None else max(timeout, 0.0))
            return
        try:
            if self._fill(timeout):
                self._route_pending()
        except ProtocolError as exc:
            self._protocol_error = exc
            self._cancel_all()

    # -- running calls -------------------------------------------------------------
    def _start(self, ctx: CallContext) -> bool:
        """Decide, once, whether ``ctx`` runs now: not when it was already answered, nor
        when it was cancelled or its deadline passed while it waited (it is then
        answered as never started).

        Every cancel frame the host wrote before this moment is applied first: the
        serial loop polls the wire before starting a call that waited; here, in
        threaded mode, the call thread waits until the reader has read and applied all
        there is. The decision is made holding the reader's lock, so a cancel the
        reader applies at the same moment either refuses the call or finds it started
        -- never both, never neither.
        """
        with self._changed:
            if self.concurrency > 1:
                while self._reading and self._unread() > 0:
                    self._changed.wait(0.1)
            if ctx._refused:
                return False
            if not (ctx._cancelled or ctx.expired):
                ctx._started = True
                return True
            ctx._refused = True
        self._refuse(ctx)
        return False

    def _refuse(self, ctx: CallContext) -> None:
        """Answer a call that never started and never will (cancelled or expired)."""
        self._active.pop(ctx.id, None)
        if ctx.expired:
            self._send_error(ctx.id, wire.KIND_EXPIRED, None,
                             "the call's deadline passed before the worker started it")
        else:
            self._send_error(ctx.id, wire.KIND_CANCELLED, None,
                             f"call {ctx.id} ({ctx.command}) was cancelled before it started",
                             etype="CallCancelled")

    def run_call(self, ctx: CallContext) -> None:
        """Run one call and send its answer (result, stream or error)."""
        if not self._start(ctx):
            return
        try:
            cmd = self.handler.lookup(ctx.command)
            if cmd is None:
                self._send_error(ctx.id, wire.KIND_UNKNOWN_COMMAND, None,
                                 f"unknown command {ctx.command!r}", etype="UnknownCommand")
                return
            try:
                if ctx.batch:
                    self.send(run_batch(cmd, ctx))
                    return
                result = cmd(ctx.args, ctx)
                if cmd.streaming and ctx.window is None:  # plain call of a stream: collect
                    self.send({wire.TAG: wire.RESULT, "id": ctx.id, "value": list(result)})
                elif ctx.window is not None:
                    self._stream(ctx, result if cmd.streaming else iter((result,)))
                else:
                    self.send({wire.TAG: wire.RESULT, "id": ctx.id, "value": result})
            except CallCancelled as exc:
                self._send_error(ctx.id, wire.KIND_CANCELLED, exc)
            except BatchExpired as exc:
                self._send_error(ctx.id, wire.KIND_EXPIRED, None, str(exc))
            except Exception as exc:
                self._send_error(ctx.id, wire.KIND_HANDLER, exc)
        finally:
            self._active.pop(ctx.id, None)
            with self._count_lock:  # threaded mode runs several calls at once
                self.handler.calls_served += 1

    def _stream(self, ctx: CallContext, items: Iterator[Any]) -> None:
        """Send ``items`` as chunks, producing each only against credit, then the end."""
        try:
            while True:
                if not ctx._take_credit():
                    raise CallCancelled(f"stream {ctx.id} ({ctx.command}) was cancelled")
                try:
                    item = next(items)
                except StopIteration:
                    break
                if not self.send({wire.TAG: wire.CHUNK, "id": ctx.id, "value": item}):
                    return  # that chunk could not travel: the stream ended with an error
            self.send({wire.TAG: wire.END, "id": ctx.id})
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()  # runs the generator's finally blocks now, not at GC time

    def _serve_serial(self) -> None:
        backlog = self._backlog
        polled = True  # the wire has been read since the last call ran
        while True:
            if not backlog:
                if self._stopping or self._eof:
                    return
                self._fill(None)
                self._route_pending()
                polled = True
                continue
            if not polled:
                # These calls waited while another ran: apply every cancel frame that
                # came meanwhile before starting one (a select per pipelined call).
                while self._fill(0.0):
                    self._route_pending()
                polled = True
                continue
            self.run_call(backlog.popleft())
            polled = False
            if self._protocol_error is not None:
                raise self._protocol_error

    def _serve_threaded(self) -> None:
        self._reading = True
        threading.Thread(target=self._read_forever, name="snakepit-reader", daemon=True).start()
        with ThreadPoolExecutor(self.concurrency, "snakepit-call") as pool:
            try:
                while (ctx := self._calls.get()) is not _STOP:
                    pool.submit(self._run_guarded, ctx)
            except BaseException:  # SIGTERM/SIGINT: stop the calls the pool waits for
                self._cancel_all()
                raise

    def _read_forever(self) -> None:
        """Threaded mode's reader: apply frames as they arrive until EOF or shutdown.

        It waits for data without the lock, then reads and applies a batch holding it
        (see :meth:`_start`).
        """
        try:
            while not (self._stopping or self._eof):
                select.select([self._read_fd], [], [])
                with self._changed:
                    if self._fill(0.0):
                        self._route_pending()
                    self._changed.notify_all()
        except ProtocolError as exc:
            self._protocol_error = exc
            self._report_protocol_error(exc)
        except (_HostGone, OSError):
            pass
        finally:
            with self._changed:
                self._reading = False
                self._changed.notify_all()
            self._calls.put(_STOP)

    def _report_protocol_error(self, exc: ProtocolError) -> None:
        sys.stderr.write(f"snakepit.bridge: protocol error from host: {exc}\n")
        try:
            self._send_error(None, wire.KIND_PROTOCOL, None, str(exc))
        except _HostGone:
            pass

    def serve(self) -> int:
        """Handshake, then serve calls until shutdown, EOF or a signal. Returns the exit code."""
        try:
            self.handshake()
            if self._heartbeat is not None:
                threading.Thread(target=self._beat, name="snakepit-heartbeat",
                                 daemon=True).start()
            self._route_pending()  # frames that came in the same read as the hello
            if self.concurrency == 1:
                self._serve_serial()
            else:
                self._serve_threaded()
                if self._protocol_error is not None:
                    return 2
        except (_HostGone, Terminated):
            return 0
        except ProtocolError as exc:
            self._report_protocol_error(exc)
            return 2
        return 0

    def _beat(self) -> None:
        """Heartbeat thread: proves the process is alive even while a call runs.

        It needs the GIL, so a handler stuck in native code that holds it (or a
        SIGSTOPped process) goes silent, and the host replaces the worker.
        """
        assert self._heartbeat is not None
        frame = encode_frame(self._codec.encode({wire.TAG: wire.BEAT}), self._max_frame_size)
        while True:
            time.sleep(self._heartbeat)
            try:
                self._write(frame)
            except _HostGone:
                return

    def _run_guarded(self, ctx: CallContext) -> None:
        try:
            self.run_call(ctx)
        except _HostGone:
            os._exit(0)


def serve(handler: CommandHandler, *, concurrency: int | None = None) -> int:
    """Serve ``handler`` over this process's stdin/stdout until the host lets go.

    Sets up the process as a snakepit worker: private wire fds, parent-death signal,
    clean exit on SIGTERM/SIGINT. Returns the process exit code.
    """
    die_with_parent()
    install_signal_handlers()
    read_fd, write_fd = private_wire_fds()
    return BridgeServer(handler, read_fd=read_fd, write_fd=write_fd,
                        concurrency=concurrency).serve()
