"""The operator's side of the control socket: find running pool trees and ask them.

Synchronous on purpose: the CLI (``snakepit ls``, ``stats``, ``top``, ``recycle``,
``drain``) runs outside any Trio loop, and a blocking Unix socket with a timeout is all
it needs. A Trio program can call it through ``trio.to_thread.run_sync``.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import msgpack

from snakepit.control.server import MAX_ANSWER
from snakepit.errors import SnakepitError
from snakepit.process.registry import RunInfo, live_runs
from snakepit.protocol.framing import FrameDecoder, encode_frame

__all__ = ["ControlClient", "ControlError", "InstanceGone", "endpoint_for", "find_run",
           "run_snapshot"]


class ControlError(SnakepitError):
    """An operator request failed: the instance answered with an error, or the request
    named a run, pool or worker that does not exist. ``kind`` is the error's type
    (``NotFound``, ``BadRequest``, ``UnknownCommand``, ``ProtocolError``, ``Busy``: the
    instance holds as many control connections as it serves at once)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class InstanceGone(ControlError):
    """The instance's control socket is gone or refuses connections: its pools closed
    or its host exited."""

    def __init__(self, message: str) -> None:
        super().__init__("InstanceGone", message)


class ControlClient:
    """One connection to a control socket; usable as a context manager."""

    def __init__(self, path: str, *, timeout: float = 10.0) -> None:
        self.path = path
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._socket.settimeout(timeout)
        try:
            self._socket.connect(path)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            self._socket.close()
            raise InstanceGone(f"no instance answers at {path}: {exc.strerror}") from None
        except OSError:
            self._socket.close()
            raise
        self._decoder = FrameDecoder(MAX_ANSWER)
        self._answers: list[bytes] = []

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._socket.close()

    def request(self, op: str, **arguments: Any) -> Any:
        """Send one request and return the answer's value.

        Raises:
            ControlError: the instance answered with an error.
            InstanceGone: the connection closed before the answer (the instance went
                away, or refused us: see its log).
        """
        try:
            self._socket.sendall(encode_frame(msgpack.packb({"op": op, **arguments}),
                                              MAX_ANSWER))
        except (BrokenPipeError, ConnectionResetError):
            pass  # it may have answered before closing (Busy): read what it sent
        try:
            while not self._answers:
                data = self._socket.recv(1 << 20)
                if not data:
                    raise InstanceGone(f"the instance at {self.path} closed the connection")
                self._answers.extend(self._decoder.feed(data))
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise InstanceGone(f"the instance at {self.path} went away: {exc}") from None
        answer = msgpack.unpackb(self._answers.pop(0))
        if not answer.get("ok"):
            error = answer.get("error") or {}
            raise ControlError(str(error.get("type", "Error")), str(error.get("message", "")))
        return answer.get("value")


def find_run(state_dir: Path, run: str | None) -> RunInfo:
    """The live run ``run`` names (its run id, a prefix of it, or its host pid); with
    ``None``, the only live run.

    Raises:
        ControlError: no such run, or several and none named (the message lists them).
    """
    runs = [r for r in live_runs(state_dir) if r.endpoints]
    if run is not None:
        chosen = [r for r in runs if r.run_id == run or str(r.host_pid) == run]
        chosen = chosen or [r for r in runs if r.run_id.startswith(run)]
    else:
        chosen = runs
    if len(chosen) == 1:
        return chosen[0]
    listing = ", ".join(f"{r.run_id} (pools {', '.join(r.pools)})" for r in runs) or "none"
    if not chosen:
        what = f"no running instance {run!r}" if run else "no running instance"
        raise ControlError("NotFound", f"{what} in {state_dir}; running: {listing}")
    raise ControlError("NotFound", f"several instances run in {state_dir}; name one of: "
                       f"{listing}")


def run_snapshot(run: RunInfo, *, events: int = 20) -> dict[str, Any]:
    """Stats of every pool of ``run`` (all its control sockets), with recent events.

    Raises:
        InstanceGone: the run's sockets no longer answer.
    """
    merged: dict[str, Any] = {"run_id": run.run_id, "host_pid": run.host_pid,
                              "started": run.started, "pools": {}, "events": []}
    for path, _ in run.endpoints:
        with ControlClient(path) as client:
            answer = client.request("stats", events=events)
        merged["uptime"] = answer["uptime"]
        merged["version"] = answer["version"]
        merged["pools"].update(answer["pools"])
        merged["events"].extend(answer["events"])
    merged["events"].sort(key=lambda event: event["time"])
    merged["events"] = merged["events"][-events:]
    return merged


def endpoint_for(run: RunInfo, pool: str | None) -> str:
    """The control socket of ``run`` that serves ``pool`` (any, when ``None`` and the run
    has one).

    Raises:
        ControlError: no socket of the run serves that pool.
    """
    if pool is None:
        if len(run.endpoints) == 1:
            return run.endpoints[0][0]
        raise ControlError("NotFound", f"run {run.run_id} has several pools; name one: "
                           f"{', '.join(run.pools)}")
    for path, pools in run.endpoints:
        if pool in pools:
            return path
    raise ControlError("NotFound", f"run {run.run_id} has no pool {pool!r}; pools: "
                       f"{', '.join(run.pools)}")
