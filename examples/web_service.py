"""A web service backed by a snakepit pool: quart-trio on hypercorn's trio worker.

Run it with ``python examples/web_service.py [PORT]`` (or ``PORT=8080 python ...``). It
binds 127.0.0.1 only; port 0 picks a free one. Either way it prints the address it
listens on (``listening on http://127.0.0.1:PORT``) once the pool is ready. Stop it with
Ctrl-C or SIGTERM: hypercorn stops accepting connections, gives the requests in flight
``GRACEFUL_TIMEOUT`` seconds, then the pool closes and every worker exits.

Endpoints::

    GET /echo?text=hi             a plain call
    GET /nap?seconds=2            a slow call that stops when its client goes away
    GET /crash                    a call that kills its worker: 502, the pool restarts it
    GET /count?n=10&delay=0.1     a stream, one JSON line per chunk
    GET /count?n=3&crash=1        a stream whose worker dies after n chunks
    GET /download?n=10&size=1024  a stream of n blocks of size bytes
    GET /healthz                  200 while some worker slot can serve, else 503
    GET /stats                    the pool's figures (worker pids included: keep private)

Every call takes ``timeout=`` (seconds). The workers serve
``snakepit.testing:ChaosHandler``, whose commands misbehave on request; an application
names its own handler instead. Settings from the environment: ``POOL_SIZE`` (2),
``STREAM_IDLE_TIMEOUT`` (30), ``GRACEFUL_TIMEOUT`` (5).
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
from collections.abc import AsyncGenerator
from contextlib import aclosing
from functools import partial
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from quart import Response, current_app, request
from quart_trio import QuartTrio

import snakepit

CALL_TIMEOUT = 10.0
"""Seconds a plain call may take unless the request asks for less (``timeout=``)."""
STREAM_TIMEOUT = 300.0
"""Seconds a stream may take: its deadline covers the whole stream."""

app = QuartTrio(__name__)
# Quart bounds sending a whole response; a stream may take as long as its deadline.
app.config["RESPONSE_TIMEOUT"] = STREAM_TIMEOUT


# -- the pool: opened while the app serves, shared with every handler ------------------
@app.while_serving
async def pool_while_serving() -> AsyncGenerator[None, None]:
    """Open the pool before the first request and close it after the last one.

    Hypercorn runs this in its lifespan task, which outlives every request: handlers
    borrow the pool, none owns it. A pool that cannot start fails the startup, and the
    server exits instead of serving without workers.
    """
    config = snakepit.PoolConfig(
        size=int(os.environ.get("POOL_SIZE", "2")),
        handler="snakepit.testing:ChaosHandler",
        max_queue=256,  # beyond that, shed load: PoolSaturated is a 503 with Retry-After
        stream_idle_timeout=float(os.environ.get("STREAM_IDLE_TIMEOUT", "30")),
    )
    async with snakepit.open_pool(config) as pool:
        current_app.extensions["snakepit"] = pool
        yield
        del current_app.extensions["snakepit"]


def pool() -> snakepit.Pool:
    """The app's pool (handlers run only while it is open)."""
    opened: snakepit.Pool = current_app.extensions["snakepit"]
    return opened


def timeout(default: float) -> float:
    """The request's ``timeout=``, or ``default``: never more than the default allows."""
    return min(request.args.get("timeout", default, type=float), default)


# -- errors: each snakepit error becomes a status --------------------------------------
UNAVAILABLE: tuple[type[snakepit.SnakepitError], ...] = (
    snakepit.PoolSaturated, snakepit.QueueTimeout, snakepit.PoolBroken,
    snakepit.CircuitOpen, snakepit.PoolDraining, snakepit.PoolClosed)
"""503: the call did not run here, now; another instance, or this one later, may."""


def status_of(error: snakepit.SnakepitError) -> tuple[int, dict[str, str]]:
    """The HTTP status and extra headers for a snakepit error."""
    if isinstance(error, UNAVAILABLE):
        retry_after = getattr(error, "retry_after", None)  # PoolSaturated, CircuitOpen
        if retry_after is None:
            retry_after = 30.0 if isinstance(error, snakepit.PoolBroken) else 1.0
        return 503, {"Retry-After": str(max(1, math.ceil(retry_after)))}
    if isinstance(error, snakepit.WorkerTimeout):
        return 504, {}
    if isinstance(error, snakepit.ConfigError):  # a bad timeout= from the client
        return 400, {}
    if isinstance(error, snakepit.SessionNotFound):
        return 404, {}
    # The worker crashed, raised, broke the protocol or sent what cannot travel.
    return 502, {}


@app.errorhandler(snakepit.SnakepitError)
async def on_snakepit_error(error: snakepit.SnakepitError) -> Response:
    """A JSON body naming the error and whether sending the request again is safe."""
    status, headers = status_of(error)
    body = {"error": type(error).__name__, "message": str(error),
            "retryable": error.retryable}
    return Response(json.dumps(body), status=status, headers=headers,
                    content_type="application/json")


# -- plain calls ------------------------------------------------------------------------
@app.route("/echo")
async def echo() -> dict[str, Any]:
    text = request.args.get("text", "")
    return {"echo": await pool().execute("echo", text, timeout=timeout(CALL_TIMEOUT))}


@app.route("/nap")
async def nap() -> dict[str, Any]:
    # A client that disconnects cancels this handler, and with it the call: the worker
    # gets a cancel frame (nap stops at once) and serves the next request.
    seconds = request.args.get("seconds", 1.0, type=float)
    slept = await pool().execute("nap", {"seconds": seconds}, timeout=timeout(CALL_TIMEOUT))
    return {"slept": slept}


@app.route("/crash")
async def crash() -> dict[str, Any]:
    await pool().execute("crash", timeout=timeout(CALL_TIMEOUT))  # WorkerCrashed: 502
    return {}


# -- streams: opened before the headers go out -------------------------------------------
async def streamed(command: str, args: Any, encode: Any, content_type: str) -> Response:
    """A response whose body is a stream's chunks.

    The stream is opened and its first chunk taken *before* the response is returned,
    so a stream that fails to start (no worker free, a crash, a bad argument) becomes a
    status through the error handler. An error after the headers went out can only
    abort the connection: the client then sees a truncated body, never a clean end.
    """
    async def chunks() -> AsyncGenerator[bytes, None]:
        async with pool().stream(command, args, timeout=timeout(STREAM_TIMEOUT)) as stream:
            async for chunk in stream:
                yield encode(chunk)

    body = chunks()
    try:
        first = await anext(body)  # opens the stream: its errors raise here
    except StopAsyncIteration:
        return Response(b"", content_type=content_type)

    async def rest() -> AsyncGenerator[bytes, None]:
        async with aclosing(body):  # leaving early (client gone) closes the stream
            yield first
            async for chunk in body:
                yield chunk

    return Response(rest(), content_type=content_type)


@app.route("/count")
async def count() -> Response:
    n = request.args.get("n", 10, type=int)
    args: dict[str, Any] = {"n": n}
    if request.args.get("crash"):
        command = "stream_then_crash"
    else:
        command = "count"
        args["delay"] = request.args.get("delay", 0.0, type=float)
    return await streamed(command, args, lambda chunk: json.dumps(chunk).encode() + b"\n",
                          "application/x-ndjson")


@app.route("/download")
async def download() -> Response:
    args = {"n": request.args.get("n", 10, type=int),
            "size": request.args.get("size", 1024, type=int)}
    return await streamed("blobs", args, lambda block: block, "application/octet-stream")


# -- for operators ----------------------------------------------------------------------
@app.route("/healthz")
async def healthz() -> tuple[dict[str, Any], int]:
    serving = [w for w in pool().stats().workers if w.state != "failed"]
    return {"workers": len(serving)}, 200 if serving else 503


@app.route("/stats")
async def stats() -> dict[str, Any]:
    figures = pool().stats()
    return {"in_flight": figures.in_flight,
            "workers": [{"id": w.id, "pid": w.pid, "state": w.state,
                         "restarts": w.restarts, "in_flight": w.in_flight}
                        for w in figures.workers]}


# -- serving ----------------------------------------------------------------------------
async def main(port: int) -> None:
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]  # loopback only; put a proxy in front
    config.graceful_timeout = float(os.environ.get("GRACEFUL_TIMEOUT", "5"))
    # Opened before serving starts, so a signal that comes early is not lost either.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:

        async def until_signalled() -> None:
            async for signum in signals:
                print(f"{signal.Signals(signum).name}: shutting down", file=sys.stderr,
                      flush=True)
                return

        async with trio.open_nursery() as nursery:
            binds = await nursery.start(partial(serve, app, config,
                                                shutdown_trigger=until_signalled))
            # hypercorn binds even when the startup failed, then exits with its error
            if "snakepit" in app.extensions:
                print(f"listening on {binds[0]}", flush=True)


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("PORT", "8000")))
