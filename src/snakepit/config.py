"""Pool configuration: frozen attrs classes, validated all at once.

Every invalid field is reported in one :class:`~snakepit.errors.ConfigError`, each as
``"path.to.field: what is wrong"``. :meth:`PoolConfig.from_dict` structures plain data
(a TOML table, say) through the module's cattrs converter, so type errors and unknown
keys are reported with their paths too.
"""

from __future__ import annotations

import os
import re
import sys
import tomllib
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

from snakepit._checks import (
    Check,
    _at_least,
    _check_errors,
    _is_int,
    _optional,
    _positive,
    _tuple_or_none,
)
from snakepit.errors import ConfigError
from snakepit.policies import (
    _BREAKER_CHECKS,
    _RESTART_CHECKS,
    _RETRY_CHECKS,
    CircuitBreakerPolicy,
    RestartPolicy,
    RetryPolicy,
)
from snakepit.protocol.codecs import CODEC_NAMES
from snakepit.protocol.wire import DEFAULT_MAX_FRAME_SIZE

__all__ = ["CircuitBreakerPolicy", "Codec", "PoolConfig", "RestartPolicy", "RetryPolicy",
           "SnakepitConfig"]

Codec = Literal["msgpack", "json", "auto"]

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


_CPU_MULTIPLE = re.compile(r"^\s*(\d+)\s*x\s*$")
_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def resolve_size(value: Any) -> Any:
    """``"2x"`` means twice the CPU count; anything else is left for validation."""
    if isinstance(value, str) and (match := _CPU_MULTIPLE.match(value)):
        return int(match.group(1)) * (os.cpu_count() or 1)
    return value


DEFAULT_ALLOWED_TARGETS = ("json", "math", "statistics", "itertools", "collections", "datetime",
                           "decimal", "fractions", "textwrap", "difflib", "unicodedata")
"""Standard-library modules that compute on their arguments (no files, no processes).
``operator`` and ``functools`` are not among them (``attrgetter``, ``methodcaller`` and
friends read any attribute, private ones included), nor ``string`` (``Formatter`` does
the same through format fields)."""


_POOL_CHECKS: list[Check] = [
        ("name", lambda v: isinstance(v, str) and v != "", "must be a non-empty string"),
        ("size", _at_least(1, integer=True),
         "must be an integer >= 1, or 'Nx' for N times the CPU count"),
        ("handler", _handler_spec, "must look like 'module:Class'"),
        ("python", lambda v: isinstance(v, str) and v != "", "must be a path"),
        ("adapter", lambda v: isinstance(v, str) and v != "", "must be an adapter name"),
    ("kind", lambda v: isinstance(v, str) and v != "", "must be a pool kind name"),
    ("options", lambda v: isinstance(v, Mapping) and all(isinstance(k, str) for k in v),
     "must be a table with string keys"),
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
        ("stream_idle_timeout", _optional(_positive), "must be a number > 0 or None"),
        ("session_ttl", _optional(_positive), "must be a number > 0 or None"),
        ("health_check_interval", _optional(_positive), "must be a number > 0 or None"),
        ("health_check_timeout", _positive, "must be a number > 0"),
    ("heartbeat_interval", _optional(_positive), "must be a number > 0 or None"),
    ("heartbeat_timeout", _positive, "must be a number > 0"),
    ("max_calls", _optional(_at_least(1, integer=True)), "must be an integer >= 1 or None"),
    ("worker_ttl", _optional(_positive), "must be a number > 0 or None"),
        ("memory_limit", _optional(_at_least(1, integer=True)),
         "must be a number of bytes >= 1 or None"),
        ("restart", lambda v: isinstance(v, RestartPolicy), "must be a RestartPolicy"),
    ("allowed_targets", lambda v: all(isinstance(p, str) and p for p in v),
     "must be a list of module prefixes"),
    ("control", lambda v: isinstance(v, bool), "must be true or false"),
    ("state_dir", _optional(lambda v: isinstance(v, str) and v != ""), "must be a path"),
    ("preload", lambda v: all(isinstance(m, str) and _MODULE_NAME.match(m) for m in v),
     "must be a list of module names"),
    ("warm_start", lambda v: isinstance(v, bool), "must be true or false"),
    ("shm_threshold", _optional(_at_least(1024, integer=True)),
     "must be a number of bytes >= 1024 or None"),
    ("retry", _optional(lambda v: isinstance(v, RetryPolicy)), "must be a RetryPolicy"),
    ("circuit_breaker", _optional(lambda v: isinstance(v, CircuitBreakerPolicy)),
     "must be a CircuitBreakerPolicy"),
]


@attrs.frozen(kw_only=True)
class PoolConfig:
    """Everything a pool needs to know; immutable once built.

    Raises:
        ConfigError: one or more fields are invalid; every bad field is named.
    """

    name: str = "default"
    """The pool's name, used in worker ids, logs and stats."""
    size: int = attrs.field(default=4, converter=resolve_size)
    """Number of worker processes; ``"2x"`` means twice the CPU count."""
    handler: str = "snakepit.bridge:CommandHandler"
    """``module:Class`` of the :class:`snakepit.bridge.CommandHandler` the workers serve."""
    python: str = sys.executable
    """Python interpreter the workers run, or a virtualenv's directory (its
    ``bin/python``, run as if the virtualenv were activated). Its environment needs only
    msgpack, or nothing with ``codec="json"``."""
    adapter: str = "python"
    """How workers start: ``python`` (the bridge), ``command`` (``command`` below), or
    an adapter a plugin installed (``node``)."""
    kind: str = "standard"
    """The pool kind: ``standard``, or one a plugin installed (``gpu``)."""
    options: Mapping[str, Any] = attrs.field(factory=dict)
    """Settings for the adapter and the pool kind (documented by each plugin)."""
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
    pipeline_depth: int = 8
    """Most calls a worker may hold per unit of its concurrency. When every worker is
    busy, further calls wait in the workers' pipes, so a worker never idles between
    calls -- as deep as about a millisecond of expected work (quick calls go up to this
    deep, calls of a millisecond or more at most 2: one running, one waiting). 2 fixes
    the depth at one waiting call; 1 disables pipelining (a call then always goes to
    whichever worker frees first)."""
    cancel_grace: float = 0.5
    """Seconds a worker has to stop a cancelled or timed-out call before it is killed."""
    shutdown_grace: float = 5.0
    """Seconds workers have to exit after the shutdown frame before SIGTERM."""
    kill_timeout: float = 2.0
    """Seconds between SIGTERM and SIGKILL in the shutdown ladder."""
    stream_window: int = 64
    """Chunks a stream may have in flight before the consumer grants more credit."""
    stream_idle_timeout: float | None = 30.0
    """Seconds a stream's consumer may take no chunk (time spent waiting inside a read
    does not count) before the stream is cancelled, its worker freed and the consumer's
    next read raises :class:`StreamIdleTimeout` (``None``: no limit)."""
    session_ttl: float | None = 3600.0
    """Default TTL of sessions: one unused this long expires (``None``: never)."""
    health_check_interval: float | None = 30.0
    """Seconds between health checks of idle workers (``None``: no health checks)."""
    health_check_timeout: float = 5.0
    """Seconds an idle worker has to answer a health-check ping before it is replaced."""
    heartbeat_interval: float | None = 1.0
    """Seconds between a worker's heartbeat frames, sent by a bridge thread even while
    a call runs (``None``: no heartbeat)."""
    heartbeat_timeout: float = 10.0
    """A worker silent this long -- SIGSTOPped, or stuck in native code holding the
    GIL -- is killed and replaced, whether busy or idle."""
    max_calls: int | None = None
    """Recycle a worker after this many calls: the last one sent to it is the
    ``max_calls``-th, it finishes them and is replaced (``None``: never)."""
    worker_ttl: float | None = None
    """Recycle a worker this many seconds after it started (``None``: never)."""
    memory_limit: int | None = None
    """Resident memory, in bytes, past which a worker is recycled: it finishes its
    calls, exits and is replaced (sampled at each health check; ``None``: no limit)."""
    restart: RestartPolicy = attrs.field(factory=RestartPolicy)
    """Restart policy of every worker slot."""
    allowed_targets: tuple[str, ...] = attrs.field(default=DEFAULT_ALLOWED_TARGETS,
                                                   converter=tuple)
    """Module prefixes whose callables the enhanced bridge may call (``pool.call``):
    calling arbitrary code is a security decision, so frameworks (``"dspy"``,
    ``"pandas"``) must be added explicitly. Only objects that belong to these modules
    are reachable (not, say, a builtin or another module one of them imported); an
    entry may also name one callable exactly (``"os.getpid"``). See docs/plugins.md."""
    retry: RetryPolicy | None = None
    """Automatic retries (``None``: none); see :class:`RetryPolicy`."""
    circuit_breaker: CircuitBreakerPolicy | None = None
    """The pool's circuit breaker (``None``: none); see :class:`CircuitBreakerPolicy`."""
    control: bool = True
    """Serve the control socket (``snakepit ls``/``stats``/``top``/``recycle``/``drain``)
    in ``state_dir``; ``False`` (or ``SNAKEPIT_CONTROL=0`` in the environment) turns it
    off. With :func:`~snakepit.open_pools`, one socket serves every pool of the block if
    any of them asks for it."""
    state_dir: str | None = None
    """Directory of the run registry (``None``: ``$SNAKEPIT_STATE_DIR``, else
    ``$XDG_RUNTIME_DIR/snakepit``, else a per-user directory under the temp dir)."""
    preload: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    """Modules every worker imports before it serves (``"numpy"``, a model library).
    With ``warm_start`` they are imported once, in the template, not in each worker."""
    shm_threshold: int | None = 1 << 20
    """Buffers (``bytes``, ``bytearray``, ``memoryview``) of at least this many bytes go
    through a shared-memory segment in ``/dev/shm`` instead of the pipe, both ways
    (msgpack codec, workers that support it; ``None``: always through the pipe).
    Each segment is bounded by ``max_frame_size``."""
    warm_start: bool = False
    """Fork workers from a template process that imported ``preload`` and the handler's
    module once, instead of starting each interpreter cold; replacements are forked too
    (Linux, the python adapter; see docs/performance.md for what forking implies)."""

    def __attrs_post_init__(self) -> None:
        values = {name: getattr(self, name) for name, _, _ in _POOL_CHECKS}
        errors = _check_errors(values, _POOL_CHECKS)
        errors += _cross_field_errors(values, {error.split(":")[0] for error in errors})
        if errors:
            raise ConfigError(errors)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, path: str = "") -> PoolConfig:
        """Build a config from plain data (a parsed TOML or JSON table).

        Args:
            data: field names to values; ``restart`` may be a nested table.
            path: prefix for error paths (``"pools.optimizer"``).

        Raises:
            ConfigError: every unknown key, mistyped and invalid value, with its path.
        """
        data = dict(data)
        if "size" in data:
            data["size"] = resolve_size(data["size"])
        try:
            return converter.structure(data, cls)
        except (ClassValidationError, ConfigError) as exc:
            errors = list(_config_errors(exc, path))
            if _raised_by_the_class(exc):  # every field typed right: all checks ran
                raise ConfigError(errors) from None
        # Type errors stopped construction, so the value checks of the table (and of a
        # nested table that had one) never ran: run them on the values that are typed
        # right, so that one run shows every problem.
        values, unusable = _typed_values(cls, data)
        more = _check_errors(values, _POOL_CHECKS)
        bad = unusable | {error.split(":")[0] for error in more}
        more += _cross_field_errors({**_defaults(cls), **values}, bad)
        errors += [_join(path, error) for error in more]
        for name, (policy, checks) in _POLICY_TABLES.items():
            table = data.get(name)
            if isinstance(table, Mapping):
                nested, typed_wrong = _typed_values(policy, table)
                if typed_wrong:  # else it was built, and its own checks ran
                    errors += [_join(_join(path, name), error)
                               for error in _check_errors(nested, checks)]
        raise ConfigError(errors) from None


def _raised_by_the_class(exc: Exception) -> bool:
    """Whether structuring failed in the class's own checks (cattrs wraps what the
    constructor raised, without naming a field), not on a field's type."""
    if isinstance(exc, ConfigError):
        return True
    return any(isinstance(sub, ConfigError) and not any(
        isinstance(note, AttributeValidationNote) for note in getattr(sub, "__notes__", []))
        for sub in getattr(exc, "exceptions", ()))


def _cross_field_errors(values: Mapping[str, Any], bad: set[str]) -> list[str]:
    """Checks across fields, made only where each field involved is valid itself
    (``bad``: those that are not)."""
    errors = []
    if ("memory_limit" not in bad and "health_check_interval" not in bad
            and values["memory_limit"] is not None and values["health_check_interval"] is None):
        errors.append("memory_limit: is sampled by the health check, so it needs "
                      "health_check_interval to be set")
    if ("heartbeat_interval" not in bad and "heartbeat_timeout" not in bad
            and values["heartbeat_interval"] is not None
            and values["heartbeat_timeout"] <= values["heartbeat_interval"]):
        errors.append(f"heartbeat_timeout: must exceed heartbeat_interval "
                      f"({values['heartbeat_interval']})")
    return errors


_POLICY_TABLES: dict[str, tuple[type[Any], list[Check]]] = {
    "restart": (RestartPolicy, _RESTART_CHECKS),
    "retry": (RetryPolicy, _RETRY_CHECKS),
    "circuit_breaker": (CircuitBreakerPolicy, _BREAKER_CHECKS),
}
"""The nested tables of a pool table: the class each becomes, and its checks."""


def _typed_values(cls: type[Any], table: Mapping[str, Any]) -> tuple[dict[str, Any], set[str]]:
    """The fields of ``cls`` given in ``table``, each structured as the converter would
    (its attrs converter applied); and the names of those that cannot be (they are
    type errors, reported as such)."""
    values, unusable = {}, set()
    for field in attrs.fields(attrs.resolve_types(cls)):
        if field.name not in table:
            continue
        try:
            value = converter.structure(table[field.name], field.type)
            if field.converter is not None:
                value = field.converter(value)
        except Exception:
            unusable.add(field.name)
            continue
        values[field.name] = value
    return values, unusable


def _defaults(cls: type[Any]) -> dict[str, Any]:
    """The default value of each field of ``cls`` that has one."""
    values = {}
    for field in attrs.fields(cls):
        if isinstance(field.default, attrs.Factory):  # type: ignore[arg-type]
            values[field.name] = field.default.factory()
        elif field.default is not attrs.NOTHING:
            values[field.name] = field.default
    return values


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


_KIND_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


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
for _kind in (int, float, str, bool):
    converter.register_structure_hook(_kind, _structure_strict(_kind))
# The codec is checked with the other values, for one message style.
converter.register_structure_hook_func(lambda t: t is Codec, _structure_strict(str))


@attrs.frozen(kw_only=True)
class SnakepitConfig:
    """Several named pools and how commands are routed to them.

    Raises:
        ConfigError: every problem, each with its path (``pools.optimizer.size``).
    """

    pools: Mapping[str, PoolConfig]
    """The pools, by name (each pool's ``name`` is its key)."""
    routes: Mapping[str, str] = attrs.field(factory=dict)
    """Command pattern (``fnmatch`` glob, first match wins) to pool name."""
    default_pool: str | None = None
    """The pool for commands no route matches (``None``: such commands are refused)."""

    def __attrs_post_init__(self) -> None:
        errors = []
        if not self.pools:
            errors.append("pools: must name at least one pool")
        for name, pool in self.pools.items():
            if pool.name != name:
                errors.append(f"pools.{name}.name: must be {name!r} (the pool's key), "
                              f"got {pool.name!r}")
        errors += _route_errors(list(self.pools), self.routes, self.default_pool)
        if errors:
            raise ConfigError(errors)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SnakepitConfig:
        """Build from plain data: ``{"pools": {name: {...}}, "routes": {...}, ...}``.

        Every pool is validated and every error reported at once, with its path.
        """
        if not isinstance(data, Mapping):
            raise ConfigError([f"config: must be a table, got {type(data).__name__}"])
        errors: list[str] = [f"{key}: unknown field" for key in data
                             if key not in ("pools", "routes", "default_pool")]
        pools: dict[str, PoolConfig] = {}
        tables = data.get("pools", {})
        if not isinstance(tables, Mapping):
            errors.append("pools: must be a table of pool tables")
            tables = {}
        for name, table in tables.items():
            if not isinstance(table, Mapping):
                errors.append(f"pools.{name}: must be a table")
                continue
            try:
                pools[name] = PoolConfig.from_dict({"name": name, **table},
                                                   path=f"pools.{name}")
            except ConfigError as exc:
                errors.extend(exc.errors)
        routes = data.get("routes", {})
        if not isinstance(routes, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in routes.items()
        ):
            errors.append("routes: must map command patterns to pool names")
            routes = {}
        default_pool = data.get("default_pool")
        if default_pool is not None and not isinstance(default_pool, str):
            errors.append(f"default_pool: must be a pool name (got {default_pool!r})")
            default_pool = None
        errors += _route_errors(list(tables), routes, default_pool)
        if errors:
            raise ConfigError(errors)
        return cls(pools=pools, routes=dict(routes), default_pool=default_pool)

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str]) -> SnakepitConfig:
        """Load a TOML file; a ``pyproject.toml`` is read from its ``[tool.snakepit]``."""
        with open(path, "rb") as file:
            try:
                data = tomllib.load(file)
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError([f"{os.fspath(path)}: {exc}"]) from None
        if os.path.basename(os.fspath(path)) == "pyproject.toml":
            data = data.get("tool", {}).get("snakepit")
            if data is None:
                raise ConfigError([f"{os.fspath(path)}: no [tool.snakepit] table"])
        return cls.from_dict(data)


def _route_errors(pools: list[str], routes: Mapping[str, str],
                  default_pool: str | None) -> list[str]:
    errors = [f"routes.{pattern}: no pool named {target!r}"
              for pattern, target in routes.items() if target not in pools]
    if default_pool is not None and default_pool not in pools:
        errors.append(f"default_pool: no pool named {default_pool!r}")
    return errors
