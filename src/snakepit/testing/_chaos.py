"""ChaosHandler: a worker handler whose commands misbehave on request (standard library
only: workers import it).

Sleep, hang, crash, raise, return huge payloads, spawn children, stream -- so that
applications (and snakepit's own tests) can check how they cope with real failures.
Use it with ``PoolConfig(handler="snakepit.testing:ChaosHandler")``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

from snakepit.bridge import CallCancelled, CallContext, CommandHandler, RetryableError, command

__all__ = ["ChaosHandler"]


class ChaosHandler(CommandHandler):
    """Built-in commands plus commands that fail in every way a worker can."""

    @command
    def pid(self) -> int:
        """The worker's pid."""
        return os.getpid()

    @command
    def sleep(self, args: dict[str, Any], ctx: CallContext) -> float:
        """Sleep ``seconds`` ignoring cancellation (a non-cooperative handler).

        Reports progress 0 when it starts, so a test can tell it is running.
        """
        ctx.progress(0, args["seconds"], "sleeping")
        time.sleep(args["seconds"])
        return float(args["seconds"])

    @command
    def nap(self, args: dict[str, Any], ctx: CallContext) -> float:
        """Sleep ``seconds`` but stop as soon as the call is cancelled (cooperative).

        Reports progress 0 when it starts, so a test can tell it is running.
        """
        ctx.progress(0, args["seconds"], "napping")
        if ctx.wait_cancelled(args["seconds"]):
            raise CallCancelled("nap cancelled")
        return float(args["seconds"])

    @command
    def block_until(self, args: dict[str, Any], ctx: CallContext) -> str:
        """Wait until the file ``path`` exists, then return its text.

        With ``cooperative`` false (the default) it neither looks at the wire nor heeds
        cancellation, as a stuck handler would; with it true it waits with
        ``ctx.wait_cancelled`` and stops (``CallCancelled``) when cancelled. Reports
        progress 0 when it starts, so a test can tell it is running -- and release it
        exactly when it wants, with no timing involved.
        """
        ctx.progress(0, None, "blocked")
        path = args["path"]
        while not os.path.exists(path):
            if not args.get("cooperative"):
                time.sleep(0.01)
            elif ctx.wait_cancelled(0.01):
                raise CallCancelled("block_until cancelled")
        with open(path) as f:
            return f.read()

    @command
    def hold_gil(self, args: dict[str, Any], ctx: CallContext) -> None:
        """Block in native code for ``seconds`` *holding the GIL*, as a stuck extension
        would: no Python thread of this process runs meanwhile."""
        import ctypes

        ctx.progress(0, args["seconds"], "stuck in native code")
        ctypes.PyDLL(None).sleep(int(args["seconds"]))  # PyDLL keeps the GIL

    @command
    def ask_host(self, args: dict[str, Any], ctx: CallContext) -> Any:
        """Call host tool ``tool`` with ``args`` (``ctx.call_host``) and return its result."""
        return ctx.call_host(args["tool"], args.get("args"))

    @command
    def spin(self, seconds: float) -> float:
        """Keep the CPU busy for ``seconds`` (a CPU-bound item, as in the map benchmark's
        items of 10 µs of work); returns ``seconds``."""
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass
        return seconds

    @command
    def crash(self, args: dict[str, Any] | None) -> None:
        """Exit at once with ``code`` (default 1), as a segfaulting extension would."""
        os._exit((args or {}).get("code", 1))

    @command
    def flaky(self, args: dict[str, Any]) -> int:
        """Crash the first ``failures`` times (counted in the file ``path``), then return
        how many crashes it took."""
        crashes, fail = _attempt(args["path"], int(args["failures"]))
        if fail:
            os._exit(1)
        return crashes

    @command
    def transient(self, args: dict[str, Any]) -> int:
        """Raise :class:`~snakepit.bridge.RetryableError` the first ``failures`` times
        (counted in the file ``path``), then return how many it took; with
        ``"marked": false`` raise a plain ``RuntimeError`` instead."""
        failed, fail = _attempt(args["path"], int(args["failures"]))
        if fail:
            if args.get("marked", True):
                raise RetryableError(f"transient failure {failed + 1}")
            raise RuntimeError(f"failure {failed + 1}")
        return failed

    @command
    def getenv(self, args: dict[str, Any]) -> str | None:
        """The worker's environment variable ``name`` (or None)."""
        return os.environ.get(args["name"])

    @command
    def die_with_message(self, args: dict[str, Any]) -> None:
        """Write ``message`` to stderr, then exit with ``code`` (a device fault, say)."""
        sys.stderr.write(args["message"] + "\n")
        sys.stderr.flush()
        os._exit(int(args.get("code", 1)))

    @command
    def kill_self(self, args: dict[str, Any] | None) -> None:
        """Kill this process with ``signal`` (default SIGKILL)."""
        os.kill(os.getpid(), (args or {}).get("signal", signal.SIGKILL))
        time.sleep(10)

    @command("raise")
    def raise_(self, args: dict[str, Any] | None) -> None:
        """Raise ``ValueError(message)``; with ``type`` ``"SystemExit"`` (as
        ``sys.exit(message)`` does), ``"KeyboardInterrupt"`` or ``"GeneratorExit"`` that
        base exception instead: the call's error all the same, never the worker's end."""
        args = args or {}
        message = args.get("message", "chaos")
        base = {"SystemExit": SystemExit, "KeyboardInterrupt": KeyboardInterrupt,
                "GeneratorExit": GeneratorExit}.get(args.get("type", ""))
        if base is not None:
            raise base(message)
        raise ValueError(message)

    @command
    def big(self, args: dict[str, Any]) -> bytes:
        """Return ``size`` bytes."""
        return b"x" * int(args["size"])

    @command
    def spew_stderr(self, args: dict[str, Any]) -> int:
        """Write ``size`` bytes to stderr, ``unit`` (default ``"x"``) over and over, in
        1 MiB writes (a progress bar's output, say, with ``unit="\\r 42%|####  |"``),
        then ``end`` (a line the host's log shows once it has read it all)."""
        unit = str(args.get("unit", "x")).encode()
        size = int(args["size"])
        block = unit * (-(-(1 << 20) // len(unit)))
        left = size
        while left > 0:
            left -= os.write(2, block[:left])
        end = str(args.get("end", "")).encode()
        while end:
            end = end[os.write(2, end):]
        return size

    @command
    def odd_value(self, args: dict[str, Any]) -> Any:
        """Return a value that encodes but that a peer may not decode: ``tuple_key`` (a
        map with a tuple key) or ``nested`` (lists ``depth`` deep)."""
        if args["kind"] == "tuple_key":
            return {(1, 2): "pair"}
        value: Any = 0
        for _ in range(int(args["depth"])):
            value = [value]
        return value

    @command
    def unencodable(self) -> Any:
        """Return a value no codec can encode."""
        return object()

    @command
    def spawn_child(self) -> int:
        """Start a long-lived grandchild (``sleep``) in this worker's process group."""
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
        return child.pid

    @command
    def escape(self) -> int:
        """Start a long-lived process in a session of its own -- out of this worker's
        process group, so the pool's shutdown cannot reach it: a leak, on purpose (it
        still carries the run id in its environment). Returns its pid."""
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"],
                                 start_new_session=True)
        return child.pid

    @command
    def outlive_host(self, args: dict[str, Any], ctx: CallContext) -> None:
        """Give up the parent-death signal, then block for ``seconds``: an orphan-to-be.

        Reports progress once it has done so.
        """
        import ctypes

        ctypes.CDLL(None).prctl(1, 0, 0, 0, 0)  # PR_SET_PDEATHSIG, 0: none
        ctx.progress(0, None, "no longer dies with the host")
        time.sleep(args["seconds"])

    @command
    def ignore_term(self) -> bool:
        """From now on ignore SIGTERM (a worker only SIGKILL can stop)."""
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        return True

    @command
    def print_stdout(self, args: Any) -> str:
        """Print to stdout -- which must not corrupt the wire -- and return ``ok``."""
        print("chatty handler output", args)
        sys.stdout.flush()
        return "ok"

    @command
    def corrupt_wire(self) -> str:
        """Write bytes that are no frame at all onto the wire (the host must replace
        this worker with a ProtocolError, never hang)."""
        with self.bridge._write_lock:
            os.write(self.bridge._write_fd, b"\x00\x00\x00\x08\xc1garbage")
        return "corrupted"

    @command
    def time_left(self, args: Any, ctx: CallContext) -> float | None:
        """Seconds left until the call's deadline, as the worker sees it."""
        return ctx.time_left()

    @command
    def progress(self, args: dict[str, Any], ctx: CallContext) -> int:
        """Report ``steps`` progress events, then return ``steps``."""
        steps = int(args["steps"])
        for done in range(1, steps + 1):
            ctx.progress(done, steps, f"step {done}")
        return steps

    @command
    def count(self, args: dict[str, Any], ctx: CallContext) -> Iterator[int]:
        """Stream the integers ``0 .. n-1``; touch ``marker`` (a path) when closed."""
        marker = args.get("marker")
        try:
            for i in range(int(args["n"])):
                yield i
                if args.get("delay"):
                    time.sleep(args["delay"])
        finally:
            if marker:
                with open(marker, "w") as f:
                    f.write(str(os.getpid()))

    @command
    def blobs(self, args: dict[str, Any]) -> Iterator[bytes]:
        """Stream ``n`` chunks of ``size`` bytes (for throughput measurements)."""
        blob = b"x" * int(args["size"])
        for _ in range(int(args["n"])):
            yield blob

    @command
    def incr(self, args: Any, ctx: CallContext) -> int:
        """Count calls in the session (state kept in the worker): 1, 2, 3..."""
        ctx.session["n"] = ctx.session.get("n", 0) + 1
        return int(ctx.session["n"])

    @command
    def session_ids(self) -> list[str]:
        """Ids of the sessions this worker holds state for."""
        return sorted(self.session_state)

    @command
    def session_counts(self, args: dict[str, Any], ctx: CallContext) -> Iterator[int]:
        """Stream ``n`` increments of the session's counter."""
        for _ in range(int(args["n"])):
            ctx.session["n"] = ctx.session.get("n", 0) + 1
            yield int(ctx.session["n"])

    @command
    def stream_then_crash(self, args: dict[str, Any]) -> Iterator[int]:
        """Stream ``n`` integers, then die."""
        yield from range(int(args["n"]))
        sys.stdout.flush()
        os._exit(7)

    @command
    def stream_unencodable(self, args: dict[str, Any]) -> Iterator[Any]:
        """Stream ``n`` integers, then a value no codec carries, then more."""
        yield from range(int(args["n"]))
        yield {1, 2, 3}
        yield from range(10)

    @command
    def stream_then_raise(self, args: dict[str, Any]) -> Iterator[int]:
        """Stream ``n`` integers, then raise ValueError."""
        yield from range(int(args["n"]))
        raise ValueError("stream broke")


def _attempt(path: str, failures: int) -> tuple[int, bool]:
    """Count one more attempt in the file ``path``: returns the failures so far and
    whether this attempt must fail too (while fewer than ``failures`` have)."""
    try:
        with open(path) as f:
            failed = int(f.read())
    except FileNotFoundError:
        failed = 0
    if failed >= failures:
        return failed, False
    with open(path, "w") as f:
        f.write(str(failed + 1))
    return failed, True


# Its public home, as trio names its classes: what a worker's welcome reports and what
# a config names (``snakepit.testing:ChaosHandler``).
ChaosHandler.__module__ = "snakepit.testing"
