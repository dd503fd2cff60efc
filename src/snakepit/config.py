"""Pool configuration: frozen attrs classes, validated all at once.

Every invalid field is reported in one :class:`~snakepit.errors.ConfigError`, each as
``"path.to.field: what is wrong"``. :meth:`PoolConfig.from_dict` structures plain data
(a TOML table, say) through the module's cattrs converter, so type errors and unknown
keys are reported with their paths too.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal

import attrs
import cattrs
from cattrs.errors import (
    AttributeValidationNote,
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
    IterableValidationNote,
)

from snakepit.errors import ConfigError
from snakepit.protocol.codecs import CODEC_NAMES
from snakepit.protocol.wire import DEFAULT_MAX_FRAME_SIZE

__all__ = ["Codec", "PoolConfig", "RestartPolicy"]

Codec = Literal["msgpack", "json", "auto"]

# A check is (field name, predicate on the value, what the value must be).
_Check = tuple[str, Callable[[Any], bool], str]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and not math.isnan(value)


def _at_least(bound: float, *, integer: bool = False) -> Callable[[Any], bool]:
    kind = _is_int if integer else _is_number
    return lambda value: kind(value) and value >= bound


def _positive(value: Any) -> bool:
    return _is_number(value) and value > 0


def _run_checks(instance: Any, checks: list[_Check]) -> None:
    errors = [
        f"{name}: {must} (got {getattr(instance, name)!r})"
        for name, ok, must in checks
        if not ok(getattr(instance, name))
    ]
    if errors:
        raise ConfigError(errors)


@attrs.frozen(kw_only=True)
class RestartPolicy:
    """How a worker slot is restarted after its worker dies unexpectedly."""

    max_restarts: int = 5
    """Restart intensity: more than this many restarts within ``period`` seconds mark
    the slot failed instead of restarting it forever."""
    period: float = 60.0
    """Window, in seconds, over which ``max_restarts`` is counted."""
    backoff_initial: float = 0.05
    """Delay before the first restart; doubles on each consecutive failure."""
    backoff_max: float = 5.0
    """Ceiling of the exponential backoff."""
    jitter: float = 0.2
    """Each delay is scaled by a random factor in ``[1 - jitter, 1 + jitter]``."""

    def __attrs_post_init__(self) -> None:
        _run_checks(
            self,
            [
                ("max_restarts", _at_least(0, integer=True), "must be an integer >= 0"),
                ("period", _positive, "must be a number > 0"),
                ("backoff_initial", _at_least(0), "must be a number >= 0"),
                ("backoff_max", _at_least(0), "must be a number >= 0"),
                ("jitter", lambda v: _is_number(v) and 0 <= v <= 1, "must be between 0 and 1"),
            ],
        )


def _optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: value is None or check(value)


def _str_tuple(value: Any) -> bool:
    return isinstance(value, tuple) and len(value) > 0 and all(isinstance(v, str) for v in value)


def _str_mapping(value: Any) -> bool:
    return isinstance(value, Mapping) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    )


def _handler_spec(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    module, sep, attr = value.partition(":")
    return bool(sep and module and attr)


def _tuple_or_none(value: Any) -> tuple[str, ...] | None:
    return None if value is None else tuple(value)


@attrs.frozen(kw_only=True)
class PoolConfig:
    """Everything a pool needs to know; immutable once built.

    Raises:
        ConfigError: one or more fields are invalid; every bad field is named.
    """

    name: str = "default"
    """The pool's name, used in worker ids, logs and stats."""
    size: int = 4
    """Number of worker processes."""
    handler: str = "snakepit.bridge:CommandHandler"
    """``module:Class`` of the :class:`snakepit.bridge.CommandHandler` the workers serve."""
    python: str = sys.executable
    """Python interpreter the workers run (its environment needs only msgpack, or nothing
    with ``codec="json"``)."""
    command: tuple[str, ...] | None = attrs.field(default=None, converter=_tuple_or_none)
    """Full argv of a worker that speaks the wire protocol itself; replaces
    ``python -m snakepit.bridge --handler ...`` when set."""
    env: Mapping[str, str] = attrs.field(factory=dict)
    """Extra environment variables for the workers."""
    cwd: str | None = None
    """Working directory of the workers (default: the host's)."""
    codec: Codec = "msgpack"
    """Payload codec: ``msgpack``, ``json``, or ``auto`` (msgpack when the worker has it)."""
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    """Largest frame payload either side accepts, in bytes."""
    startup_timeout: float = 30.0
    """Seconds a worker has from spawn to a completed handshake."""
    call_timeout: float | None = None
    """Default ``timeout`` of calls that pass none (``None``: no limit)."""
    max_queue: int = 1024
    """Calls that may wait for a worker; the next one gets :class:`PoolSaturated`."""
    pipeline_depth: int = 2
    """Calls a worker may hold per unit of its concurrency: with 2, when every worker is
    busy, one more call waits in each worker's pipe so it never idles between calls.
    1 disables pipelining (a call then always goes to whichever worker frees first)."""
    cancel_grace: float = 0.5
    """Seconds a worker has to stop a cancelled or timed-out call before it is killed."""
    shutdown_grace: float = 5.0
    """Seconds workers have to exit after the shutdown frame before SIGTERM."""
    kill_timeout: float = 2.0
    """Seconds between SIGTERM and SIGKILL in the shutdown ladder."""
    stream_window: int = 64
    """Chunks a stream may have in flight before the consumer grants more credit."""
    restart: RestartPolicy = attrs.field(factory=RestartPolicy)
    """Restart policy of every worker slot."""

    def __attrs_post_init__(self) -> None:
        _run_checks(
            self,
            [
                ("name", lambda v: isinstance(v, str) and v != "", "must be a non-empty string"),
                ("size", _at_least(1, integer=True), "must be an integer >= 1"),
                ("handler", _handler_spec, "must look like 'module:Class'"),
                ("python", lambda v: isinstance(v, str) and v != "", "must be a path"),
                ("command", _optional(_str_tuple), "must be a non-empty list of strings"),
                ("env", _str_mapping, "must map strings to strings"),
                ("cwd", _optional(lambda v: isinstance(v, str)), "must be a path"),
                ("codec", lambda v: v in (*CODEC_NAMES, "auto"), "must be msgpack, json or auto"),
                ("max_frame_size", lambda v: _is_int(v) and 1024 <= v < 2**32,
                 "must be an integer in [1024, 2**32)"),
                ("startup_timeout", _positive, "must be a number > 0"),
                ("call_timeout", _optional(_positive), "must be a number > 0 or None"),
                ("max_queue", _at_least(0, integer=True), "must be an integer >= 0"),
                ("pipeline_depth", _at_least(1, integer=True), "must be an integer >= 1"),
                ("cancel_grace", _at_least(0), "must be a number >= 0"),
                ("shutdown_grace", _at_least(0), "must be a number >= 0"),
                ("kill_timeout", _positive, "must be a number > 0"),
                ("stream_window", _at_least(1, integer=True), "must be an integer >= 1"),
                ("restart", lambda v: isinstance(v, RestartPolicy), "must be a RestartPolicy"),
            ],
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, path: str = "") -> PoolConfig:
        """Build a config from plain data (a parsed TOML or JSON table).

        Args:
            data: field names to values; ``restart`` may be a nested table.
            path: prefix for error paths (``"pools.optimizer"``).

        Raises:
            ConfigError: every unknown key, mistyped and invalid value, with its path.
        """
        try:
            return converter.structure(dict(data), cls)
        except (ClassValidationError, ConfigError) as exc:
            raise ConfigError(list(_config_errors(exc, path))) from None


def _join(path: str, name: str | int) -> str:
    if isinstance(name, int):
        return f"{path}[{name}]"
    return f"{path}.{name}" if path else name


def _config_errors(exc: BaseException, path: str) -> Iterator[str]:
    """Flatten cattrs' exception groups into ``"path: message"`` lines."""
    if isinstance(exc, ConfigError):
        for error in exc.errors:
            yield _join(path, error)
    elif isinstance(exc, ForbiddenExtraKeysError):
        for key in sorted(exc.extra_fields):
            yield f"{_join(path, key)}: unknown field"
    elif isinstance(exc, ClassValidationError | IterableValidationError):
        for sub in exc.exceptions:
            where = path
            for note in getattr(sub, "__notes__", []):
                if isinstance(note, AttributeValidationNote):
                    where = _join(path, note.name)
                elif isinstance(note, IterableValidationNote):
                    where = _join(path, note.index)
            yield from _config_errors(sub, where)
    elif isinstance(exc, KeyError):
        yield f"{path}: required"
    else:
        yield f"{path}: {exc}"


_KIND_NAMES = {int: "an integer", float: "a number", str: "a string"}


def _structure_strict(kind: type[Any]) -> Callable[[Any, Any], Any]:
    def structure(value: Any, _: Any) -> Any:
        if kind is float and _is_int(value):
            return float(value)
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise TypeError(f"must be {_KIND_NAMES[kind]}")
        return value

    return structure


converter = cattrs.Converter(forbid_extra_keys=True)
"""Structures configuration data; no silent coercion of ``"4"`` into ``4``."""
for _kind in (int, float, str):
    converter.register_structure_hook(_kind, _structure_strict(_kind))
