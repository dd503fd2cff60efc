"""What pools left behind: processes, shared-memory segments, file descriptors (Linux).

:class:`LeakCheck` takes a snapshot when it is created; :meth:`LeakCheck.find` (once
every pool it watched has closed) names what appeared since and is still there:

- processes that carry the pools' run id (``SNAKEPIT_RUN_ID``) in their environment --
  every worker, and whatever a worker started, even outside its process group -- and
  child processes of this process left unreaped (zombies);
- shared-memory segments in ``/dev/shm`` named for this process's runs
  (``snakepit-<run id>-...``);
- file descriptors of this process: pipes, sockets, pidfds and the like, and files
  (what a pool opens -- and what the code under test opened meanwhile and did not
  close, which is a leak too).

:meth:`LeakCheck.clean_up` then kills the processes and removes the segments, so one
leaky test does not spill into the next. Standard library only (plus snakepit's run
registry, imported when a run is watched).
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from snakepit.config import PoolConfig

__all__ = ["LeakCheck"]

SEGMENT_DIR = "/dev/shm"


def open_fds() -> dict[int, str]:
    """This process's open descriptors and what each points at."""
    found: dict[int, str] = {}
    with contextlib.suppress(FileNotFoundError), os.scandir("/proc/self/fd") as entries:
        for entry in entries:
            with contextlib.suppress(OSError):
                found[int(entry.name)] = os.readlink(entry.path)
    return found


def segments() -> set[str]:
    """Names in ``/dev/shm``."""
    try:
        return set(os.listdir(SEGMENT_DIR))
    except FileNotFoundError:
        return set()


def _state(pid: int) -> str | None:
    """The process state letter (``Z``: zombie), or None when ``pid`` is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def zombie_children() -> set[int]:
    """This process's children that exited and were not reaped."""
    pids: set[int] = set()
    with contextlib.suppress(FileNotFoundError):
        for task in Path("/proc/self/task").iterdir():
            with contextlib.suppress(FileNotFoundError):
                pids.update(int(p) for p in (task / "children").read_text().split())
    return {pid for pid in pids if _state(pid) == "Z"}


def processes_of_run(run_id: str) -> set[int]:
    """Live processes (zombies aside) whose environment carries ``run_id``."""
    from snakepit.process.registry import RUN_ID_ENV, process_environment_has

    entry = f"{RUN_ID_ENV}={run_id}".encode()
    me = os.getpid()
    return {int(proc.name) for proc in Path("/proc").iterdir()
            if proc.name.isdigit() and int(proc.name) != me
            and process_environment_has(int(proc.name), entry)
            and _state(int(proc.name)) not in (None, "Z")}


class LeakCheck:
    """A snapshot of this process's descriptors and segments, and of the processes of
    the runs it watches, to compare with once the pools are closed."""

    def __init__(self) -> None:
        self._fds = open_fds()
        self._segments = segments()
        self._zombies = zombie_children()
        self._runs: dict[str, set[int]] = {}  # run id: its processes when first watched
        self.processes: list[int] = []
        """Pids :meth:`find` reported as leaked."""
        self.segments: list[str] = []
        """Segment names :meth:`find` reported as leaked."""

    def watch(self, config: PoolConfig) -> None:
        """Include the processes and segments of ``config``'s run (call before the pool
        opens: processes of that run already alive are not counted)."""
        from snakepit.worker.run import registry

        run_id = registry(config).run_id
        if run_id not in self._runs:
            self._runs[run_id] = processes_of_run(run_id)

    def find(self) -> list[str]:
        """One line per thing left behind since the snapshot (empty: nothing)."""
        gc.collect()  # a handle only garbage still holds closes now, as it would soon
        problems: list[str] = []
        self.processes = []
        for run_id, before in self._runs.items():
            for pid in sorted(processes_of_run(run_id) - before):
                self.processes.append(pid)
                problems.append(f"process {pid} ({_cmdline(pid)}) of snakepit run {run_id} "
                                f"is still running")
        for pid in sorted(zombie_children() - self._zombies):
            problems.append(f"child process {pid} exited but was never reaped (a zombie)")
        self.segments = sorted(name for name in segments() - self._segments
                               if any(name.startswith(f"snakepit-{run_id}-")
                                      for run_id in self._runs))
        problems.extend(f"shared-memory segment {SEGMENT_DIR}/{name} was not removed"
                        for name in self.segments)
        for fd, target in sorted(open_fds().items()):
            if self._fds.get(fd) != target and _still_open(fd, target):
                problems.append(f"file descriptor {fd} ({target}) is still open")
        return problems

    def clean_up(self) -> None:
        """Kill the leaked processes and remove the leaked segments :meth:`find`
        reported (descriptors are left: something may still own them)."""
        for pid in self.processes:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        for name in self.segments:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(SEGMENT_DIR, name))


def _still_open(fd: int, target: str) -> bool:
    """Whether ``fd`` points at ``target`` (not one that ``open_fds`` itself opened
    for its directory listing and closed meanwhile)."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}") == target
    except OSError:
        return False


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return " ".join(part.decode(errors="replace") for part in raw.split(b"\0") if part)[:120]
