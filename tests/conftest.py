"""Shared fixtures: every test must leave no worker process behind."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

import snakepit

SUPPORT = Path(__file__).parent / "support"


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


def open_gate(gate: Path) -> None:
    """Let every ChaosHandler ``block_until`` waiting for ``gate`` return "done".

    The file appears atomically with its text, so no waiting call reads it empty.
    """
    staging = gate.with_suffix(".tmp")
    staging.write_text("done")
    staging.rename(gate)
