"""snakepit-node through real Node.js workers: the adapter, pools, and the raw protocol."""

from __future__ import annotations

import functools
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

import snakepit
from snakepit.adapters import find_adapter
from snakepit.plugins import installed_plugins
from snakepit_node import EXAMPLE_HANDLER, JS_DIR, NodeAdapter, ensure_node_modules

# No skip when node is missing: these tests are the plugin's proof, and a machine
# without Node.js should fail them loudly rather than report them as passed.
assert shutil.which("node"), "the snakepit-node tests need Node.js on PATH"

HANDLER = EXAMPLE_HANDLER


def node_config(**overrides: Any) -> snakepit.PoolConfig:
    settings: dict[str, Any] = {"name": "js", "size": 1, "adapter": "node",
                                "options": {"module": HANDLER}}
    settings.update(overrides)
    return snakepit.PoolConfig(**settings)


def gone(pid: int) -> bool:
    """Whether ``pid`` has exited (no /proc entry, or a zombie awaiting its reaper)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"


# -- the adapter -------------------------------------------------------------------------
def test_found_through_its_entry_point() -> None:
    assert any(p.distribution == "snakepit-node" and p.group == "snakepit.adapters"
               and p.name == "node" and p.error is None for p in installed_plugins())
    adapter = find_adapter(node_config())
    assert isinstance(adapter, NodeAdapter)
    assert adapter.name == "node" and adapter.codecs == ("msgpack", "json")


def test_launch_spec_runs_the_packaged_worker(tmp_path: Path) -> None:
    js_dir = ensure_node_modules()
    assert (js_dir / "node_modules" / "@msgpack" / "msgpack").is_dir()
    spec = NodeAdapter().launch(node_config(options={"module": HANDLER, "concurrency": 3}),
                                "js-0")
    assert os.path.basename(spec.argv[0]).startswith("node")
    assert spec.argv[1:] == (str(js_dir / "worker.js"), "--handler", HANDLER,
                             "--concurrency", "3")
    handler = tmp_path / "h.js"
    handler.write_text("module.exports = {};\n")
    relative = NodeAdapter().launch(node_config(cwd=str(tmp_path), options={"module": "h.js"}),
                                    "js-0")
    assert relative.argv[-1] == str(handler) and relative.cwd == str(tmp_path)
    bare = NodeAdapter().launch(node_config(options={}), "js-0")
    assert "--handler" not in bare.argv


def test_bad_options_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(snakepit.ConfigError, match=r"options\.node"):
        NodeAdapter().launch(node_config(options={"node": str(tmp_path / "no-node")}), "js-0")
    with pytest.raises(snakepit.ConfigError, match=r"options\.module: no such file"):
        NodeAdapter().launch(node_config(options={"module": str(tmp_path / "x.js")}), "js-0")
    with pytest.raises(snakepit.ConfigError, match=r"options\.concurrency"):
        NodeAdapter().launch(node_config(options={"concurrency": 0}), "js-0")


async def test_a_missing_node_fails_the_pool_start_with_a_config_error() -> None:
    with pytest.raises(snakepit.ConfigError, match=r"options\.node"):
        async with snakepit.open_pool(node_config(options={"node": "/nonexistent/node"})):
            pass  # pragma: no cover


async def test_a_handler_that_fails_to_load_is_a_startup_error(tmp_path: Path) -> None:
    broken = tmp_path / "broken.js"
    broken.write_text("throw new Error('broken on purpose');\n")
    with pytest.raises(snakepit.WorkerStartupError, match="broken on purpose"):
        async with snakepit.open_pool(node_config(options={"module": str(broken)},
                                                  restart=snakepit.RestartPolicy(
                                                      max_restarts=0))):
            pass  # pragma: no cover


# -- pools -------------------------------------------------------------------------------
@pytest.mark.parametrize("codec", ["msgpack", "json"])
async def test_built_in_commands_under_both_codecs(codec: str) -> None:
    async with snakepit.open_pool(node_config(size=2, codec=codec)) as pool:
        pong = await pool.execute("ping")
        assert pong["pong"] is True and isinstance(pong["pid"], int)
        value = {"s": "héllo ✓", "i": 42, "f": 2.5, "l": [1, None, True], "d": {"k": "v"},
                 "neg": -7, "big": 2**40, "nan": float("inf")}
        assert await pool.execute("echo", value) == value
        info = await pool.execute("info")
        assert info["node"].startswith("v") and info["pid"] in {w.pid for w in pool.workers()}
        assert {"ping", "echo", "info", "compute", "greet", "count"} <= set(info["commands"])
        assert isinstance(info["uptime"], float) and info["calls_served"] >= 0
        assert await pool.execute("compute", {"op": "add", "a": 2, "b": 3}) == 5
        assert await pool.execute("compute", {"op": "div", "a": 7, "b": 2}) == 3.5
        assert await pool.execute("compute", {"op": "floordiv", "a": -7, "b": 2}) == -4
        assert await pool.execute("compute", {"op": "mod", "a": -7, "b": 3}) == 2
        assert await pool.execute("compute", {"op": "pow", "a": 2, "b": 10}) == 1024
        assert await pool.execute("compute", {"op": "sum", "values": [1, 2, 3.5]}) == 6.5
        with pytest.raises(snakepit.RemoteError) as caught:
            await pool.execute("compute", {"op": "div", "a": 1, "b": 0})
        assert caught.value.remote_type == "ZeroDivisionError"
        if codec == "msgpack":
            blob = bytes(range(256)) * 4
            assert await pool.execute("echo", {"data": blob}) == {"data": blob}
            assert await pool.execute("reverse_bytes", {"data": b"abc"}) == b"cba"
            large = os.urandom(8 << 20)
            assert await pool.execute("echo", large) == large
        else:
            with pytest.raises(snakepit.PayloadError):  # JSON cannot carry bytes
                await pool.execute("echo", b"bytes")


async def test_handler_commands_and_errors() -> None:
    async with snakepit.open_pool(node_config()) as pool:
        assert await pool.execute("greet", {"name": "Trio"}) == "Hello, Trio!"
        with pytest.raises(snakepit.RemoteError) as caught:
            await pool.execute("fail", {"message": "boom from js"})
        assert caught.value.remote_type == "Error"
        assert caught.value.remote_message == "boom from js"
        assert "example_handler.js" in caught.value.remote_traceback
        with pytest.raises(snakepit.UnknownCommand, match="no_such_command"):
            await pool.execute("no_such_command")
        # the worker stays in service after both
        assert await pool.execute("greet") == "Hello, world!"
        seen: list[tuple[float, float | None, str | None]] = []
        ticks = await pool.execute("ticks", {"n": 3},
                                   on_progress=lambda *p: seen.append(p))
        assert [t["tick"] for t in ticks] == [0, 1, 2]
        assert seen == [(1, 3, "tick 1"), (2, 3, "tick 2"), (3, 3, "tick 3")]


async def test_streams_in_order_and_cancelled_early() -> None:
    async with snakepit.open_pool(node_config()) as pool:
        pid = (await pool.execute("info"))["pid"]
        async with pool.stream("count", {"n": 100}) as chunks:
            assert [c async for c in chunks] == list(range(100))
        async with pool.stream("count", {"n": 500}, window=8) as chunks:
            assert [c async for c in chunks] == list(range(500))
        assert await pool.execute("count", {"n": 5}) == [0, 1, 2, 3, 4]  # plain call
        async with pool.stream("greet", {"name": "one"}) as chunks:  # plain value: 1 chunk
            assert [c async for c in chunks] == ["Hello, one!"]
        async with pool.stream("count", {"n": 1_000_000}) as chunks:
            taken = []
            async for chunk in chunks:
                taken.append(chunk)
                if len(taken) == 5:
                    break
        assert taken == [0, 1, 2, 3, 4]
        info = await pool.execute("info")
        assert info["pid"] == pid  # cancelled in the worker, not killed
        assert pool.stats().restarts == 0


async def test_a_timeout_with_a_cooperative_handler_keeps_the_worker() -> None:
    async with snakepit.open_pool(node_config()) as pool:
        pid = (await pool.execute("info"))["pid"]
        started = trio.current_time()
        with pytest.raises(snakepit.WorkerTimeout):
            await pool.execute("slow", {"seconds": 10}, timeout=0.3)
        assert trio.current_time() - started < 2
        assert (await pool.execute("info"))["pid"] == pid
        assert pool.stats().restarts == 0


async def test_sessions_keep_state_until_dropped() -> None:
    async with snakepit.open_pool(node_config()) as pool:
        async with pool.session() as session:
            assert [await session.execute("tally") for _ in range(3)] == [1, 2, 3]
            assert session.id in (await pool.execute("info"))["sessions"]
        async with pool.session() as other:
            assert await other.execute("tally") == 1
        assert (await pool.execute("info"))["sessions"] == []
        with pytest.raises(snakepit.RemoteError, match="has no session"):
            await pool.execute("tally")


async def test_node_and_python_pools_side_by_side() -> None:
    config = {"pools": {"py": {"size": 1},
                        "js": {"size": 2, "adapter": "node", "options": {"module": HANDLER}}},
              "routes": {"greet": "js"}, "default_pool": "py"}
    async with snakepit.open_pools(config) as pools:
        assert await pools.execute("greet", {"name": "mixed"}) == "Hello, mixed!"
        py_info = await pools.execute("info")
        assert "python" in py_info and "node" not in py_info
        js_pool = pools["js"]
        infos = [await js_pool.execute("info") for _ in range(4)]
        assert all(i["node"].startswith("v") for i in infos)
        js_pids = {w.pid for w in js_pool.workers()}
        assert len(js_pids) == 2 and {i["pid"] for i in infos} <= js_pids
        assert await pools.execute("compute", {"op": "mul", "a": 6, "b": 7}) == 42
        assert await js_pool.execute("compute", {"op": "mul", "a": 6, "b": 7}) == 42
        pids = js_pids | {py_info["pid"]}
        assert not any(gone(pid) for pid in pids)
    assert all(gone(pid) for pid in pids)


async def test_a_killed_node_worker_is_replaced() -> None:
    async with snakepit.open_pool(node_config()) as pool:
        pid = (await pool.execute("info"))["pid"]
        crashed: list[BaseException] = []

        async def doomed() -> None:
            try:
                await pool.execute("slow", {"seconds": 30})
            except snakepit.WorkerCrashed as exc:
                crashed.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(doomed)
            with trio.fail_after(5):
                while pool.workers()[0].in_flight == 0:  # noqa: ASYNC110 - polling a count
                    await trio.sleep(0.01)
            os.kill(pid, signal.SIGKILL)
        assert len(crashed) == 1
        await pool.wait_ready()
        info = await pool.execute("info")
        assert info["pid"] != pid and gone(pid)
        assert await pool.execute("greet", {"name": "again"}) == "Hello, again!"


MEETING = """'use strict';
// Each call waits until `n` calls are in flight at once, then all of them return.
const events = [];
let waiting = [];
module.exports = {
  async meet(args) {
    events.push(['start', args.id]);
    await new Promise((resolve) => {
      waiting.push(resolve);
      if (waiting.length === args.n) { waiting.forEach((wake) => wake()); waiting = []; }
    });
    events.push(['end', args.id]);
    return args.id;
  },
  log() { return events; },
};
"""


async def test_concurrency_runs_async_calls_at_once(tmp_path: Path) -> None:
    handler = tmp_path / "meet.js"
    handler.write_text(MEETING)
    async with snakepit.open_pool(node_config(options={"module": str(handler),
                                                       "concurrency": 4})) as pool:
        assert pool.workers()[0].capacity == 4
        async with trio.open_nursery() as nursery:
            for n in range(4):  # run one at a time, the first would wait for the others
                nursery.start_soon(functools.partial(  # forever: the timeout is a safety net
                    pool.execute, "meet", {"id": n, "n": 4}, timeout=60))
        events = await pool.execute("log")
        assert [kind for kind, _ in events] == ["start"] * 4 + ["end"] * 4
        assert sorted(n for _, n in events[:4]) == [0, 1, 2, 3]


# -- installing the npm dependency ------------------------------------------------------
FAKE_NPM = r"""
import os, shutil, socket, sys

# a stand-in for npm: reports that it runs, waits for the test's word, then "installs"
# (copies the real, already installed node_modules) or fails as npm does
gate = socket.socket(socket.AF_UNIX)
gate.settimeout(30)
gate.connect(os.environ["FAKE_NPM_GATE"])
gate.sendall(b"npm " + " ".join(sys.argv[1:]).encode() + b"\n")
word = gate.recv(16)
if word != b"install":
    print("npm ERR! code E404\nnpm ERR! 404 Not Found - @msgpack/msgpack", file=sys.stderr)
    sys.exit(1)
shutil.copytree(os.environ["FAKE_NPM_SOURCE"], "node_modules")
"""


@pytest.fixture
def fake_npm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """A node (the real one, by a symlink) with a fake npm beside it, a fresh install
    home, and the Unix socket path the fake npm reports to."""
    source = ensure_node_modules() / "node_modules"  # the real dependency, installed
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    node = bin_dir / "node"
    node.symlink_to(shutil.which("node") or "node")
    npm = bin_dir / "npm"
    npm.write_text(f"#!{sys.executable}\n{FAKE_NPM}")
    npm.chmod(0o755)
    gate = str(tmp_path / "npm.sock")
    monkeypatch.setenv("SNAKEPIT_NODE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FAKE_NPM_GATE", gate)
    monkeypatch.setenv("FAKE_NPM_SOURCE", str(source))
    return str(node), gate


async def npm_started(gate: str) -> trio.SocketStream:
    """Wait for the fake npm to report; returns the connection to answer it on."""
    listener = trio.socket.socket(trio.socket.AF_UNIX)
    await listener.bind(gate)
    listener.listen(1)
    with listener, trio.fail_after(60):
        connection, _ = await listener.accept()
    stream = trio.SocketStream(connection)
    assert (await stream.receive_some(100)).startswith(b"npm ci ")
    return stream


async def test_npm_installs_off_the_event_loop(fake_npm: tuple[str, str], tmp_path: Path
                                               ) -> None:
    node, gate = fake_npm
    greeting: list[str] = []

    async def open_and_greet() -> None:
        config = node_config(options={"module": HANDLER, "node": node})
        async with snakepit.open_pool(config) as pool:
            greeting.append(await pool.execute("greet", {"name": "npm"}))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(open_and_greet)
        # npm is running and waits for us: this loop, which must answer it, still runs
        # (npm run on the loop, as before, would block it until the fake gave up)
        npm = await npm_started(gate)
        assert not greeting
        await npm.send_all(b"install")
    assert greeting == ["Hello, npm!"]
    [marker] = (tmp_path / "home").glob("*/node_modules/.snakepit-node-installed")
    copied = marker.parent.parent  # worker.js requires its modules: all were copied
    assert {p.name for p in copied.glob("*.js")} == {p.name for p in JS_DIR.glob("*.js")}


async def test_a_failed_npm_install_fails_the_pool_start_clearly(fake_npm: tuple[str, str]
                                                                ) -> None:
    node, gate = fake_npm

    async def answer() -> None:
        npm = await npm_started(gate)
        await npm.send_all(b"fail")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(answer)
        with pytest.raises(snakepit.ConfigError, match=r"(?s)failed with exit code 1.*E404"):
            async with snakepit.open_pool(node_config(options={"module": HANDLER,
                                                               "node": node})):
                pass  # pragma: no cover
