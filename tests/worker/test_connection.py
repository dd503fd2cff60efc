"""A write that fails is that worker's fault alone: the batch writer keeps serving the rest.

Issue 15, item 8: frames are written by one Trio instrument for every connection; when a
write raised, Trio removed the instrument and every worker went silent (after one
injected write error, at most 1 of 6 later calls answered). Now the error stays with
its connection: that worker is killed with a clear reason and replaced.
"""

from __future__ import annotations

import pytest
import trio

import snakepit
from snakepit.worker.worker import Worker
from tests.conftest import chaos_config


def live_worker(pool: snakepit.Pool, pid: int) -> Worker:
    """The host's Worker object of the process ``pid`` (to break its writes)."""
    return next(worker for slot in pool._slots.slots for worker in slot.live_workers()
                if worker.pid == pid)


@pytest.mark.parametrize("where", ["batch", "flusher"])
async def test_a_write_error_fails_that_worker_only(where: str) -> None:
    async with snakepit.open_pool(chaos_config(size=2)) as pool:
        broken_pid, other_pid = (w.pid for w in pool.workers())
        assert broken_pid is not None and other_pid is not None
        connection = live_worker(pool, broken_pid).connection

        def injected() -> bool:
            raise RuntimeError("injected write error")

        if where == "batch":  # a fault in the batch writer (the Trio instrument)
            connection._write_some = injected  # type: ignore[method-assign]
        else:  # a fault in the flusher task, after the pipe was full
            connection._blocked = True
            connection._write_some = injected  # type: ignore[method-assign]
            connection._flusher_lot.unpark_all()
        errors: list[snakepit.SnakepitError] = []
        answers: list[object] = []

        async def call(n: int) -> None:
            try:
                answers.append(await pool.execute("echo", n))
            except snakepit.WorkerCrashed as exc:
                errors.append(exc)

        gone = trio.Event()

        def on_exit(event: str, measurements: object, metadata: dict[str, object]) -> None:
            if metadata.get("pid") == broken_pid:
                gone.set()

        handler = snakepit.telemetry.attach("worker.exited", on_exit)  # type: ignore[arg-type]
        try:
            with trio.fail_after(30):
                if where == "batch":
                    # two at once: one per worker (a free worker's own unit goes first)
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(call, 0)
                        nursery.start_soon(call, 1)
                await gone.wait()  # the broken one was killed (the flusher: on its own)
                await pool.wait_ready()
                for n in range(6):  # six later calls, every one answered
                    assert await pool.execute("echo", n) == n
        finally:
            snakepit.telemetry.detach(handler)
        if where == "batch":
            assert answers and len(errors) == 1
            assert "writing to the worker failed" in str(errors[0])
            assert "injected write error" in str(errors[0])
        assert connection.write_error is not None
        pids = {w.pid for w in pool.workers()}
        assert other_pid in pids and broken_pid not in pids  # that one was replaced
