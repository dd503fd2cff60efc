"""A worker that breaks the wire is replaced; the host never hangs or crashes."""

import sys

import pytest
import trio

import snakepit
from tests.conftest import SUPPORT


def rogue(mode: str) -> snakepit.PoolConfig:
    return snakepit.PoolConfig(
        size=1, codec="json", max_frame_size=4096, kill_timeout=0.5, shutdown_grace=0.5,
        command=(sys.executable, str(SUPPORT / "rogue_worker.py"), mode),
        restart=snakepit.RestartPolicy(backoff_initial=0.01, backoff_max=0.02),
    )


@pytest.mark.parametrize("mode, message", [
    ("garbage", "undecodable json payload"),
    ("oversized", "over max_frame_size"),
    ("unknown_id", "unknown call id"),
])
async def test_bad_frames_are_protocol_errors_and_the_worker_is_replaced(mode: str,
                                                                         message: str) -> None:
    async with snakepit.open_pool(rogue(mode)) as pool:
        first_pid = pool.workers()[0].pid
        with trio.fail_after(10), pytest.raises(snakepit.ProtocolError, match=message):
            await pool.execute("echo", 1)
        with trio.fail_after(10):
            await pool.wait_ready()
        assert pool.workers()[0].pid != first_pid
        assert pool.stats().restarts == 1


async def test_worker_exiting_mid_call_is_a_crash_with_its_exit_code() -> None:
    async with snakepit.open_pool(rogue("exit")) as pool:
        with trio.fail_after(10), pytest.raises(snakepit.WorkerCrashed) as info:
            await pool.execute("echo", 1)
        assert info.value.exit_code == 5


async def test_worker_that_never_sends_a_welcome_is_a_startup_error() -> None:
    config = snakepit.PoolConfig(
        size=1, startup_timeout=5, kill_timeout=0.5,
        command=(sys.executable, "-c",
                 "import os, struct; os.write(1, struct.pack('>I', 5) + b'hello'); "
                 "import time; time.sleep(30)"),
    )
    with pytest.raises(snakepit.WorkerStartupError, match=r"undecodable|expected a welcome"):
        async with snakepit.open_pool(config):
            pytest.fail("the pool must not open")


async def test_a_good_answer_before_a_bad_header_is_delivered_first() -> None:
    """Nothing good is lost to a bad frame read with it: the call answered in the same
    write as an oversized header gets its result; then the worker is replaced."""
    async with snakepit.open_pool(rogue("result_then_oversized")) as pool:
        first_pid = pool.workers()[0].pid
        gone = trio.Event()

        def on_exit(event: str, measurements: object, metadata: dict[str, object]) -> None:
            if metadata.get("pid") == first_pid:
                gone.set()

        handler = snakepit.telemetry.attach("worker.exited", on_exit)  # type: ignore[arg-type]
        try:
            with trio.fail_after(10):
                assert await pool.execute("echo", 1) == "ok"
                await gone.wait()  # killed for the bad header that followed
                await pool.wait_ready()
        finally:
            snakepit.telemetry.detach(handler)
        assert pool.workers()[0].pid != first_pid
        assert pool.stats().restarts == 1
