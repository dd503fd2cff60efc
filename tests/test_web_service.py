"""examples/web_service.py as a real server on 127.0.0.1, driven over HTTP.

The server is a subprocess (quart-trio on hypercorn, its own pool of real workers);
the test talks to it with httpx and with raw sockets for the clients that go away, and
stops it with a signal: it must exit 0 and leave no worker process behind.
"""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

import snakepit
from tests.conftest import is_alive

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "web_service.py"


def processes_of_host(host_pid: int) -> list[int]:
    """Live processes a snakepit host started (they carry its pid in their environment):
    every worker it ever had, replacements included."""
    from snakepit.process.registry import process_environment_has

    entry = f"SNAKEPIT_HOST_PID={host_pid}".encode()
    return [int(proc.name) for proc in Path("/proc").iterdir()
            if proc.name.isdigit() and is_alive(int(proc.name))
            and process_environment_has(int(proc.name), entry)]


class Server:
    """A running example server and an HTTP client for it."""

    def __init__(self, url: str, process: trio.Process, client: httpx.AsyncClient) -> None:
        self.url = url
        self.host, port = url.removeprefix("http://").rsplit(":", 1)
        self.port = int(port)
        self.process = process
        self.client = client
        self.worker_pids: set[int] = set()

    async def get(self, path: str) -> httpx.Response:
        return await self.client.get(path)

    async def workers(self) -> list[dict[str, Any]]:
        """The pool's workers, by ``/stats``; remembers every pid seen."""
        workers: list[dict[str, Any]] = (await self.get("/stats")).json()["workers"]
        self.worker_pids.update(w["pid"] for w in workers if w["pid"] is not None)
        return workers

    async def wait_in_flight(self, n: int) -> None:
        """Return once the pool has ``n`` calls in flight. The server is another process,
        so there is no event to await: ask it, a few times a second."""
        with trio.fail_after(10):
            while (await self.get("/stats")).json()["in_flight"] != n:  # noqa: ASYNC110
                await trio.sleep(0.02)

    @asynccontextmanager
    async def raw_request(self, path: str) -> AsyncIterator[trio.SocketStream]:
        """A GET sent on a plain socket, closed (without reading the rest) on exit."""
        stream = await trio.open_tcp_stream(self.host, self.port)
        try:
            await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode())
            yield stream
        finally:
            await stream.aclose()


async def body_started(stream: trio.SocketStream) -> bytes:
    """Read until the response's headers and some of its body have arrived."""
    received = b""
    with trio.fail_after(10):
        while b"\r\n\r\n" not in received or received.endswith(b"\r\n\r\n"):
            data = await stream.receive_some(65536)
            assert data, f"the server closed the connection: {received!r}"
            received += data
    assert received.startswith(b"HTTP/1.1 200"), received[:200]
    return received


@asynccontextmanager
async def serving(tmp_path: Path, stop: signal.Signals, **env: str) -> AsyncIterator[Server]:
    """Run the example on an ephemeral port; on exit stop it with ``stop`` and check
    that it exits 0 and that no worker outlives it."""
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        process = await trio.lowlevel.open_process(
            [sys.executable, str(EXAMPLE), "0"], stdout=subprocess.PIPE, stderr=log,
            env={**os.environ, "GRACEFUL_TIMEOUT": "2", **env})
    try:
        assert process.stdout is not None
        line = b""
        with trio.fail_after(30):
            while not line.endswith(b"\n"):
                data = await process.stdout.receive_some(1024)
                assert data, f"the server exited: {log_path.read_text()}"
                line += data
        match = re.fullmatch(r"listening on (http://127\.0\.0\.1:\d+)\n", line.decode())
        assert match, line
        async with httpx.AsyncClient(base_url=match.group(1), timeout=20) as client:
            server = Server(match.group(1), process, client)
            yield server
            await server.workers()
        process.send_signal(stop)
        with trio.fail_after(30):
            code = await process.wait()
        assert code == 0, log_path.read_text()
        assert f"{stop.name}: shutting down" in log_path.read_text()
        assert server.worker_pids
        assert not [pid for pid in server.worker_pids if is_alive(pid)]
        assert not processes_of_host(process.pid)
    finally:
        if process.returncode is None:
            process.kill()
            with trio.move_on_after(10):
                await process.wait()


async def test_calls_errors_and_a_crash_over_http(tmp_path: Path) -> None:
    async with serving(tmp_path, signal.SIGINT, POOL_SIZE="1") as server:
        response = await server.get("/echo?text=hi")
        assert (response.status_code, response.json()) == (200, {"echo": "hi"})

        response = await server.get("/nap?seconds=30&timeout=0.3")
        assert response.status_code == 504
        assert response.json()["error"] == "WorkerTimeout"
        assert response.json()["retryable"] is False

        response = await server.get("/echo?timeout=-1")
        assert (response.status_code, response.json()["error"]) == (400, "ConfigError")

        # a worker crash is a 502, and the next request succeeds on its replacement
        [before] = await server.workers()
        response = await server.get("/crash")
        assert (response.status_code, response.json()["error"]) == (502, "WorkerCrashed")
        assert response.json()["retryable"] is False
        response = await server.get("/echo?text=again")
        assert (response.status_code, response.json()) == (200, {"echo": "again"})
        [after] = await server.workers()
        assert after["pid"] != before["pid"]

        # a stream that fails before its first chunk is a status, not a truncated body
        response = await server.get("/count?n=0&crash=1")
        assert (response.status_code, response.json()["error"]) == (502, "WorkerCrashed")
        response = await server.get("/count?n=5")
        assert response.status_code == 200
        assert response.text.split() == ["0", "1", "2", "3", "4"]

        # after the headers, a failure can only abort the body: never a clean end
        lines = []
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            async with server.client.stream("GET", "/count?n=3&crash=1") as streamed:
                assert streamed.status_code == 200
                async for line in streamed.aiter_lines():
                    lines.append(line)
        assert lines == ["0", "1", "2"]
        assert (await server.get("/healthz")).status_code == 200


async def test_dropped_and_stalled_clients_free_the_worker(tmp_path: Path) -> None:
    """A pool of one worker: each next request can only run once the worker is free."""
    async with serving(tmp_path, signal.SIGTERM, POOL_SIZE="1",
                       STREAM_IDLE_TIMEOUT="0.5") as server:
        [worker] = await server.workers()

        # mid-call: the client goes away while the worker runs its (cooperative) call
        async with server.raw_request("/nap?seconds=60"):
            await server.wait_in_flight(1)
        response = await server.get("/echo?text=after-call")
        assert response.json() == {"echo": "after-call"}

        # mid-stream: the client reads a little, then goes away
        async with server.raw_request("/count?n=1000000000&delay=0.001") as connection:
            await body_started(connection)
        response = await server.get("/echo?text=after-stream")
        assert response.json() == {"echo": "after-stream"}

        # stalled: the client keeps the connection but reads no more, the server's
        # socket fills, and the stream's idle limit frees the worker
        async with server.raw_request("/download?n=1000000&size=65536") as connection:
            await body_started(connection)
            response = await server.get("/echo?text=after-stall")
            assert response.json() == {"echo": "after-stall"}

        # none of it cost a worker: the calls were cancelled, not killed
        assert await server.workers() == [{**worker, "in_flight": 0}]
        await server.wait_in_flight(0)


async def test_a_pool_that_cannot_start_stops_the_server(tmp_path: Path) -> None:
    """The pool opens in the lifespan: a bad pool configuration fails the startup, and
    the server exits with an error instead of serving without workers."""
    with trio.fail_after(30):
        result = await trio.run_process(
            [sys.executable, str(EXAMPLE), "0"], capture_stdout=True, capture_stderr=True,
            check=False, env={**os.environ, "POOL_SIZE": "0"})
    assert result.returncode != 0
    assert result.stdout == b""  # it never said it was listening
    assert b"size: must be an integer >= 1" in result.stderr


def _example_module() -> Any:
    spec = importlib.util.spec_from_file_location("web_service_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("error", "status", "retry_after"), [
    (snakepit.PoolSaturated("full", retry_after=2.2), 503, "3"),
    (snakepit.QueueTimeout("late"), 503, "1"),
    (snakepit.PoolBroken("broken"), 503, "30"),
    (snakepit.CircuitOpen("open", retry_after=0.1), 503, "1"),
    (snakepit.PoolDraining("drained"), 503, "1"),
    (snakepit.PoolClosed("closing"), 503, "1"),
    (snakepit.WorkerTimeout("slow"), 504, None),
    (snakepit.WorkerCrashed("died", exit_code=-9), 502, None),
    (snakepit.WorkerCrashedBeforeStart("died"), 502, None),
    (snakepit.RemoteError("ValueError", "bad"), 502, None),
    (snakepit.ProtocolError("garbage"), 502, None),
    (snakepit.StreamIdleTimeout("stalled"), 502, None),
    (snakepit.ConfigError(["timeout: must be > 0"]), 400, None),
])
def test_each_error_maps_to_its_status(error: snakepit.SnakepitError, status: int,
                                       retry_after: str | None) -> None:
    code, headers = _example_module().status_of(error)
    assert code == status
    assert headers.get("Retry-After") == retry_after


def test_the_pages_fragments_are_the_examples_code() -> None:
    """docs/web-services.md quotes the example; each fragment must still be in it."""
    page = (ROOT / "docs" / "web-services.md").read_text()
    code = EXAMPLE.read_text()
    fragments = re.findall(r"^```py\n(.*?)^```", page, re.DOTALL | re.MULTILINE)
    assert len(fragments) >= 4
    lines = [line.strip() for line in code.splitlines()]
    for fragment in fragments:
        position = 0
        for line in (line.strip() for line in fragment.splitlines()):
            if not line or line == "...":
                continue
            assert line in lines[position:], f"not in the example (in order): {line!r}"
            position = lines.index(line, position) + 1
