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

Reading and writing frames, the handshake and the heartbeat are :class:`~snakepit.
bridge.wire_end.WireEnd`'s; routing frames and running calls are here.

The wire uses private duplicates of fds 0 and 1. Fd 0 is then pointed at /dev/null and
fd 1 at stderr, so a stray ``print`` (or a C library writing to stdout) cannot corrupt
the wire, and a subprocess a handler spawns does not inherit the wire.
"""

from __future__ import annotations

import os
import select
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from snakepit.bridge.answers import close_quietly, describe_exception
from snakepit.bridge.batch import BatchExpired, run_batch
from snakepit.bridge.context import CallContext, ControlChannel, SerialChannel, ThreadedChannel
from snakepit.bridge.handler import CommandHandler
from snakepit.bridge.hostcalls import HostLink, enter, leave
from snakepit.bridge.process import (
    Terminated,
    die_with_parent,
    install_signal_handlers,
    private_wire_fds,
)
from snakepit.bridge.wire_end import HostGone as _HostGone
from snakepit.bridge.wire_end import WireEnd, _is_number
from snakepit.errors import CallCancelled, ProtocolError
from snakepit.protocol import wire

_STOP = object()


def _field_id(message: dict[str, Any]) -> int:
    """The frame's ``id``, which must be an integer."""
    call_id = message.get("id")
    if type(call_id) is not int:
        raise ProtocolError(f"malformed {message.get(wire.TAG)!r:.20} frame, id must be an "
                            f"integer: {message!r:.200}")
    return call_id


class BridgeServer(WireEnd):
    """Serves one :class:`CommandHandler` over a pair of file descriptors."""

    def __init__(self, handler: CommandHandler, *, read_fd: int, write_fd: int,
                 concurrency: int | None = None) -> None:
        super().__init__(handler, read_fd=read_fd, write_fd=write_fd, concurrency=concurrency)
        handler.bridge = self  # for handlers that need the wire itself (rarely: chaos tests)
        self._channel: ControlChannel = (
            SerialChannel(self.pump) if self.concurrency == 1 else ThreadedChannel(self._changed)
        )
        self._host = HostLink(self.send, self._channel, self.run_call)

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
            window, nest = message.get("window"), message.get("nest")
            batch = message.get("batch")
            if (not isinstance(name, str) or not (nest is None or type(nest) is int)
                    or not (session_id is None or isinstance(session_id, str))
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
                              sessions=self.handler.session_state, host=self._host)
            ctx.batch = batch or 0
            if ctx.expired:
                self._send_error(call_id, wire.KIND_EXPIRED, None,
                                 "the call's deadline passed before the worker received it")
                return
            if self._eof:  # read before the end of the wire: the host is gone anyway
                ctx._cancel()
            self._active[call_id] = ctx
            if nest is not None:  # made by a host tool: runs on the waiting call's thread
                outer = self._active.get(nest)
                if outer is None or outer._refused or not outer._started:
                    ctx._refused = True
                    self._refuse(ctx)
                else:
                    outer._nested.append(ctx)
            elif self.concurrency == 1:
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
        elif tag == wire.HOST_RESULT or tag == wire.HOST_ERROR:
            self._host.answer(message)
        elif tag == wire.PING:
            self.send({wire.TAG: wire.PONG, "id": _field_id(message)})
        elif tag == wire.DROP:
            session_id = message.get("sid")
            if not isinstance(session_id, str):
                raise ProtocolError(f"malformed drop frame: {message!r:.200}")
            try:
                self.handler.end_session(session_id)
            except (_HostGone, Terminated):
                raise
            except BaseException as exc:  # a handler's hook: its fault, not the wire's
                sys.stderr.write(f"snakepit.bridge: end_session({session_id!r}) raised "
                                 f"{describe_exception(exc)['etype']}; the session's state is "
                                 "dropped anyway\n")
                self.handler.session_state.pop(session_id, None)
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
        enter(ctx)
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
                began = time.perf_counter()
                result = cmd(ctx.args, ctx)
                if cmd.streaming and ctx.window is None:  # plain call of a stream: collect
                    self.send({wire.TAG: wire.RESULT, "id": ctx.id, "value": list(result)})
                elif ctx.window is not None:
                    self._stream(ctx, result if cmd.streaming else iter((result,)))
                else:
                    self.send_result(ctx.id, result, began)
            except CallCancelled as exc:
                self._send_error(ctx.id, wire.KIND_CANCELLED, exc)
            except BatchExpired as exc:
                self._send_error(ctx.id, wire.KIND_EXPIRED, None, str(exc))
            except (_HostGone, Terminated):
                raise  # the wire is gone, or SIGTERM/SIGINT: the process ends
            except BaseException as exc:
                # SystemExit and KeyboardInterrupt too: `sys.exit()` in a handler, or
                # argparse in an allowed callable (`json.tool.main`), is that call's
                # error, not the worker's end; only a real exit (os._exit, a signal)
                # is a crash.
                self._send_error(ctx.id, wire.KIND_HANDLER, exc)
        finally:
            leave()
            while ctx._nested:  # its host tool was cut short: they cannot run now
                refused = ctx._nested.popleft()
                refused._refused = True
                self._refuse(refused)
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
            close_quietly(items, reraise=(_HostGone, Terminated))

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
                if self._decoder.failed is not None:
                    raise self._decoder.failed
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
