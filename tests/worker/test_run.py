"""``run_worker``: one process from spawn to reaped exit, driven without a pool.

Real processes throughout: the bridge, and small scripts that get the handshake wrong.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import trio

import snakepit
from snakepit.adapters import LaunchSpec, find_adapter
from snakepit.process.registry import RUN_ID_ENV
from snakepit.protocol import wire
from snakepit.protocol.codecs import available_codecs
from snakepit.worker.run import offered_codecs, registry, run_worker, worker_environment
from snakepit.worker.worker import Worker, WorkerState
from tests.conftest import is_alive

# A worker that reads the host's hello and answers with a welcome naming ``CODEC``.
WRONG_CODEC = r"""
import json, os, struct, sys
size = struct.unpack(">I", os.read(0, 4))[0]
hello = json.loads(os.read(0, size))
welcome = json.dumps({"t": "welcome", "version": 1, "pid": os.getpid(), "codec": "CODEC",
                      "concurrency": 1, "capabilities": []}).encode()
os.write(1, struct.pack(">I", len(welcome)) + welcome)
sys.stdin.read()
"""


def spec(script: str) -> LaunchSpec:
    return LaunchSpec((sys.executable, "-c", script))


def never(worker: Worker) -> None:
    raise AssertionError(f"{worker.id} should not have become ready")


async def start_fails(config: snakepit.PoolConfig, launch: LaunchSpec,
                      offered: list[str]) -> snakepit.WorkerStartupError:
    with pytest.raises(snakepit.WorkerStartupError) as info:
        await run_worker(config, "w-0", lambda worker: None, never, launch, offered)
    return info.value


def test_offered_codecs_follow_the_config_and_the_adapter() -> None:
    assert offered_codecs(snakepit.PoolConfig(codec="json"), ("msgpack", "json")) == ["json"]
    auto = offered_codecs(snakepit.PoolConfig(codec="auto"), ("json",))
    assert auto == ["json"]
    both = offered_codecs(snakepit.PoolConfig(codec="auto"), ("msgpack", "json"))
    assert both == [c for c in available_codecs() if c in ("msgpack", "json")]


def test_a_workers_environment_carries_the_run_and_the_pools_settings() -> None:
    config = snakepit.PoolConfig(env={"ANSWER": "42"}, allowed_targets=("json", "math"))
    env = worker_environment(config, LaunchSpec(("true",), {"FROM_ADAPTER": "1"}))
    assert env["ANSWER"] == "42" and env["FROM_ADAPTER"] == "1"
    assert env[RUN_ID_ENV] == registry(config).run_id
    assert env[wire.ALLOWED_TARGETS_ENV] == "json,math"


async def test_a_worker_that_exits_before_its_handshake_reports_its_stderr() -> None:
    error = await start_fails(snakepit.PoolConfig(startup_timeout=10),
                              spec("import sys; sys.stderr.write('no module named x\\n'); "
                                   "sys.exit(3)"), ["msgpack"])
    assert "exited before its handshake" in str(error)
    assert "no module named x" in error.stderr_tail


async def test_a_worker_that_never_answers_is_killed_at_the_startup_timeout() -> None:
    pid_file = Path(f"/tmp/snakepit-test-run-{id(object())}")
    script = (f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); "
              "time.sleep(60)")
    try:
        with trio.fail_after(10):
            error = await start_fails(snakepit.PoolConfig(startup_timeout=0.5), spec(script),
                                      ["msgpack"])
        assert "no handshake within startup_timeout (0.5s)" in str(error)
        assert not is_alive(int(pid_file.read_text()))
    finally:
        pid_file.unlink(missing_ok=True)


async def test_a_worker_that_picks_a_codec_it_was_not_offered_fails_to_start() -> None:
    error = await start_fails(snakepit.PoolConfig(startup_timeout=10),
                              spec(WRONG_CODEC.replace("CODEC", "yaml")), ["json"])
    assert "chose codec 'yaml', which was not offered" in str(error)


async def test_a_ready_worker_serves_until_cancelled_then_is_reaped() -> None:
    config = snakepit.PoolConfig(startup_timeout=20)
    launch = find_adapter(config).launch(config, "w-0")
    ready: list[Worker] = []
    async with trio.open_nursery() as nursery:
        def on_ready(worker: Worker) -> None:
            assert worker.state is WorkerState.READY and worker.welcome is not None
            ready.append(worker)
            nursery.cancel_scope.cancel()  # the pool closing around it

        nursery.start_soon(run_worker, config, "w-0", lambda worker: None, on_ready, launch,
                           offered_codecs(config, ("msgpack", "json")))
    [worker] = ready
    assert worker.state is WorkerState.DEAD
    assert worker.process.returncode is not None
    assert not is_alive(worker.pid)
    assert worker.pid not in registry(config)._workers  # forgotten once reaped
