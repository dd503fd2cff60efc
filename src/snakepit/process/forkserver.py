"""The fork server: one template process per pool, workers forked from it.

Starting a Python worker cold costs an interpreter start plus every import its handler
needs -- with numpy or a model library that is most of a second, paid again for every
replacement. With ``PoolConfig(warm_start=True)`` the pool starts one *template*
(:mod:`snakepit.bridge.forkserver`) that imports ``preload`` and the handler's module
once; each worker, replacements included, is then a ``fork`` of it, ready in
milliseconds.

A forked worker is supervised exactly like a cold one. The template forks it through a
short-lived intermediate process while this process is a *child subreaper*, so the
worker is re-parented to us: it leads its own process group, we wait on its pidfd and
reap it, its parent-death signal fires when we die (not the template), and the run
registry records it. The subreaper mark is held only while a fork is being answered
(:func:`_adopting_orphans`): an orphan elsewhere in our process tree is adopted only if
it appears in that window, and orphans of a worker's group are reaped with the worker.

If the template dies, it is started again (a pool's workers are unaffected: they are
our children, not its); if it cannot be started again, or dies more than
``_MAX_RESTARTS`` times a minute, the pool logs an error and starts workers cold.
"""

from __future__ import annotations

import array
import collections
import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol

import trio

from snakepit import _realtime as realtime
from snakepit.errors import WorkerStartupError
from snakepit.process.launch import OsProcess, grow_pipe, spawn
from snakepit.process.registry import RunRegistry
from snakepit.process.shutdown import shutdown_ladder
from snakepit.worker.stderr import StderrLog

__all__ = ["ForkServer", "Spawner", "template_argv"]

log = logging.getLogger("snakepit.forkserver")

_PR_SET_CHILD_SUBREAPER = 36
_PR_GET_CHILD_SUBREAPER = 37
_MAX_RESTARTS = 3
"""Template deaths within a minute after which the pool gives up and starts cold."""


class Spawner(Protocol):
    """Starts one worker process (the cold :func:`spawn`, or a fork server's)."""

    async def __call__(self, argv: Sequence[str], *, env: Mapping[str, str],
                       cwd: str | None) -> OsProcess: ...


def template_argv(python: str, handler: str, preload: Sequence[str]) -> list[str]:
    """argv of the template process serving ``handler`` (the control fd is added later)."""
    return [python, "-m", "snakepit.bridge.forkserver", "--handler", handler,
            *(arg for module in preload for arg in ("--preload", module))]


class _TemplateGone(Exception):
    """The template exited, or stopped answering, during a fork request."""


# -- adopting forked workers ---------------------------------------------------------
_adopting = 0
_set_by_us = False


_libc: ctypes.CDLL | None = None


def _prctl(option: int, value: Any) -> int:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    result: int = _libc.prctl(option, value, 0, 0, 0)
    if result != 0:
        raise OSError(ctypes.get_errno(), "prctl failed")
    return result


@contextlib.contextmanager
def _adopting_orphans() -> Iterator[None]:
    """Be a child subreaper (``PR_SET_CHILD_SUBREAPER``) for the duration of the block.

    Nested and concurrent users share the mark; it is cleared when the last leaves,
    unless this process was a subreaper already (then it is left alone).
    """
    global _adopting, _set_by_us
    if _adopting == 0:
        already = ctypes.c_int(0)
        _prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(already))
        _set_by_us = not already.value
        if _set_by_us:
            _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    _adopting += 1
    try:
        yield
    finally:
        _adopting -= 1
        if _adopting == 0 and _set_by_us:
            _prctl(_PR_SET_CHILD_SUBREAPER, 0)
            _set_by_us = False


def _parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as file:
            return int(file.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


# -- the template --------------------------------------------------------------------
class _Request:
    """One worker to fork: its environment and the two ends of its three pipes."""

    def __init__(self, env: Mapping[str, str], cwd: str | None, handler: str) -> None:
        self.payload = json.dumps({"env": dict(env), "cwd": cwd, "handler": handler}).encode()
        child_in, self.host_in = os.pipe()
        self.host_out, child_out = os.pipe()
        self.host_err, child_err = os.pipe()
        grow_pipe(self.host_in)
        grow_pipe(self.host_out)
        self.child_fds = (child_in, child_out, child_err)
        self.answer: Any = None
        self.done = trio.Event()

    def process(self) -> OsProcess:
        """The forked worker, once answered.

        Raises:
            WorkerStartupError: the template reported why it could not fork.
        """
        try:
            if "error" in self.answer:
                raise WorkerStartupError(
                    f"the fork server could not fork a worker: {self.answer['error']}")
            pid = int(self.answer["pid"])
            if _parent_of(pid) != os.getpid():
                raise WorkerStartupError(f"forked worker {pid} was not handed over to this "
                                         "process")
        except BaseException:
            self.close_host_ends()
            raise
        for fd in (self.host_in, self.host_out, self.host_err):
            os.set_blocking(fd, False)
        return OsProcess(None, self.host_in, self.host_out, self.host_err, pid=pid)

    def close_host_ends(self) -> None:
        for fd in (self.host_in, self.host_out, self.host_err):
            os.close(fd)


class _Template:
    """One template process and its control socket.

    Fork requests that arrive together go out as one batch: the first caller sends
    every request queued by then and reads the answers, which the template gives in
    order once the batch's workers have been handed over.
    """

    def __init__(self, process: OsProcess, control: trio.socket.SocketType,
                 stderr: StderrLog, handler: str, timeout: float) -> None:
        self.process = process
        self.control = control
        self.stderr = stderr
        self.handler = handler
        self.timeout = timeout
        self.gone = False
        self._queue: list[_Request] = []
        self._sending = False

    async def fork(self, env: Mapping[str, str], cwd: str | None) -> OsProcess:
        """Fork one worker with fresh pipes; it is our child when this returns.

        Shielded (and bounded by the timeout): once a request is out, its answer -- the
        pid -- must be read, or a worker would exist that nobody supervises.

        Raises:
            _TemplateGone: the template died or hung; it has been killed.
            WorkerStartupError: the template could not fork (it reported why).
        """
        if self.gone:
            raise _TemplateGone
        request = _Request(env, cwd, self.handler)
        self._queue.append(request)
        with trio.CancelScope(shield=True):
            if not self._sending:
                self._sending = True
                try:
                    # let the other slots starting in this scheduler batch queue theirs
                    await trio.lowlevel.checkpoint()
                    while self._queue:
                        batch, self._queue = self._queue, []
                        await self._exchange(batch)
                finally:
                    self._sending = False
            await request.done.wait()
        if request.answer is None:
            request.close_host_ends()
            raise _TemplateGone
        return request.process()

    async def _exchange(self, batch: list[_Request]) -> None:
        with realtime.move_on_after(self.timeout):
            try:
                with _adopting_orphans():
                    for request in batch:
                        await self.control.sendmsg(
                            [request.payload],
                            [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                              array.array("i", request.child_fds))])
                    for request in batch:
                        reply = await self.control.recv(1 << 16)
                        request.answer = json.loads(reply) if reply else None
                        if request.answer is None:
                            break
            except (OSError, ValueError, trio.ClosedResourceError):
                pass
        for request in batch:
            for fd in request.child_fds:
                os.close(fd)
            request.done.set()
        if any(request.answer is None for request in batch):
            self.gone = True  # died, hung or garbled: no later answer can be trusted
            self.process.signal_group(signal.SIGKILL)


class ForkServer:
    """A pool's template process: started by :meth:`run`, used through :meth:`spawn`.

    ``argv`` is the template's command line (:func:`template_argv`), ``env`` and ``cwd``
    its environment and directory (a worker's, but for its per-worker variables, which
    each fork request carries).
    """

    def __init__(self, name: str, argv: Sequence[str], *, env: Mapping[str, str],
                 cwd: str | None, handler: str, startup_timeout: float, kill_timeout: float,
                 registry: RunRegistry) -> None:
        self.name = name
        self._argv = list(argv)
        self._env = dict(env)
        self._cwd = cwd
        self._handler = handler
        self._startup_timeout = startup_timeout
        self._kill_timeout = kill_timeout
        self._registry = registry
        self._template: _Template | None = None
        self._ready = trio.Event()
        self.cold = False
        """True once the pool gave up on the template: workers start cold."""
        self.templates_started = 0
        """Templates started so far (1 + restarts)."""
        self.template_startup: float | None = None
        """Seconds the latest template took from launch to ready (its imports)."""

    @property
    def template_pid(self) -> int | None:
        """The pid of the live template, if any."""
        return self._template.process.pid if self._template is not None else None

    async def spawn(self, argv: Sequence[str], *, env: Mapping[str, str],
                    cwd: str | None) -> OsProcess:
        """Fork a worker from the template (a :class:`Spawner`).

        While a dead template is being replaced this waits for the new one (up to
        ``startup_timeout``); once the pool has given up on templates it starts the
        worker cold from ``argv``.
        """
        with realtime.move_on_after(self._startup_timeout):
            while not self.cold:
                template = self._template
                if template is None:
                    await self._ready.wait()
                    continue
                try:
                    return await template.fork(env, cwd)
                except _TemplateGone:
                    log.warning("fork server %s: the template (pid %d) is gone; waiting "
                                "for a new one", self.name, template.process.pid)
                    if self._template is template:
                        self._template = None
                        self._ready = trio.Event()
                    await trio.lowlevel.checkpoint()
        if not self.cold:
            log.error("fork server %s: no template within %.0fs; starting a worker cold",
                      self.name, self._startup_timeout)
        return spawn(argv, env=env, cwd=cwd)

    async def run(self, *, task_status: trio.TaskStatus[ForkServer] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Keep a template running until cancelled; restart it when it dies.

        Reports itself through ``task_status`` once the first template is ready.

        Raises:
            WorkerStartupError: the first template could not start (a preloaded module
                or the handler's module failed to import, say).
        """
        deaths: collections.deque[float] = collections.deque()
        first = True
        while True:
            template: _Template | None = None
            try:
                async with trio.open_nursery() as nursery:
                    template = self._launch()
                    nursery.start_soon(template.stderr.pump)
                    await self._wait_ready(template)
                    self._template = template
                    self._ready.set()
                    if first:
                        first = False
                        task_status.started(self)
                    await template.process.wait_exit()
                    nursery.cancel_scope.cancel()  # the stderr pump
            except WorkerStartupError as exc:
                if first:
                    raise
                log.error("fork server %s: cannot start a new template, so workers start "
                          "cold from now on: %s", self.name, exc)
                self._give_up()
                return
            finally:
                if template is not None:
                    with trio.CancelScope(shield=True):
                        await self._stop(template)
            log.warning("fork server %s: the template (pid %d) exited with %s; "
                        "starting a new one", self.name, template.process.pid,
                        template.process.returncode)
            now = trio.current_time()
            deaths.append(now)
            while deaths and deaths[0] < now - 60:
                deaths.popleft()
            if len(deaths) > _MAX_RESTARTS:
                log.error("fork server %s: the template died %d times within a minute; "
                          "workers start cold from now on", self.name, len(deaths))
                self._give_up()
                return

    def _give_up(self) -> None:
        self.cold = True
        self._template = None
        self._ready.set()  # wake spawns waiting for a template: they start cold

    def _launch(self) -> _Template:
        """Start a template process (it then imports; see :meth:`_wait_ready`)."""
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        err_read, err_write = os.pipe()
        try:
            popen = subprocess.Popen(
                [*self._argv, "--control-fd", str(child_end.fileno())],
                stdin=subprocess.DEVNULL, stdout=err_write, stderr=err_write,
                env=self._env, cwd=self._cwd, start_new_session=True, close_fds=True,
                pass_fds=(child_end.fileno(),))
        except OSError as exc:
            parent_end.close()
            os.close(err_read)
            raise WorkerStartupError(f"cannot start the fork server {self._argv!r}: {exc}"
                                     ) from exc
        finally:
            child_end.close()
            os.close(err_write)
        os.set_blocking(err_read, False)
        process = OsProcess(popen, -1, -1, err_read)
        self._registry.add(process.pid)
        self.templates_started += 1
        return _Template(process, trio.socket.from_stdlib_socket(parent_end),
                         StderrLog(f"{self.name}-template", err_read), self._handler,
                         self._startup_timeout)

    async def _wait_ready(self, template: _Template) -> None:
        """Wait until the template has imported everything and says so.

        Raises:
            WorkerStartupError: it exited or did not answer within ``startup_timeout``;
                carries its stderr tail (an import error's traceback, say).
        """
        ready: Any = None
        launched = trio.current_time()
        with realtime.move_on_after(self._startup_timeout):
            with contextlib.suppress(OSError, ValueError):
                ready = json.loads(await template.control.recv(1 << 16) or b"null")
        if not ready:
            with realtime.move_on_after(1.0):  # let a dying template finish its traceback
                await template.process.wait_exit()
            raise WorkerStartupError(
                f"the fork server's template (pid {template.process.pid}) did not start: "
                "it exited or did not answer within startup_timeout "
                f"({self._startup_timeout}s)", template.stderr.drain())
        self.template_startup = trio.current_time() - launched
        log.debug("fork server %s: template pid %d ready in %.3fs", self.name,
                  template.process.pid, self.template_startup)

    async def _stop(self, template: _Template) -> None:
        """The shutdown ladder for the template: EOF on its socket, SIGTERM, SIGKILL."""
        template.gone = True
        await shutdown_ladder(template.process, request_shutdown=template.control.close,
                              grace=self._kill_timeout, kill_timeout=self._kill_timeout)
        template.stderr.drain()
        template.process.close_pipes()
        self._registry.remove(template.process.pid)
        if self._template is template:
            self._template = None
            self._ready = trio.Event()
