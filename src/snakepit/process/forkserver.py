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
(:func:`snakepit.process.template.adopting_orphans`): an orphan elsewhere in our process
tree is adopted only if it appears in that window, and orphans of a worker's group are
reaped with the worker.

If the template dies, it is started again (a pool's workers are unaffected: they are
our children, not its); if it cannot be started again, or dies more than
``_MAX_RESTARTS`` times a minute, the pool logs an error and starts workers cold.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import socket
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import trio

from snakepit import _realtime as realtime
from snakepit.errors import WorkerStartupError
from snakepit.process.launch import OsProcess, spawn
from snakepit.process.registry import RunRegistry
from snakepit.process.shutdown import shutdown_ladder
from snakepit.process.template import Template, TemplateGone
from snakepit.worker.stderr import StderrLog

__all__ = ["ForkServer", "Spawner", "template_argv"]

log = logging.getLogger("snakepit.forkserver")

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
        self._template: Template | None = None
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
                except TemplateGone:
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
            template: Template | None = None
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

    def _launch(self) -> Template:
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
        return Template(process, trio.socket.from_stdlib_socket(parent_end),
                         StderrLog(f"{self.name}-template", err_read), self._handler,
                         self._startup_timeout)

    async def _wait_ready(self, template: Template) -> None:
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

    async def _stop(self, template: Template) -> None:
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
