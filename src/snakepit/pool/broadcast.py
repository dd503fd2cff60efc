"""Running a command on every worker: broadcasts, and set-up that new workers replay.

``pool.broadcast(command, args)`` sends the call to each live worker on a unit of that
worker's capacity (waiting, like a strict session's call, for that worker only) and
collects one outcome per worker. ``pool.setup(command, args)`` records the command,
then broadcasts it; a worker that becomes ready later -- a replacement after a crash,
a recycled one -- runs every recorded set-up, in order, before the dispatcher gives it
its first call (as set-up calls outside its units: nothing else is in flight on it).
A worker whose set-up fails is killed (its slot starts another, with backoff): a
worker that did not run the set-up must not serve calls that rely on it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import trio

from snakepit.errors import SnakepitError, WorkerCrashed
from snakepit.worker.ending import WorkerState
from snakepit.worker.lifecycle import Call, wait_for_answer

if TYPE_CHECKING:
    from snakepit.pool.dispatch import Dispatcher
    from snakepit.worker.worker import Worker

log = logging.getLogger("snakepit.pool")


class Pool(Protocol):
    """What broadcasts need of the :class:`~snakepit.Pool`."""

    _setups: list[tuple[str, Any]]
    _dispatcher: Dispatcher

    def _check_open(self) -> None: ...

    def _deadline(self, timeout: float | None) -> float: ...

    def workers(self) -> list[Worker]: ...

    async def _acquire(self, deadline: float, worker: Worker | None = None) -> Worker: ...

    def _emit(self, event: str, measurements: dict[str, float], **metadata: Any) -> None: ...


async def broadcast(pool: Pool, command: str, args: Any, deadline: float) -> dict[str, Any]:
    """See :meth:`snakepit.Pool.broadcast` (``deadline`` on the Trio clock)."""
    pool._check_open()
    workers = [worker for worker in pool.workers()
               if worker.accepting and worker.seat is not None]
    results: dict[str, Any] = {}

    async def one(worker: Worker) -> None:
        try:
            results[worker.id] = await _on(pool, worker, command, args, deadline)
        except SnakepitError as exc:
            results[worker.id] = exc

    async with trio.open_nursery() as nursery:
        for worker in workers:
            nursery.start_soon(one, worker)
    return results


async def _on(pool: Pool, worker: Worker, command: str, args: Any, deadline: float) -> Any:
    """Run the call on ``worker`` and no other."""
    try:
        acquired = await pool._acquire(deadline, worker)
    except SnakepitError as exc:
        if isinstance(exc, WorkerCrashed) or worker.accepting:
            raise
        raise WorkerCrashed(f"worker {worker.id} (pid {worker.pid}) went away before "
                            f"the broadcast of {command!r} reached it") from exc
    if not acquired.accepting:
        pool._dispatcher.release(acquired)
        raise WorkerCrashed(f"worker {worker.id} (pid {worker.pid}) is going away")
    call: Call[Any] = Call(command, args, deadline, movable=False)
    acquired.send_call(call)
    return await wait_for_answer(call, deadline)


async def run_setup(pool: Pool, command: str, args: Any, deadline: float) -> dict[str, Any]:
    """See :meth:`snakepit.Pool.setup`."""
    pool._check_open()
    pool._setups.append((command, args))
    return await broadcast(pool, command, args, deadline)


async def replay_setups(pool: Pool, worker: Worker,
                        serving: Callable[[Worker], None]) -> None:
    """Run every recorded set-up on the new ``worker``, then let it serve (``serving``).

    The worker counts as starting meanwhile (not ``accepting``): no session binds to
    it and ``wait_ready`` waits for it. Set-ups recorded while it runs these are run
    too, before it serves.
    """
    worker.state = WorkerState.STARTING
    done = 0
    try:
        while done < len(pool._setups):
            command, args = pool._setups[done]
            deadline = pool._deadline(None)
            call: Call[Any] = Call(command, args, deadline, movable=False)
            worker.send_nested(call, None)
            await wait_for_answer(call, deadline)
            done += 1
    except SnakepitError as exc:
        log.warning("worker %s failed its set-up %r: %s", worker.id, pool._setups[done][0], exc)
        pool._emit("worker.setup_failed", {}, worker=worker.id, pid=worker.pid,
                   command=pool._setups[done][0], error=type(exc).__name__)
        worker.kill(f"set-up {pool._setups[done][0]!r} failed: {exc}")
        return
    if worker.state is WorkerState.STARTING:
        worker.state = WorkerState.READY
        serving(worker)
