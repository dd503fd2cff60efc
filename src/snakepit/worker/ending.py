"""How a worker's handle ends: killing the process, asking it to shut down, and failing
(or re-queueing) the calls it held when it is gone. Mixed into
:class:`~snakepit.worker.worker.Worker`."""

from __future__ import annotations

import enum
import logging
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from snakepit.errors import PoolClosed, SnakepitError, WorkerCrashed, WorkerCrashedBeforeStart
from snakepit.protocol.messages import Shutdown

if TYPE_CHECKING:
    from snakepit.process.launch import WorkerProcess
    from snakepit.worker.inflight import InFlight
    from snakepit.worker.nested import HostSide, NestedCalls

log = logging.getLogger("snakepit.worker")


class WorkerState(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"
    DEAD = "dead"


class Ending:
    """Killing, shutting down, and the calls left behind (see the module)."""

    id: str
    pid: int
    state: WorkerState
    process: WorkerProcess
    killed_on_purpose: bool
    killed: bool
    end_reason: SnakepitError | None
    shutdown_sent: bool
    inflight: InFlight
    nested: NestedCalls
    host: HostSide | None

    _send: Callable[[Any], None]

    def _requeue(self, call: Any) -> None: ...

    def kill(self, reason: str, *, on_purpose: bool = False) -> None:
        """Kill the process group now; calls in flight fail with WorkerCrashed(reason)
        (those that never started go elsewhere).

        ``on_purpose`` marks a kill over a call that would not stop (not a worker fault),
        which the supervisor does not count against the restart intensity.
        """
        if self.state is WorkerState.DEAD:
            return
        self.killed_on_purpose = self.killed_on_purpose or on_purpose
        log.warning("killing worker %s (pid %d): %s", self.id, self.pid, reason)
        self.state = WorkerState.STOPPING
        self.killed = True
        if self.end_reason is None:
            self.end_reason = WorkerCrashed(f"worker {self.id} was killed: {reason}")
        self.process.signal_group(signal.SIGKILL)

    def request_shutdown(self) -> None:
        """Send the shutdown frame: finish what is running, take nothing new, exit."""
        if self.state is WorkerState.READY or self.state is WorkerState.STARTING:
            self.state = WorkerState.STOPPING
        if not self.shutdown_sent and self.state is not WorkerState.DEAD:
            self.shutdown_sent = True
            self.end_reason = self.end_reason or PoolClosed("the pool is shutting down")
            self._send(Shutdown())

    def fail_all(self, error: SnakepitError, *, drained: bool = False) -> None:
        """The worker is gone: every call still in flight gets ``error`` -- except those
        that cannot have started.

        ``drained``: every frame the worker wrote has been read. Then the calls that
        were still waiting in its pipe (``capacity`` older calls unanswered) cannot
        have started: they go back to the front of the dispatch queue with their own
        deadlines (or, when they must run here, fail with the retryable
        :class:`WorkerCrashedBeforeStart`).
        """
        may_have_started, behind = self.inflight.take_all()
        nested = list(self.nested)
        self.nested.fail_all(error)  # first: a tool waiting on one learns why
        if self.host is not None and self.host.runs:  # then the tools stop
            for call in (*may_have_started, *nested):
                self.host.call_ended(call)
        for call in may_have_started:
            call.fail(error)
        for call in behind:
            if not drained:
                call.fail(error)
            elif call.movable and not call.abandoned:
                call.bounced = True
                call.back_to_queue(self._requeue)
            else:
                call.fail(WorkerCrashedBeforeStart(
                    f"call {call.command!r} was queued in worker {self.id}, which died "
                    f"before starting it ({error})"))
