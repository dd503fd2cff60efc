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


class Calls(Protocol):
    """What broadcasts need of the pool's :class:`~snakepit.pool.calls.CallPath`."""

    def deadline(self, timeout: float | None) -> float: ...

    async def acquire(self, deadline: float, worker: Worker | None = None) -> Worker: ...


class Broadcasts:
    """A pool's broadcasts and its recorded set-up.

    Args:
        calls: acquires a unit of one worker within a deadline (and checks the gate).
        dispatcher: takes back a unit of a worker that is going away.
        workers: the current worker of every slot.
        emit: the pool's telemetry.
    """

    def __init__(self, calls: Calls, dispatcher: Dispatcher,
                 workers: Callable[[], list[Worker]], emit: Callable[..., None]) -> None:
        self._calls = calls
        self._dispatcher = dispatcher
        self._workers = workers
        self._emit = emit
        self.setups: list[tuple[str, Any]] = []
        """The recorded set-up commands, in order."""

    async def broadcast(self, command: str, args: Any, deadline: float) -> dict[str, Any]:
        """See :meth:`snakepit.Pool.broadcast` (``deadline`` on the Trio clock)."""
        workers = [worker for worker in self._workers()
                   if worker.accepting and worker.seat is not None]
        results: dict[str, Any] = {}

        async def one(worker: Worker) -> None:
            try:
                results[worker.id] = await self._on(worker, command, args, deadline)
            except SnakepitError as exc:
                results[worker.id] = exc

        async with trio.open_nursery() as nursery:
            for worker in workers:
                nursery.start_soon(one, worker)
        return results

    async def _on(self, worker: Worker, command: str, args: Any, deadline: float) -> Any:
        """Run the call on ``worker`` and no other."""
        try:
            acquired = await self._calls.acquire(deadline, worker)
        except SnakepitError as exc:
            if isinstance(exc, WorkerCrashed) or worker.accepting:
                raise
            raise WorkerCrashed(f"worker {worker.id} (pid {worker.pid}) went away before "
                                f"the broadcast of {command!r} reached it") from exc
        if not acquired.accepting:
            self._dispatcher.release(acquired)
            raise WorkerCrashed(f"worker {worker.id} (pid {worker.pid}) is going away")
        call: Call[Any] = Call(command, args, deadline, movable=False)
        acquired.send_call(call)
        return await wait_for_answer(call, deadline)

    async def setup(self, command: str, args: Any, deadline: float) -> dict[str, Any]:
        """See :meth:`snakepit.Pool.setup`."""
        self.setups.append((command, args))
        return await self.broadcast(command, args, deadline)

    def adopt(self, nursery: trio.Nursery) -> Callable[[Worker, Callable[[Worker], None]],
                                                       None]:
        """The slots' hook for each new worker (``WorkerSlots.adopt``): with set-up
        recorded, replay it in ``nursery`` before the worker serves."""
        def adopt(worker: Worker, serving: Callable[[Worker], None]) -> None:
            if self.setups:
                worker.state = WorkerState.STARTING  # not accepting until it is done
                nursery.start_soon(self._replay, worker, serving)
            else:
                serving(worker)
        return adopt

    async def _replay(self, worker: Worker, serving: Callable[[Worker], None]) -> None:
        """Run every recorded set-up on the new ``worker``, then let it serve.

        It counts as starting meanwhile (not ``accepting``): no session binds to it and
        ``wait_ready`` waits for it. Set-ups recorded while it runs these are run too.
        """
        done = 0
        try:
            while done < len(self.setups):
                command, args = self.setups[done]
                deadline = self._calls.deadline(None)
                call: Call[Any] = Call(command, args, deadline, movable=False)
                worker.send_nested(call, None)
                await wait_for_answer(call, deadline)
                done += 1
        except SnakepitError as exc:
            command = self.setups[done][0]
            log.warning("worker %s failed its set-up %r: %s", worker.id, command, exc)
            self._emit("worker.setup_failed", {}, worker=worker.id, pid=worker.pid,
                       command=command, error=type(exc).__name__)
            worker.kill(f"set-up {command!r} failed: {exc}")
            return
        if worker.state is WorkerState.STARTING:
            worker.state = WorkerState.READY
            serving(worker)
