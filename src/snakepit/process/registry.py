"""The run registry: every worker process of every run, so none is ever orphaned.

Each host process is a *run*, with an id made of its pid and its start time. The run
writes ``<state_dir>/runs/<run id>.json`` listing its workers (pid and start time, so a
reused pid is never mistaken for one of them), and every worker -- and everything a
worker starts -- carries ``SNAKEPIT_RUN_ID`` in its environment.

Normally workers die with their host (parent-death signal, stdin EOF) and the run
removes its file on exit. When the host is SIGKILLed, a worker that ignored the
parent's death, or a grandchild (which never had a parent-death signal), would live on.
The next run on the machine -- or ``snakepit cleanup`` -- finds the file of the dead
run and kills what is left: the recorded workers whose pid *and* start time still
match, and any process of this user whose environment names the dead run.

Nothing found in the state dir is believed without proof that it is this user's
(:mod:`snakepit.process.trust`): the directories must be ours and closed to others, a
record must be a file of ours, a process is killed only when it runs as us *and*
carries the dead run's id in its environment, a segment is removed only when it is
ours, and a record whose run id names a live host is never reaped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import trio

from snakepit.errors import ConfigError
from snakepit.process.trust import (
    owns_process,
    process_group,
    read_own_file,
    remove_own_segments,
    secure_dir,
)

log = logging.getLogger("snakepit.registry")

RUN_ID_ENV = "SNAKEPIT_RUN_ID"


def default_state_dir() -> Path:
    """``$SNAKEPIT_STATE_DIR``, else ``$XDG_RUNTIME_DIR/snakepit``, else a per-user temp dir."""
    if explicit := os.environ.get("SNAKEPIT_STATE_DIR"):
        return Path(explicit)
    if runtime := os.environ.get("XDG_RUNTIME_DIR"):
        return Path(runtime) / "snakepit"
    return Path(tempfile.gettempdir()) / f"snakepit-{os.getuid()}"


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), or None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":  # a zombie is as good as gone
        return None
    return int(fields[19])


def process_environment_has(pid: int, entry: bytes) -> bool:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return entry in environ.split(b"\0")


@attrs.frozen
class Reaped:
    """A process the registry killed."""

    pid: int
    run_id: str
    why: str
    """``"recorded worker"`` or ``"carries the run id"``."""


class RunRegistry:
    """This host's entry in the registry (one per process, shared by its pools)."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.runs_dir = state_dir / "runs"
        self.host_pid = os.getpid()
        self.host_start = start_time(self.host_pid) or 0
        self.run_id = f"{self.host_pid}-{self.host_start}"
        self.path = self.runs_dir / f"{self.run_id}.json"
        self.started = time.time()
        self._workers: dict[int, int] = {}
        self._write_pending = False
        self._dirs_checked = False
        self._endpoints: dict[str, list[dict[str, Any]]] = {}
        """Control socket path -> the pools it serves (name and size of each)."""

    def add(self, pid: int) -> None:
        """Record a worker (call right after spawning it).

        In a Trio run the file is rewritten once at the end of the scheduler batch, not
        once per worker: sixteen workers starting together cost one write, where
        sixteen took a third of the host's time at start-up. A host SIGKILLed within
        that batch leaves the worker unrecorded, but not unfound: the reaper also kills
        whatever carries the dead run's id in its environment.
        """
        self._workers[pid] = start_time(pid) or 0
        if self._write_pending:
            return
        try:
            token = trio.lowlevel.current_trio_token()
        except RuntimeError:  # not in a Trio run
            self._write()
            return
        self._write_pending = True
        token.run_sync_soon(self._write_deferred)

    def _write_deferred(self) -> None:
        self._write_pending = False
        try:
            self._write()
        except (OSError, ConfigError):  # never into Trio's run loop, where this runs
            log.exception("cannot write the run registry %s", self.path)

    def remove(self, pid: int) -> None:
        """Forget a worker that has been reaped."""
        if self._workers.pop(pid, None) is not None:
            self._write()

    def add_endpoint(self, socket_path: str, pools: list[dict[str, Any]]) -> None:
        """Record a control socket and the pools it serves (``snakepit ls`` reads it)."""
        self._endpoints[socket_path] = pools
        self._write()

    def remove_endpoint(self, socket_path: str) -> None:
        if self._endpoints.pop(socket_path, None) is not None:
            self._write()

    def _write(self) -> None:
        if not self._workers and not self._endpoints:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            return
        if not self._dirs_checked:
            secure_dir(self.runs_dir.parent)
            secure_dir(self.runs_dir)
            self._dirs_checked = True
        record = {"run_id": self.run_id, "host_pid": self.host_pid,
                  "host_start": self.host_start, "started": self.started,
                  "workers": [{"pid": pid, "start": start}
                              for pid, start in self._workers.items()],
                  "endpoints": [{"socket": path, "pools": pools}
                                for path, pools in self._endpoints.items()]}
        temporary = self.path.with_suffix(".tmp")
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()  # made 0600 afresh, whatever was there
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(json.dumps(record))
        temporary.replace(self.path)  # atomic: a reader never sees half a file


def _runs(runs_dir: Path) -> Iterator[tuple[Path, dict[str, Any], bool]]:
    """Every readable run record of this user, with whether its host is still alive.

    A record's run id is its host's pid and start time, and its file is named after
    it; one where the three disagree (a record carrying a live run's id under another
    name, say) is not believed.
    """
    for path in sorted(runs_dir.glob("*.json")):
        try:
            data = read_own_file(path)
            if data is None:
                continue
            record = json.loads(data)
            host_pid, host_start = int(record["host_pid"]), int(record["host_start"])
            run_id = str(record["run_id"])
        except FileNotFoundError:
            continue  # its run ended while we looked
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("ignoring unreadable registry file %s", path)
            continue
        if not run_id == path.stem == f"{host_pid}-{host_start}":
            log.warning("ignoring registry file %s: its run id %r does not match its "
                        "name and host", path, run_id)
            continue
        yield path, record, start_time(host_pid) == host_start


def _dead_runs(runs_dir: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    for path, record, alive in _runs(runs_dir):
        if not alive:  # a live host's workers are its own business
            yield path, record


@attrs.frozen
class RunInfo:
    """A live run (a host process with pools), as ``snakepit ls`` shows it."""

    run_id: str
    host_pid: int
    started: float
    """Unix time the run's registry entry was created."""
    workers: int
    """Worker processes recorded for the run now."""
    endpoints: tuple[tuple[str, tuple[str, ...]], ...]
    """Each control socket and the names of the pools it serves."""

    @property
    def pools(self) -> tuple[str, ...]:
        return tuple(name for _, names in self.endpoints for name in names)


def live_runs(state_dir: Path) -> list[RunInfo]:
    """The runs in ``state_dir`` whose host is alive, oldest first."""
    runs_dir = state_dir / "runs"
    if not runs_dir.is_dir():
        return []
    found = []
    for _, record, alive in _runs(runs_dir):
        if not alive:
            continue
        endpoints = tuple((str(e["socket"]), tuple(str(p["name"]) for p in e["pools"]))
                          for e in record.get("endpoints", []))
        found.append(RunInfo(str(record["run_id"]), int(record["host_pid"]),
                             float(record.get("started", 0.0)),
                             len(record.get("workers", [])), endpoints))
    return sorted(found, key=lambda run: run.started)


def reap_orphans(state_dir: Path) -> list[Reaped]:
    """Kill what dead runs left behind; remove their files. Returns what was killed.

    Raises:
        ConfigError: the state dir (or a folder of it) is not this user's alone.
    """
    runs_dir = secure_dir(secure_dir(state_dir) / "runs")
    reaped: list[Reaped] = []
    for path, record in _dead_runs(runs_dir):
        run_id = str(record["run_id"])
        entry = f"{RUN_ID_ENV}={run_id}".encode()
        for worker in record.get("workers", []):
            pid, started = int(worker["pid"]), int(worker["start"])
            # the very process (not a reused pid), ours, and marked with the dead run
            if (start_time(pid) == started and owns_process(pid)
                    and process_environment_has(pid, entry)):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    if process_group(pid) == pid:  # a worker leads its own group
                        os.killpg(pid, signal.SIGKILL)
                    else:
                        os.kill(pid, signal.SIGKILL)
                    reaped.append(Reaped(pid, run_id, "recorded worker"))
        for pid in _pids_of_this_user():
            if pid not in {r.pid for r in reaped} and process_environment_has(pid, entry):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
                    reaped.append(Reaped(pid, run_id, "carries the run id"))
        for endpoint in record.get("endpoints", []):  # its control sockets answer no one
            socket_path = Path(str(endpoint.get("socket", "")))
            if socket_path.parent == state_dir / "control":
                with contextlib.suppress(FileNotFoundError):
                    socket_path.unlink()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        # shared-memory segments of the dead run (large call arguments and results)
        remove_own_segments(f"snakepit-{run_id}-")
    _remove_dead_sockets(state_dir / "control")
    for item in reaped:
        log.warning("reaped pid %d left by dead run %s (%s)", item.pid, item.run_id, item.why)
    return reaped


def _remove_dead_sockets(control_dir: Path) -> None:
    """Remove control sockets (``<host pid>-<start>-<n>.sock``) whose host is dead, even
    where no run record names them any more (a host killed between the two)."""
    if not control_dir.is_dir():
        return
    secure_dir(control_dir)
    for path in control_dir.glob("*.sock"):
        pid, _, rest = path.stem.partition("-")
        start = rest.partition("-")[0]
        if not (pid.isdigit() and start.isdigit()):
            continue  # not ours
        if start_time(int(pid)) != int(start):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def _pids_of_this_user() -> Iterator[int]:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid() and owns_process(
                int(entry.name)):
            yield int(entry.name)


_registries: dict[Path, RunRegistry] = {}


def registry_for(state_dir: Path) -> RunRegistry:
    """The process-wide registry entry for ``state_dir`` (created on first use)."""
    if state_dir not in _registries:
        _registries[state_dir] = RunRegistry(state_dir)
    return _registries[state_dir]
