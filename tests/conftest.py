"""Shared fixtures: every test must leave no worker process behind."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import snakepit

# The plugin's fixture (snakepit_pool), whether or not this environment's snakepit was
# installed with its pytest11 entry point (a conftest fixture of the same name wins).
from snakepit.testing.pytest_plugin import snakepit_pool  # noqa: F401

SUPPORT = Path(__file__).parent / "support"
ROOT = Path(__file__).resolve().parents[1]


def child_pids() -> set[int]:
    """Pids of this process's children (any thread's), zombies included."""
    pids: set[int] = set()
    for task in Path("/proc/self/task").iterdir():
        try:
            pids.update(int(p) for p in (task / "children").read_text().split())
        except FileNotFoundError:
            continue
    return pids


def is_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def processes_of_run(run_id: str) -> list[int]:
    """Live processes (not zombies) carrying ``SNAKEPIT_RUN_ID=run_id`` in their
    environment: every worker a run started, and whatever those started in turn --
    found the way the run registry finds them, not from pids a test happened to see."""
    from snakepit.process.registry import RUN_ID_ENV, process_environment_has

    entry = f"{RUN_ID_ENV}={run_id}".encode()
    return [int(proc.name) for proc in Path("/proc").iterdir()
            if proc.name.isdigit() and int(proc.name) != os.getpid()
            and process_environment_has(int(proc.name), entry) and is_alive(int(proc.name))]


@pytest.fixture(autouse=True)
def no_leaked_processes() -> object:
    before = child_pids()
    yield
    leaked = child_pids() - before
    assert not leaked, f"test leaked child processes: {sorted(leaked)}"


def chaos_config(**overrides: object) -> snakepit.PoolConfig:
    """A small pool serving snakepit.testing.ChaosHandler, with quick restarts."""
    options: dict[str, object] = {
        "size": 2,
        "handler": "snakepit.testing:ChaosHandler",
        "startup_timeout": 20.0,
        "shutdown_grace": 2.0,
        "kill_timeout": 1.0,
        "restart": snakepit.RestartPolicy(backoff_initial=0.01, backoff_max=0.05),
    }
    options.update(overrides)
    return snakepit.PoolConfig(**options)  # type: ignore[arg-type]


def mock_clock_config(**overrides: object) -> snakepit.PoolConfig:
    """:func:`chaos_config` for tests on trio's MockClock: time moves only when the test
    jumps it, so nothing but the behaviour under test may wait on the clock -- no
    heartbeat or health check (they count real time, so a jump is not silence, but their
    pings would add frames the test did not ask for), restarts without backoff.
    """
    options: dict[str, object] = {
        "heartbeat_interval": None,
        "health_check_interval": None,
        "restart": snakepit.RestartPolicy(backoff_initial=0, backoff_max=0),
    }
    options.update(overrides)
    return chaos_config(**options)


def support_env() -> dict[str, str]:
    """Environment that lets workers import tests/support modules."""
    return {"PYTHONPATH": os.pathsep.join([str(SUPPORT), *sys.path])}


async def started(pool: snakepit.Pool, nursery: object, command: str, args: object,
                  **kwargs: object) -> None:
    """Start ``command`` in ``nursery`` and return once the worker is running it.

    ChaosHandler's ``sleep`` and ``nap`` report progress when they begin; waiting for
    that event (not for a while) is what makes tests about running calls deterministic.
    """
    import trio

    running = trio.Event()

    async def call() -> None:
        try:
            await pool.execute(command, args, on_progress=lambda *_: running.set(),
                               **kwargs)  # type: ignore[arg-type]
        except snakepit.SnakepitError:
            pass

    nursery.start_soon(call)  # type: ignore[attr-defined]
    await running.wait()


async def kill_and_wait(pool: snakepit.Pool, pid: int) -> None:
    """SIGKILL worker ``pid`` and return once the pool has seen it exit and replaced it."""
    import signal

    import trio

    gone = trio.Event()

    def on_exit(event: str, measurements: object, metadata: dict[str, object]) -> None:
        if metadata.get("pid") == pid:
            gone.set()

    handler = snakepit.telemetry.attach("worker.exited", on_exit)  # type: ignore[arg-type]
    try:
        os.kill(pid, signal.SIGKILL)
        with trio.fail_after(10):
            await gone.wait()
            await pool.wait_ready()
    finally:
        snakepit.telemetry.detach(handler)


@contextlib.contextmanager
def wall_clock_limit(seconds: float) -> Iterator[None]:
    """Fail the test if the block runs longer than ``seconds`` of *real* time.

    The safety net of tests on trio's MockClock, where ``trio.fail_after`` only fires
    when the test moves the clock: a thread cancels the block instead, so a broken
    behaviour fails the test rather than hanging the suite.
    """
    import threading

    import trio

    scope = trio.CancelScope()
    token = trio.lowlevel.current_trio_token()
    timer = threading.Timer(seconds, lambda: token.run_sync_soon(scope.cancel))
    timer.start()
    try:
        with scope:
            yield
    finally:
        timer.cancel()
    if scope.cancelled_caught:
        pytest.fail(f"still running after {seconds}s of real time")


def open_gate(gate: Path) -> None:
    """Let every ChaosHandler ``block_until`` waiting for ``gate`` return "done".

    The file appears atomically with its text, so no waiting call reads it empty.
    """
    staging = gate.with_suffix(".tmp")
    staging.write_text("done")
    staging.rename(gate)


async def hold_open(pool: snakepit.Pool, nursery: Any, gate: Path, results: list[Any], *,
                    command: str = "block_until", **args: Any) -> None:
    """Start ``command`` (ChaosHandler's ``block_until``: it returns once ``gate``
    exists) in ``nursery`` and return once the worker runs it; its result lands in
    ``results``. Release it with :func:`open_gate` -- no timing involved."""
    import trio

    running = trio.Event()

    async def call() -> None:
        results.append(await pool.execute(command, {"path": str(gate), **args},
                                          on_progress=lambda *_: running.set()))

    nursery.start_soon(call)
    await running.wait()


def installed_snakepit(directory: Path) -> dict[str, str]:
    """An environment for a subprocess in which snakepit is *installed*: ``directory``
    gets the ``snakepit-*.dist-info`` an installer writes from pyproject.toml (its
    entry points, the ``pytest11`` plugin among them), in front of the source tree.

    Returns the environment (``PYTHONPATH`` set) to run ``python -m pytest`` with.
    Building a wheel needs hatchling, which this offline box lacks; the metadata is
    what an installer derives from the same pyproject table.
    """
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    info = directory / f"snakepit-{project['version']}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: snakepit\nVersion: {project['version']}\n")
    groups = {"console_scripts": project.get("scripts", {}),
              **project.get("entry-points", {})}
    (info / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{name} = {value}\n" for name, value in entries.items())
        + "\n" for group, entries in groups.items()))
    path = [str(directory), str(ROOT / "src"), *os.environ.get("PYTHONPATH", "").split(os.pathsep)]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p)}
