"""The shutdown ladder: shutdown frame, grace, SIGTERM, SIGKILL, then reap.

Same shape as trio's ``run_process`` cleanup: it runs shielded and every step is
bounded, so cleanup can neither be interrupted by the cancellation that triggered it
nor hang on a worker that ignores everything -- or that SIGKILL cannot end at once.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable

import trio

from snakepit import _realtime as realtime
from snakepit.process.launch import WorkerProcess

log = logging.getLogger("snakepit.process")


async def shutdown_ladder(
    process: WorkerProcess,
    *,
    request_shutdown: Callable[[], None] | None,
    grace: float,
    kill_timeout: float,
) -> int | None:
    """Stop ``process`` and its process group; return its exit status.

    Every step is bounded, the wait after SIGKILL too: the ladder takes at most
    ``grace + 2 * kill_timeout``. A process still there ``kill_timeout`` after SIGKILL
    (in uninterruptible sleep: a GPU driver, a hung NFS mount) is *abandoned*: logged
    with its pid, reaped by a daemon thread whenever it does exit (``abandon()``, when
    the handle has one), and left in the run registry, so that the next pool start or
    ``snakepit cleanup`` deals with it. Leaving the pool never hangs on it.

    Args:
        process: the worker process.
        request_shutdown: sends the wire's shutdown frame (``None`` to skip that step,
            e.g. when it was already sent or the worker is being killed on purpose).
        grace: seconds to wait for a clean exit after the shutdown frame.
        kill_timeout: seconds to wait after SIGTERM before SIGKILL, and after SIGKILL
            before giving up.

    Returns:
        The exit status (negative: the signal), or None for an abandoned process.
    """
    with trio.CancelScope(shield=True):
        steps: list[tuple[Callable[[], None] | None, float]] = [
            (request_shutdown, grace if request_shutdown is not None else 0.0),
            (lambda: process.signal_group(signal.SIGTERM), kill_timeout),
            (lambda: process.signal_group(signal.SIGKILL), kill_timeout),
        ]
        for step, timeout in steps:
            if step is None:
                continue
            step()
            with realtime.move_on_after(timeout):
                await process.wait_exit()
                break
        else:
            log.error("worker pid %d did not exit %.1fs after SIGKILL (uninterruptible "
                      "sleep?); abandoning it: its run registry record stays, for the next "
                      "pool start or `snakepit cleanup`", process.pid, kill_timeout)
            abandon = getattr(process, "abandon", None)
            if callable(abandon):
                abandon()
            return None
    return process.reap()
