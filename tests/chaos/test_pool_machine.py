"""Chaos: a hypothesis state machine drives a real pool through failures.

Rules submit calls that succeed, sleep, raise, crash their worker, hang, return
oversized payloads or corrupt the wire; others SIGKILL or SIGSTOP a random worker or
cancel a random caller, recycle a worker, or drain the pool for a moment. After every
step: no call resolved twice, every resolution is the call's own result or a typed
SnakepitError, and a call no fault was aimed at returned its result -- whatever
crashed, hung, timed out or was cancelled around it (a call in flight when a worker was
signalled or wrote garbage on its wire may share that worker's fate, and is exempt).
At teardown: every call resolved exactly once, the pool is back to full size, and after
it closes no process of the run is alive.

The pool runs in a Trio loop on a helper thread; rules reach it with
``trio.from_thread``. Failing runs print the falsifying steps and a reproduction blob
(``print_blob``); the CI profile is derandomized, ``nox -s chaos`` runs a longer,
randomized one (set ``HYPOTHESIS_PROFILE``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Any

import trio
import trio_util
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import snakepit
from snakepit.worker.run import registry
from tests.conftest import is_alive, processes_of_run

SIZE = 3
CONFIG = snakepit.PoolConfig(
    size=SIZE, handler="snakepit.testing:ChaosHandler", max_frame_size=64 * 1024,
    cancel_grace=0.2, shutdown_grace=1.0, kill_timeout=0.5, startup_timeout=20,
    heartbeat_interval=0.1, heartbeat_timeout=0.5, health_check_interval=None,
    restart=snakepit.RestartPolicy(max_restarts=10_000, period=1.0, backoff_initial=0.01,
                                   backoff_max=0.05),
)


class PoolDriver:
    """A pool in a Trio loop on its own thread, driven from the test thread."""

    def __init__(self) -> None:
        self.outcomes: dict[int, list[tuple[str, Any]]] = {}
        self.expected: dict[int, Any] = {}
        self.innocent: set[int] = set()
        """Calls no fault was aimed at: they must return their result."""
        self.exempt: set[int] = set()
        """Calls in flight when a fault hit their whole worker, or cancelled by a rule."""
        self.faulted: set[int] = set()
        """Pids signalled by a rule: until they leave the pool, a call may reach them."""
        self.corrupting: set[int] = set()
        """Calls that write garbage on their worker's wire."""
        self.scopes: dict[int, trio.CancelScope] = {}
        self.pids: set[int] = set()
        self.unresolved = trio_util.AsyncValue(0)
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(30) or self.error is not None:
            raise RuntimeError(f"the pool did not start: {self.error!r}")

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:  # reported by close()
            self.error = exc
            self._ready.set()

    async def _main(self) -> None:
        self.token = trio.lowlevel.current_trio_token()
        self.stop = trio.Event()
        async with snakepit.open_pool(CONFIG) as pool, trio.open_nursery() as nursery:
            self.pool, self.nursery = pool, nursery
            self.pids.update(w.pid for w in pool.workers())
            self._ready.set()
            await self.stop.wait()
            nursery.cancel_scope.cancel()

    def portal(self, fn: Any, *args: Any) -> Any:
        return trio.from_thread.run_sync(fn, *args, trio_token=self.token)

    def submit(self, call_id: int, command: str, args: Any, expected: Any,
               innocent: bool = False, **options: Any) -> None:
        self.outcomes[call_id] = []
        self.expected[call_id] = expected
        if innocent:
            self.innocent.add(call_id)

        def start() -> None:
            live = {w.pid for w in self.pool.workers()}
            if self.faulted & live or any(not self.outcomes[c] for c in self.corrupting):
                self.exempt.add(call_id)  # it may be sent to the worker a fault hits
            self.unresolved.value += 1
            scope = self.scopes[call_id] = trio.CancelScope()

            async def call() -> None:
                with scope:
                    try:
                        result = await self.pool.execute(command, args, **options)
                    except snakepit.SnakepitError as exc:
                        self.outcomes[call_id].append(("error", exc))
                    except trio.Cancelled:
                        raise  # the caller was cancelled: recorded below, once
                    except BaseException as exc:
                        self.outcomes[call_id].append(("bare", exc))
                        raise
                    else:
                        self.outcomes[call_id].append(("result", result))
                if scope.cancelled_caught:
                    self.outcomes[call_id].append(("cancelled", None))
                self.unresolved.value -= 1

            self.nursery.start_soon(call)

        self.portal(start)

    def exempt_unresolved(self) -> None:
        """A fault is about to hit a whole worker: the calls in flight may share its fate."""
        self.portal(lambda: self.exempt.update(
            call_id for call_id, outcome in self.outcomes.items() if not outcome))

    def worker_pid(self, index: int) -> int | None:
        def pick() -> int | None:
            workers = [w for w in self.pool.workers() if w.accepting]
            if not workers:
                return None
            pid = workers[index % len(workers)].pid
            self.pids.add(pid)
            self.faulted.add(pid)
            return pid

        pid: int | None = self.portal(pick)
        return pid

    def settle(self) -> None:
        """Wait (bounded) for every call to resolve and the pool to be whole again."""

        async def settle() -> None:
            with trio.fail_after(60):
                await self.unresolved.wait_value(0)
                await self.pool.wait_ready()
                self.pids.update(w.pid for w in self.pool.workers())

        trio.from_thread.run(settle, trio_token=self.token)

    def close(self) -> None:
        if self.error is None:
            self.portal(self.stop.set)
        self._thread.join(60)
        assert not self._thread.is_alive(), "the pool did not close"
        if self.error is not None:
            raise self.error


class PoolChaos(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.driver: PoolDriver | None = None
        self.next_id = 0

    @initialize()
    def open_pool(self) -> None:
        self.driver = PoolDriver()

    def _submit(self, command: str, args: Any, expected: Any = None, innocent: bool = False,
                **options: Any) -> None:
        assert self.driver is not None
        self.next_id += 1
        self.driver.submit(self.next_id, command, args, expected, innocent, **options)

    @rule(value=st.one_of(st.integers(), st.text(max_size=20),
                          st.lists(st.integers(), max_size=5)))
    def call_succeeds(self, value: Any) -> None:
        self._submit("echo", value, value, innocent=True)

    @rule(count=st.integers(2, 12))
    def burst_of_calls(self, count: int) -> None:
        """More calls than idle workers: some wait in pipes behind whatever runs there."""
        for index in range(count):
            self._submit("echo", index, index, innocent=True)

    @rule(seconds=st.sampled_from([0.01, 0.05, 0.2]))
    def call_sleeps(self, seconds: float) -> None:
        self._submit("nap", {"seconds": seconds}, seconds, innocent=True)

    @rule()
    def call_raises(self) -> None:
        self._submit("raise", {"message": "chaos"})

    @rule()
    def call_crashes_its_worker(self) -> None:
        self._submit("crash", {"code": 3})

    @rule()
    def call_hangs(self) -> None:
        self._submit("sleep", {"seconds": 30}, timeout=0.3)

    @rule()
    def call_returns_too_much(self) -> None:
        self._submit("big", {"size": 128 * 1024})

    @rule()
    def call_corrupts_the_wire(self) -> None:
        assert self.driver is not None
        # what the worker writes after the garbage cannot be read: which of its other
        # calls had started cannot be told, so they fail with it
        self.driver.exempt_unresolved()
        self._submit("corrupt_wire", None)
        self.driver.corrupting.add(self.next_id)

    @rule()
    def call_prints_to_stdout(self) -> None:
        self._submit("print_stdout", "noise", "ok", innocent=True)

    @rule(index=st.integers(0, SIZE - 1))
    def recycle_a_worker(self, index: int) -> None:
        assert self.driver is not None
        driver = self.driver
        driver.portal(lambda: driver.pool.recycle(f"{CONFIG.name}-{index}"))

    @rule()
    def drain_for_a_moment(self) -> None:
        assert self.driver is not None
        driver = self.driver

        def drain_and_resume() -> None:
            driver.pool.drain()  # calls in flight and queued are not touched
            driver.pool.resume()

        driver.portal(drain_and_resume)

    @rule(index=st.integers(0, SIZE - 1))
    def sigkill_a_worker(self, index: int) -> None:
        assert self.driver is not None
        self.driver.exempt_unresolved()
        if (pid := self.driver.worker_pid(index)) is not None:
            with contextlib.suppress(ProcessLookupError):  # it may have just died anyway
                os.kill(pid, signal.SIGKILL)

    @rule(index=st.integers(0, SIZE - 1))
    def sigstop_a_worker(self, index: int) -> None:
        assert self.driver is not None
        self.driver.exempt_unresolved()
        if (pid := self.driver.worker_pid(index)) is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)  # the heartbeat watchdog must notice

    @precondition(lambda self: self.next_id > 0)
    @rule(data=st.data())
    def cancel_a_caller(self, data: st.DataObject) -> None:
        assert self.driver is not None
        call_id = data.draw(st.integers(1, self.next_id))
        self.driver.exempt.add(call_id)
        self.driver.portal(self.driver.scopes[call_id].cancel)

    @invariant()
    def a_call_no_fault_was_aimed_at_returns_its_result(self) -> None:
        if self.driver is None:
            return
        driver = self.driver
        for call_id in driver.innocent - driver.exempt:
            outcome = driver.outcomes[call_id]
            assert outcome in ([], [("result", driver.expected[call_id])]), (
                f"call {call_id}, which no fault was aimed at, ended with {outcome}")

    @invariant()
    def every_resolution_is_the_calls_own(self) -> None:
        if self.driver is None:
            return
        for call_id, outcome in list(self.driver.outcomes.items()):
            assert len(outcome) <= 1, f"call {call_id} resolved twice: {outcome}"
            for kind, value in outcome:
                assert kind != "bare", f"call {call_id} raised a bare {value!r}"
                if kind == "result":
                    assert value == self.driver.expected[call_id], (
                        f"call {call_id} got another call's answer: {value!r}")

    def teardown(self) -> None:
        if self.driver is None:
            return
        driver = self.driver
        try:
            driver.settle()
            assert all(len(outcome) == 1 for outcome in driver.outcomes.values())
            workers = driver.portal(lambda: [w for w in driver.pool.workers() if w.accepting])
            assert len(workers) == SIZE, "the pool did not return to its full size"
        finally:
            driver.close()
        alive = [pid for pid in driver.pids if is_alive(pid)]
        assert not alive, f"processes of the run still alive: {alive}"
        # every process the run ever started, not only the pids sampled above:
        # replacements that came and went between samples, and their children
        alive = processes_of_run(registry(CONFIG).run_id)
        assert not alive, f"processes carrying the run's id still alive: {alive}"


PoolChaos.TestCase.settings = settings(
    max_examples=int(os.environ.get("SNAKEPIT_CHAOS_EXAMPLES", "40")),
    stateful_step_count=12, deadline=None, print_blob=True,
    derandomize=os.environ.get("HYPOTHESIS_PROFILE") != "chaos",
)
TestPoolChaos = PoolChaos.TestCase
