"""Start a worker process: its own process group, three pipes, a pidfd to wait on.

We call :class:`subprocess.Popen` from the Trio thread itself rather than through
``trio.lowlevel.open_process``, which forks from a worker thread: Linux delivers the
parent-death signal when the *thread* that forked the child exits, so a worker forked
from a cached thread would be killed when that thread idled out. Popen uses vfork
here, so the Trio loop is blocked for well under a millisecond per spawn.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import Protocol

import trio

from snakepit.errors import WorkerStartupError

__all__ = ["OsProcess", "WorkerProcess", "grow_pipe", "spawn"]

# Linux's F_SETPIPE_SZ; a 1 MiB pipe buffer doubles 1 MiB transfer speed (DESIGN.md).
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
PIPE_SIZE = 1 << 20


def grow_pipe(fd: int) -> None:
    """Raise the pipe's buffer to :data:`PIPE_SIZE` where the system allows."""
    with contextlib.suppress(OSError):  # capped by /proc/sys/fs/pipe-max-size
        fcntl.fcntl(fd, _F_SETPIPE_SZ, PIPE_SIZE)


class WorkerProcess(Protocol):
    """The host's handle on one running worker: all that ``run_worker`` needs of it.

    :class:`OsProcess`, a local child on three pipes, is one. An adapter or a pool kind
    may supply another through ``LaunchSpec.open`` -- a worker on another machine behind
    a TCP socket, say (``plugins/snakepit-ray``). The fds are read and written with
    ``os.read``/``os.write`` on the Trio thread, so they must be non-blocking; a
    connected socket serves as both ``stdin`` and ``stdout``.
    """

    pid: int
    """The worker's pid on its machine (for display, sessions and refs)."""
    stdin: int
    """Fd the host writes frames to."""
    stdout: int
    """Fd the host reads frames from (may be the same fd as ``stdin``)."""
    stderr: int
    """Fd carrying the worker's log lines."""

    @property
    def returncode(self) -> int | None:
        """Exit status once reaped; negative for a signal."""
        ...

    def signal_group(self, signum: int) -> None:
        """Deliver ``signum`` to the worker and what it started. Must not block: a
        remote handle queues the request. SIGKILL must end the worker for the host at
        once (the wire reaches end of file soon after)."""
        ...

    async def wait_exit(self) -> None:
        """Return once the worker has exited (cancellable; call again to resume)."""
        ...

    def reap(self) -> int:
        """After :meth:`wait_exit`: clean up what is left and return the exit status.

        A handle may also have ``abandon()``, called instead when the process outlived
        SIGKILL (the shutdown ladder gave up waiting for it).
        """
        ...

    def close_pipes(self) -> None:
        """Close the host's fds (after every task using them has stopped)."""
        ...


class OsProcess:
    """A child process leading its own process group, with non-blocking pipe ends.

    ``stdin``/``stdout`` are the wire; ``stderr`` carries the worker's logs. Started by
    :func:`spawn` (``popen`` set), or forked by a fork server and adopted by this
    process (``popen`` None, ``pid`` given): either way it is our child, and reaped here.
    """

    def __init__(self, popen: subprocess.Popen[bytes] | None, stdin: int, stdout: int,
                 stderr: int, *, pid: int | None = None) -> None:
        self._popen = popen
        self.pid: int = popen.pid if popen is not None else pid  # type: ignore[assignment]
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self._pidfd: int | None = os.pidfd_open(self.pid) if hasattr(os, "pidfd_open") else None
        self._exited = False
        self._returncode: int | None = None
        self.abandoned = False
        """The shutdown ladder gave up on it (it outlived SIGKILL): see :meth:`abandon`."""

    @property
    def returncode(self) -> int | None:
        """Exit status once reaped; negative for a signal, as in :mod:`subprocess`."""
        return self._popen.returncode if self._popen is not None else self._returncode

    def _poll(self) -> int | None:
        if self._popen is not None:
            return self._popen.poll()
        if self._returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self._returncode = os.waitstatus_to_exitcode(status)
        return self._returncode

    def signal_group(self, signum: int) -> None:
        """Send ``signum`` to the worker's whole process group (its descendants too)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signum)

    async def wait_exit(self) -> None:
        """Return once the process has exited (it stays a zombie until :meth:`reap`)."""
        if self._exited or self.returncode is not None:
            return
        if self._pidfd is not None:
            await trio.lowlevel.wait_readable(self._pidfd)
        else:  # pragma: no cover - no pidfd (non-Linux): nothing to wait on but time
            while self._poll() is None:  # noqa: ASYNC110
                await trio.sleep(0.01)
        self._exited = True

    def reap(self) -> int:
        """Kill what is left of the group, then collect the exit status.

        Called after :meth:`wait_exit`: the leader is a zombie, so its pid -- which is
        the group id -- cannot have been reused, and grandchildren a handler spawned are
        killed without risk of hitting a stranger.
        """
        if self.returncode is None:
            self.signal_group(signal.SIGKILL)
            if self._popen is not None:
                self._popen.wait()
            else:
                _, status = os.waitpid(self.pid, 0)
                self._returncode = os.waitstatus_to_exitcode(status)
        self._close_pidfd()
        self._reap_adopted()
        code = self.returncode
        assert code is not None
        return code

    def abandon(self) -> None:
        """Stop waiting for a process that outlived SIGKILL (the shutdown ladder gave up):
        close the pidfd and reap it in a daemon thread whenever it exits, so that it
        does not stay a zombie for the host's lifetime."""
        self.abandoned = True
        self._close_pidfd()
        threading.Thread(target=self._wait_blocking, name=f"snakepit-reap-{self.pid}",
                         daemon=True).start()

    def _wait_blocking(self) -> None:
        if self._popen is not None:
            self._popen.wait()
            return
        with contextlib.suppress(ChildProcessError):
            _, status = os.waitpid(self.pid, 0)
            self._returncode = os.waitstatus_to_exitcode(status)

    def _reap_adopted(self) -> None:
        """Reap members of the worker's group that this process adopted.

        While a fork server hands over a worker, this process is a child subreaper,
        and a grandchild orphaned at that moment becomes our child; it is in the
        worker's process group (which was just SIGKILLed), so it can be found by group.
        """
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-self.pid, os.WNOHANG)[0]:
                pass

    def _close_pidfd(self) -> None:
        if self._pidfd is not None:
            trio.lowlevel.notify_closing(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None

    def close_pipes(self) -> None:
        """Close the host's pipe ends (after every task using them has stopped)."""
        for name in ("stdin", "stdout", "stderr"):
            fd = getattr(self, name)
            if fd >= 0:
                trio.lowlevel.notify_closing(fd)
                os.close(fd)
                setattr(self, name, -1)


def spawn(argv: Sequence[str], *, env: Mapping[str, str], cwd: str | None) -> OsProcess:
    """Start ``argv`` in a new session (so a new process group) with piped stdio.

    Raises:
        WorkerStartupError: the executable cannot be run.
    """
    child_in, host_in = os.pipe()
    host_out, child_out = os.pipe()
    host_err, child_err = os.pipe()
    grow_pipe(host_in)
    grow_pipe(host_out)
    try:
        popen = subprocess.Popen(
            list(argv),
            stdin=child_in,
            stdout=child_out,
            stderr=child_err,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
            close_fds=True,
        )
    except OSError as exc:
        for fd in (host_in, host_out, host_err):
            os.close(fd)
        raise WorkerStartupError(f"cannot start worker {list(argv)!r}: {exc}") from exc
    finally:
        for fd in (child_in, child_out, child_err):
            os.close(fd)
    for fd in (host_in, host_out, host_err):
        os.set_blocking(fd, False)
    return OsProcess(popen, host_in, host_out, host_err)


def host_environment(extra: Mapping[str, str]) -> dict[str, str]:
    """The environment of a worker: the host's, the pool's extras, and the host pid."""
    env = dict(os.environ)
    env.update(extra)
    env["SNAKEPIT_HOST_PID"] = str(os.getpid())
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def resolve_python(python: str) -> str:
    """The interpreter ``PoolConfig.python`` names: an executable as it is, or a
    virtualenv's directory standing for its ``bin/python``.

    Raises:
        ConfigError: a directory that holds no virtualenv interpreter.
    """
    if not os.path.isdir(python):
        return python
    for name in ("bin/python", "bin/python3", "Scripts/python.exe"):
        candidate = os.path.join(python, name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    from snakepit.errors import ConfigError

    raise ConfigError([f"python: {python!r} is a directory but no virtualenv (it has no "
                       "bin/python); name the interpreter or the virtualenv's directory"])


def virtualenv_of(python: str) -> str | None:
    """The virtualenv ``python`` belongs to (its ``pyvenv.cfg`` is a level up), or None."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(python)))
    return root if os.path.isfile(os.path.join(root, "pyvenv.cfg")) else None


def python_argv(python: str, handler: str, preload: Sequence[str] = ()) -> list[str]:
    """argv that runs the bridge serving ``handler`` under ``python``."""
    return [python, "-m", "snakepit.bridge", "--handler", handler,
            *(arg for module in preload for arg in ("--preload", module))]


_bridge_dir: str | None = None


def bridge_pythonpath(python: str) -> str | None:
    """A PYTHONPATH entry that lets a *foreign* interpreter import ``snakepit.bridge``.

    The host's own interpreter already can. Another one (a worker virtualenv) gets a
    private directory holding only a link to the ``snakepit`` package, so it never sees
    the host's site-packages (whose compiled extensions may not fit it).
    """
    global _bridge_dir
    # abspath, not realpath: a virtualenv's python is a symlink to its base interpreter,
    # yet it is another environment (its own site-packages).
    if os.path.abspath(python) == os.path.abspath(sys.executable):
        return None
    if _bridge_dir is None:
        import atexit
        import shutil
        import tempfile

        import snakepit

        _bridge_dir = tempfile.mkdtemp(prefix="snakepit-bridge-")
        atexit.register(shutil.rmtree, _bridge_dir, ignore_errors=True)
        os.symlink(os.path.dirname(os.path.abspath(snakepit.__file__)),
                   os.path.join(_bridge_dir, "snakepit"))
    return _bridge_dir
