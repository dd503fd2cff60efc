"""The control socket: owner-only, answers operators, takes recycle and drain."""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

import snakepit
from snakepit.control.client import ControlClient, ControlError, InstanceGone, find_run
from snakepit.process.registry import live_runs
from tests.conftest import chaos_config


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """A short, world-traversable directory (Unix socket paths are limited to 107 bytes,
    and the other-user test must reach the control directory to be refused there)."""
    directory = Path(tempfile.mkdtemp(prefix="sp-"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def socket_of(state_dir: Path) -> str:
    (run,) = live_runs(state_dir)
    ((path, _),) = run.endpoints
    return path


async def ask(path: str, op: str, **arguments: Any) -> Any:
    def request() -> Any:
        with ControlClient(path) as client:
            return client.request(op, **arguments)

    return await trio.to_thread.run_sync(request)


async def test_socket_is_owner_only_and_registered(state_dir: Path) -> None:
    config = chaos_config(name="ops", state_dir=str(state_dir))
    async with snakepit.open_pool(config):
        (run,) = live_runs(state_dir)
        assert run.host_pid == os.getpid() and run.pools == ("ops",) and run.workers == 2
        path = Path(socket_of(state_dir))
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert stat.S_ISSOCK(path.stat().st_mode)
    # gone with the pool: the socket file and the registry entry
    assert not path.exists() and live_runs(state_dir) == []


async def test_answers_stats_workers_sessions_and_events(state_dir: Path) -> None:
    config = chaos_config(name="ops", state_dir=str(state_dir))
    async with snakepit.open_pool(config) as pool:
        for i in range(10):
            await pool.execute("echo", i)
        with pytest.raises(snakepit.RemoteError):
            await pool.execute("raise")
        async with pool.session(ttl=60) as session:
            await session.execute("incr")
            path = socket_of(state_dir)
            hello = await ask(path, "hello")
            stats = await ask(path, "stats")
            workers = await ask(path, "workers")
            sessions = await ask(path, "sessions")
            events = await ask(path, "events")
    assert hello["host_pid"] == os.getpid() and hello["pools"] == ["ops"]
    ops = stats["pools"]["ops"]
    assert ops["calls"] == 12 and ops["succeeded"] == 11 and ops["failed"] == 1
    assert [w["id"] for w in ops["workers"]] == ["ops-0", "ops-1"]
    assert workers["ops"] == ops["workers"]
    assert sessions["ops"]["count"] == 1 and sessions["ops"]["sessions"][0]["worker"]
    names = [event["event"] for event in events]
    assert names.count("worker.ready") == 2 and "call.exception" in names
    assert "call.stop" not in names  # per-call noise is counted, not logged
    assert stats["events"] == events[-20:]


async def test_recycle_and_drain_take_effect(state_dir: Path) -> None:
    config = chaos_config(name="ops", state_dir=str(state_dir))
    async with snakepit.open_pool(config) as pool:
        path = socket_of(state_dir)
        old = pool.stats().workers[0].pid
        answer = await ask(path, "recycle", worker="ops-0")
        assert answer["old_pid"] == old and answer["new_pid"] not in (None, old)
        assert pool.stats().workers[0].pid == answer["new_pid"]
        assert pool.stats().workers[0].restarts == 1
        assert await pool.execute("echo", 1) == 1

        await ask(path, "drain")
        assert pool.stats().draining
        with pytest.raises(snakepit.PoolDraining) as caught:
            await pool.execute("echo", 2)
        assert caught.value.retryable
        await ask(path, "resume")
        assert await pool.execute("echo", 3) == 3


async def test_bad_requests_get_typed_errors_and_the_pool_carries_on(state_dir: Path) -> None:
    config = chaos_config(name="ops", state_dir=str(state_dir))
    async with snakepit.open_pool(config) as pool:
        path = socket_of(state_dir)
        with pytest.raises(ControlError) as unknown:
            await ask(path, "reboot")
        assert unknown.value.kind == "UnknownCommand"
        with pytest.raises(ControlError) as missing:
            await ask(path, "recycle", worker="ops-9")
        assert missing.value.kind == "NotFound"
        with pytest.raises(ControlError) as no_pool:
            await ask(path, "drain", pool="nope")
        assert no_pool.value.kind == "NotFound"

        def garbage() -> bytes:  # a frame header announcing 1 GiB: dropped, not served
            import socket

            with socket.socket(socket.AF_UNIX) as raw:
                raw.connect(path)
                raw.sendall(b"\x40\x00\x00\x00junk")
                return raw.recv(100)

        assert await trio.to_thread.run_sync(garbage) == b""
        assert await pool.execute("echo", "still here") == "still here"


async def test_open_pools_serves_one_socket_for_every_pool(state_dir: Path) -> None:
    config = snakepit.SnakepitConfig(pools={
        name: chaos_config(name=name, size=1, state_dir=str(state_dir))
        for name in ("general", "optimizer")})
    async with snakepit.open_pools(config):
        run = find_run(state_dir, None)
        assert run.pools == ("general", "optimizer") and len(run.endpoints) == 1
        stats = await ask(run.endpoints[0][0], "stats")
        assert set(stats["pools"]) == {"general", "optimizer"}
        with pytest.raises(ControlError):
            await ask(run.endpoints[0][0], "drain")  # two pools: which one?
        await ask(run.endpoints[0][0], "drain", pool="optimizer")
        assert stats["pools"]["general"]["draining"] is False


async def test_control_can_be_turned_off(state_dir: Path, monkeypatch: Any) -> None:
    async with snakepit.open_pool(chaos_config(state_dir=str(state_dir), control=False)):
        assert live_runs(state_dir)[0].endpoints == ()
    monkeypatch.setenv("SNAKEPIT_CONTROL", "0")
    async with snakepit.open_pool(chaos_config(state_dir=str(state_dir))):
        assert live_runs(state_dir)[0].endpoints == ()
    with pytest.raises(snakepit.ConfigError, match="control"):
        chaos_config(control="yes")


async def test_client_of_a_closed_instance_says_it_is_gone(state_dir: Path) -> None:
    async with snakepit.open_pool(chaos_config(state_dir=str(state_dir))):
        path = socket_of(state_dir)
    with pytest.raises(InstanceGone):
        await ask(path, "hello")


NOBODY = 65534
PEER = """
import socket, struct, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except OSError as exc:
    print("refused:", type(exc).__name__); sys.exit(0)
payload = bytes([0x81, 0xa2, 0x6f, 0x70, 0xa5]) + b"hello"  # msgpack {"op": "hello"}
try:
    s.sendall(struct.pack(">I", len(payload)) + payload)
    answer = s.recv(1 << 16)
except (BrokenPipeError, ConnectionResetError):  # closed on us before or after we wrote
    answer = b""
print("answer:", len(answer))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a peer as another user")
async def test_a_peer_of_another_user_cannot_connect(state_dir: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    python = shutil.which("python3", path="/usr/bin:/bin") or sys.executable

    async def peer(path: str) -> str:
        done = await trio.run_process([python, "-c", PEER, path], user=NOBODY,
                                      capture_stdout=True, capture_stderr=True, check=False)
        assert done.returncode == 0, done.stderr
        return done.stdout.decode().strip()

    async with snakepit.open_pool(chaos_config(state_dir=str(state_dir))):
        path = socket_of(state_dir)
        # as made: the 0700 directory and the 0600 socket keep the other user out
        assert await peer(path) == "refused: PermissionError"
        Path(path).parent.chmod(0o755)
        state_dir.chmod(0o755)  # made 0700 too; loosened like the control directory
        assert await peer(path) == "refused: PermissionError"  # the socket's own mode
        # with both modes loosened, the peer's credentials still turn it away
        Path(path).chmod(0o777)
        with caplog.at_level(logging.WARNING, logger="snakepit.control"):
            assert await peer(path) == "answer: 0"
        assert f"refused a control connection from uid {NOBODY}" in caplog.text
        assert json.dumps(await ask(path, "hello"))  # the owner still gets answers


async def test_sockets_of_dead_hosts_are_removed_when_a_pool_starts(state_dir: Path) -> None:
    control = state_dir / "control"
    control.mkdir(mode=0o700)
    dead = control / "1-1-0.sock"  # pid 1 did not start at tick 1
    dead.touch()
    stranger = control / "notes.sock"  # not named like ours: left alone
    stranger.touch()
    async with snakepit.open_pool(chaos_config(state_dir=str(state_dir))):
        live = Path(socket_of(state_dir))
        assert not dead.exists() and stranger.exists() and live.exists()
