"""Typed wire messages for the host side, and the one converter that maps them.

Each message is a frozen attrs class; :data:`converter` (cattrs) turns it into the
plain map the codecs encode and back. The map's ``"t"`` key selects the class; field
renames keep the wire compact (``sid``, ``dl``, ``msg``, ``tb``). Anything that does not
structure cleanly is a :class:`~snakepit.errors.ProtocolError`, never a crash.
"""

from __future__ import annotations

from typing import Any

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

from snakepit.errors import ProtocolError
from snakepit.protocol import wire

__all__ = [
    "Beat",
    "Call",
    "Cancel",
    "Chunk",
    "Credit",
    "Drop",
    "Emit",
    "End",
    "Error",
    "Hello",
    "HostCall",
    "HostError",
    "HostResult",
    "Message",
    "Ping",
    "Pong",
    "Progress",
    "Result",
    "Results",
    "Shutdown",
    "Welcome",
    "Withdraw",
    "Withdrawn",
    "call_to_wire",
    "converter",
    "from_wire",
    "to_wire",
]


@attrs.frozen
class Hello:
    """First frame from the host, always JSON: offers codecs and sets the frame limit."""

    version: int
    codecs: list[str]
    max_frame_size: int
    worker_id: str
    heartbeat: float | None = None
    """Seconds between the worker's heartbeat frames (``None``: no heartbeat)."""
    shm: int | None = None
    """Buffers of at least this many bytes may travel as shared-memory segments, both
    ways, if the worker announces the ``shm`` capability (``None``: never)."""
    timing: bool = False
    """Ask the worker to add each result's service time (``st``, seconds)."""


@attrs.frozen
class Welcome:
    """The worker's answer to :class:`Hello`, always JSON: who it is and what it speaks."""

    version: int
    pid: int
    codec: str
    concurrency: int = 1
    capabilities: list[str] = attrs.field(factory=list)
    python: str = ""
    handler: str = ""


@attrs.frozen
class Call:
    """Run ``command`` with ``args``; ``window`` set means a stream with that credit."""

    id: int
    command: str
    args: Any = None
    session_id: str | None = None
    deadline: float | None = None
    """Unix time after which the worker must not start (and should stop) the call."""
    window: int | None = None
    nest: int | None = None
    """Made by a host tool that call ``nest`` waits for: run it now, nested in that one."""
    batch: int | None = None
    """Set: a batch call of that many items, ``args`` being their list (``pool.map``)."""


@attrs.frozen
class Cancel:
    """Stop call ``id`` if it is still running; its answer will be discarded."""

    id: int


@attrs.frozen
class Withdraw:
    """Give call ``id`` back if it has not started (answered by :class:`Withdrawn`)."""

    id: int


@attrs.frozen
class Withdrawn:
    """Call ``id`` had not started: it is dropped from the worker's queue, never run."""

    id: int


@attrs.frozen
class Credit:
    """The stream consumer of call ``id`` can take ``n`` more chunks."""

    id: int
    n: int


@attrs.frozen
class Ping:
    """Health check: answer with :class:`Pong` at once, even between calls."""

    id: int


@attrs.frozen
class Pong:
    """The answer to :class:`Ping` ``id``."""

    id: int


@attrs.frozen
class Beat:
    """The worker is alive (sent by a bridge thread, even while a call runs)."""


@attrs.frozen
class Drop:
    """The session ``session_id`` has ended: forget the state kept for it."""

    session_id: str


@attrs.frozen
class Shutdown:
    """Finish what is running, take nothing new, exit."""


@attrs.frozen
class Result:
    """Call ``id`` returned ``value``."""

    id: int
    value: Any = None
    service_time: float | None = None
    """How long the handler ran, in seconds, when the host asked (``st`` on the wire)."""


@attrs.frozen
class Error:
    """Call ``id`` failed; ``kind`` is one of the ``wire.KIND_*`` values."""

    id: int | None
    kind: str
    type: str = ""
    message: str = ""
    traceback: str = ""
    retryable: bool = False
    """The handler marked its error transient: the call may be sent again (an optional
    key, left out when false, so older workers and hosts understand each other)."""


@attrs.frozen
class Results:
    """The batch call ``id`` ran: ``values[i]`` is item ``i``'s result; each entry of
    ``errors`` is ``[i, kind, etype, msg, tb, retryable]`` for an item that raised."""

    id: int
    values: list[Any]
    errors: list[list[Any]] | None = None
    ran: float | None = None
    """Seconds the worker spent running the items (optional): sizes the next chunks."""


@attrs.frozen
class Chunk:
    """One item yielded by the streaming call ``id``."""

    id: int
    value: Any = None


@attrs.frozen
class End:
    """The streaming call ``id`` is exhausted."""

    id: int


@attrs.frozen
class Progress:
    """Call ``id`` reports progress: ``done`` of ``total`` units."""

    id: int
    done: float
    total: float | None = None
    message: str | None = None


@attrs.frozen
class HostCall:
    """The handler of call ``call`` asks the host to run tool ``name`` with ``args``;
    ``id`` numbers the worker's host calls (answered by HostResult or HostError)."""

    id: int
    call: int
    name: str
    args: Any = None


@attrs.frozen
class HostResult:
    """Host call ``id`` returned ``value``."""

    id: int
    value: Any = None


@attrs.frozen
class HostError:
    """Host call ``id`` failed: ``type`` names the exception, ``message`` says why."""

    id: int
    type: str = ""
    message: str = ""


@attrs.frozen
class Emit:
    """A handler's telemetry event ``event`` during call ``call`` (no answer)."""

    call: int
    event: str
    measurements: Any = None
    metadata: Any = None


Message = (
    Hello | Welcome | Call | Cancel | Withdraw | Credit | Ping | Drop | Shutdown
    | Result | Error | Chunk | End | Progress | Pong | Beat | Withdrawn | Results
    | HostCall | HostResult | HostError | Emit
)

_TAGS: dict[type[Any], str] = {
    Hello: wire.HELLO,
    Welcome: wire.WELCOME,
    Call: wire.CALL,
    Cancel: wire.CANCEL,
    Withdraw: wire.WITHDRAW,
    Withdrawn: wire.WITHDRAWN,
    Credit: wire.CREDIT,
    Ping: wire.PING,
    Drop: wire.DROP,
    Shutdown: wire.SHUTDOWN,
    Result: wire.RESULT,
    Results: wire.RESULTS,
    Error: wire.ERROR,
    Chunk: wire.CHUNK,
    End: wire.END,
    Progress: wire.PROGRESS,
    Pong: wire.PONG,
    Beat: wire.BEAT,
    HostCall: wire.HOST_CALL,
    HostResult: wire.HOST_RESULT,
    HostError: wire.HOST_ERROR,
    Emit: wire.EMIT,
}
_CLASSES: dict[str, type[Any]] = {tag: cls for cls, tag in _TAGS.items()}

_RENAMES: dict[str, str] = {
    "command": "cmd",
    "session_id": "sid",
    "deadline": "dl",
    "type": "etype",
    "message": "msg",
    "traceback": "tb",
    "service_time": "st",
    "errors": "errs",
}


def _strict_scalar(kind: type[Any]) -> Any:
    """cattrs' default int/str hooks coerce (``int("7")``); the wire must not."""

    def structure(value: Any, _: Any) -> Any:
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if type(value) is not kind:
            raise TypeError(f"expected {kind.__name__}, got {type(value).__name__}")
        return value

    return structure


converter = cattrs.Converter()
"""The single converter for wire messages."""

for _scalar in (int, str, float, bool):
    converter.register_structure_hook(_scalar, _strict_scalar(_scalar))

_STRUCTURE: dict[str, Any] = {}
_UNSTRUCTURE: dict[type[Any], Any] = {}
for _cls, _tag in _TAGS.items():
    _overrides: dict[str, Any] = {
        f.name: override(rename=_RENAMES[f.name])
        for f in attrs.fields(_cls)
        if f.name in _RENAMES
    }
    _STRUCTURE[_tag] = make_dict_structure_fn(_cls, converter, **_overrides)
    _UNSTRUCTURE[_cls] = make_dict_unstructure_fn(
        _cls, converter, _cattrs_omit_if_default=True, **_overrides
    )
    converter.register_structure_hook(_cls, _STRUCTURE[_tag])
    converter.register_unstructure_hook(_cls, _UNSTRUCTURE[_cls])


def to_wire(message: Message) -> dict[str, Any]:
    """Return the plain map for ``message``, tagged with its type."""
    data: dict[str, Any] = _UNSTRUCTURE[type(message)](message)
    data[wire.TAG] = _TAGS[type(message)]
    return data


def from_wire(data: dict[str, Any]) -> Message:
    """Return the message a decoded map describes.

    Raises:
        ProtocolError: unknown tag, missing or mistyped field.
    """
    tag = data.get(wire.TAG)
    structure = _STRUCTURE.get(tag) if isinstance(tag, str) else None
    if structure is None or not isinstance(tag, str):
        raise ProtocolError(f"unknown message type {tag!r}")
    try:
        message: Message = structure(data, _CLASSES[tag])
    except Exception as exc:  # cattrs raises ExceptionGroups of many kinds
        if isinstance(exc, cattrs.BaseValidationError):
            detail = "; ".join(cattrs.transform_error(exc))
        else:
            detail = repr(exc)
        raise ProtocolError(f"malformed {tag!r} message: {detail}") from exc
    return message


def call_to_wire(call_id: int, command: str, args: Any, session_id: str | None,
                 deadline: float | None, window: int | None,
                 batch: int = 0) -> dict[str, Any]:
    """``to_wire(Call(...))`` without building the Call: the per-call hot path.

    Same map (defaults omitted); measured ~0.1 µs against ~1.1 µs for the class and
    the converter.
    """
    data: dict[str, Any] = {wire.TAG: wire.CALL, "id": call_id, "cmd": command}
    if args is not None:
        data["args"] = args
    if session_id is not None:
        data["sid"] = session_id
    if deadline is not None:
        data["dl"] = deadline
    if window is not None:
        data["window"] = window
    if batch:
        data["batch"] = batch
    return data
