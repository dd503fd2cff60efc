"""Pool configuration: frozen attrs classes, validated all at once.

Each field carries its attrs validator; every failure is reported in one
:class:`~snakepit.errors.ConfigError`, each as ``"path.to.field: what is wrong"``
(:mod:`snakepit._checks`). :meth:`PoolConfig.from_dict` structures plain data (a TOML
table, say) through the module's one cattrs converter, so unknown keys and nested
tables are reported with their paths beside every other problem.
"""

from __future__ import annotations

import os
import re
import sys
import tomllib
from collections.abc import Mapping
from typing import Any, Literal

import attrs
import cattrs
from cattrs.errors import ClassValidationError
from cattrs.gen import make_mapping_structure_fn

from snakepit._checks import (
    at_least,
    building,
    config_error,
    defaults,
    in_field_order,
    is_int,
    mapping_of,
    must,
    non_empty_str,
    noted,
    optional,
    positive,
    problems,
    str_tuple,
    to_tuple,
    validate,
)
from snakepit.errors import ConfigError
from snakepit.policies import CircuitBreakerPolicy, RestartPolicy, RetryPolicy
from snakepit.protocol.codecs import CODEC_NAMES
from snakepit.protocol.wire import DEFAULT_MAX_FRAME_SIZE

__all__ = ["CircuitBreakerPolicy", "Codec", "PoolConfig", "RestartPolicy", "RetryPolicy",
           "SnakepitConfig"]

Codec = Literal["msgpack", "json", "auto"]

_CPU_MULTIPLE = re.compile(r"^\s*(\d+)\s*x\s*$")
_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def resolve_size(value: Any) -> Any:
    """``"2x"`` means twice the CPU count; anything else is left for validation."""
    if isinstance(value, str) and (match := _CPU_MULTIPLE.match(value)):
        return int(match.group(1)) * (os.cpu_count() or 1)
    return value


def _handler_spec(value: Any) -> bool:
    module, sep, attr = value.partition(":") if isinstance(value, str) else ("", "", "")
    return bool(sep and module and attr)


# The checks of the fields below, several shared (each an attrs validator).
_NAME = must(non_empty_str, "must be a non-empty string")
_PATH = must(non_empty_str, "must be a path")
_BOOL = must(lambda v: isinstance(v, bool), "must be true or false")
_SECONDS = must(positive, "must be a finite number > 0")
_SECONDS_OR_NONE = must(optional(positive), "must be a finite number > 0 or None")
_GRACE = must(at_least(0), "must be a finite number >= 0")
_COUNT = must(at_least(1, integer=True), "must be an integer >= 1")

DEFAULT_ALLOWED_TARGETS = ("json", "math", "statistics", "itertools", "collections", "datetime",
                           "decimal", "fractions", "textwrap", "difflib", "unicodedata")
"""Standard-library modules that compute on their arguments (no files, no processes).
``operator`` and ``functools`` are not among them (``attrgetter``, ``methodcaller`` and
friends read any attribute, private ones included), nor ``string`` (``Formatter`` does
the same through format fields)."""


@attrs.frozen(kw_only=True)
class PoolConfig:
    """Everything a pool needs to know; immutable once built.

    Raises:
        ConfigError: one or more fields are invalid; every bad field is named.
    """

    name: str = attrs.field(default="default", validator=_NAME)
    """The pool's name, used in worker ids, logs and stats."""
    size: int = attrs.field(default=4, converter=resolve_size, validator=must(
        at_least(1, integer=True), "must be an integer >= 1, or 'Nx' for N times the CPU count"))
    """Number of worker processes; ``"2x"`` means twice the CPU count."""
    handler: str = attrs.field(default="snakepit.bridge:CommandHandler",
                               validator=must(_handler_spec, "must look like 'module:Class'"))
    """``module:Class`` of the :class:`snakepit.bridge.CommandHandler` the workers serve."""
    python: str = attrs.field(default=sys.executable, validator=_PATH)
    """Python interpreter the workers run, or a virtualenv's directory (its
    ``bin/python``, run as if the virtualenv were activated). Its environment needs only
    msgpack, or nothing with ``codec="json"``."""
    adapter: str = attrs.field(default="python",
                               validator=must(non_empty_str, "must be an adapter name"))
    """How workers start: ``python`` (the bridge), ``command`` (``command`` below), or
    an adapter a plugin installed (``node``)."""
    kind: str = attrs.field(default="standard",
                            validator=must(non_empty_str, "must be a pool kind name"))
    """The pool kind: ``standard``, or one a plugin installed (``gpu``)."""
    options: Mapping[str, Any] = attrs.field(factory=dict, validator=must(
        mapping_of(str, object), "must be a table with string keys"))
    """Settings for the adapter and the pool kind (documented by each plugin)."""
    command: tuple[str, ...] | None = attrs.field(default=None, converter=to_tuple, validator=must(
        optional(lambda v: str_tuple(v) and len(v) > 0), "must be a non-empty list of strings"))
    """Full argv of a worker that speaks the wire protocol itself; replaces
    ``python -m snakepit.bridge --handler ...`` when set."""
    env: Mapping[str, str] = attrs.field(factory=dict, validator=must(
        mapping_of(str, str), "must map strings to strings"))
    """Extra environment variables for the workers."""
    cwd: str | None = attrs.field(default=None, validator=must(
        optional(lambda v: isinstance(v, str)), "must be a path"))
    """Working directory of the workers (default: the host's)."""
    codec: Codec = attrs.field(default="msgpack", validator=must(
        lambda v: v in (*CODEC_NAMES, "auto"), "must be msgpack, json or auto"))
    """Payload codec: ``msgpack``, ``json``, or ``auto`` (msgpack when the worker has it)."""
    max_frame_size: int = attrs.field(default=DEFAULT_MAX_FRAME_SIZE, validator=must(
        lambda v: is_int(v) and 1024 <= v < 2**32, "must be an integer in [1024, 2**32)"))
    """Largest frame payload either side accepts, in bytes."""
    startup_timeout: float = attrs.field(default=30.0, validator=_SECONDS)
    """Seconds a worker has from spawn to a completed handshake."""
    call_timeout: float | None = attrs.field(default=None, validator=_SECONDS_OR_NONE)
    """Default ``timeout`` of calls that pass none (``None``: no limit)."""
    max_queue: int = attrs.field(default=1024, validator=must(at_least(0, integer=True),
                                                             "must be an integer >= 0"))
    """Calls that may wait for a worker; the next one gets :class:`PoolSaturated`."""
    pipeline_depth: int = attrs.field(default=16, validator=_COUNT)
    """Most calls a worker may hold per unit of its concurrency. When every worker is
    busy, further calls wait in the workers' pipes, so a worker never idles between
    calls -- as deep as about a millisecond of expected work (quick calls go up to this
    deep, calls of a millisecond or more at most 2: one running, one waiting). 2 fixes
    the depth at one waiting call; 1 disables pipelining (a call then always goes to
    whichever worker frees first)."""
    cancel_grace: float = attrs.field(default=0.5, validator=_GRACE)
    """Seconds a worker has to stop a cancelled or timed-out call before it is killed."""
    shutdown_grace: float = attrs.field(default=5.0, validator=_GRACE)
    """Seconds workers have to exit after the shutdown frame before SIGTERM."""
    kill_timeout: float = attrs.field(default=2.0, validator=_SECONDS)
    """Seconds between SIGTERM and SIGKILL in the shutdown ladder."""
    stream_window: int = attrs.field(default=64, validator=_COUNT)
    """Chunks a stream may have in flight before the consumer grants more credit."""
    host_tool_limit: int = attrs.field(default=16, validator=_COUNT)
    """Host tools (``pool.register_tool``) running at once for the pool's workers."""
    stream_idle_timeout: float | None = attrs.field(default=30.0, validator=_SECONDS_OR_NONE)
    """Seconds a stream's consumer may take no chunk (time spent waiting inside a read
    does not count) before the stream is cancelled, its worker freed and the consumer's
    next read raises :class:`StreamIdleTimeout` (``None``: no limit)."""
    session_ttl: float | None = attrs.field(default=3600.0, validator=_SECONDS_OR_NONE)
    """Default TTL of sessions: one unused this long expires (``None``: never)."""
    health_check_interval: float | None = attrs.field(default=30.0, validator=_SECONDS_OR_NONE)
    """Seconds between health checks of idle workers (``None``: no health checks)."""
    health_check_timeout: float = attrs.field(default=5.0, validator=_SECONDS)
    """Seconds an idle worker has to answer a health-check ping before it is replaced."""
    heartbeat_interval: float | None = attrs.field(default=1.0, validator=_SECONDS_OR_NONE)
    """Seconds between heartbeat frames, sent even while a call runs (None: none)."""
    heartbeat_timeout: float = attrs.field(default=10.0, validator=_SECONDS)
    """A worker silent this long -- SIGSTOPped, or stuck in native code holding the
    GIL -- is killed and replaced, whether busy or idle."""
    max_calls: int | None = attrs.field(default=None, validator=must(
        optional(at_least(1, integer=True)), "must be an integer >= 1 or None"))
    """Recycle a worker after this many calls: the last one sent to it is the
    ``max_calls``-th, it finishes them and is replaced (``None``: never)."""
    worker_ttl: float | None = attrs.field(default=None, validator=_SECONDS_OR_NONE)
    """Recycle a worker this many seconds after it started (``None``: never)."""
    memory_limit: int | None = attrs.field(default=None, validator=must(
        optional(at_least(1, integer=True)), "must be a number of bytes >= 1 or None"))
    """Resident memory, in bytes, past which a worker is recycled: it finishes its
    calls, exits and is replaced (sampled at each health check; ``None``: no limit)."""
    restart: RestartPolicy = attrs.field(factory=RestartPolicy, validator=must(
        lambda v: isinstance(v, RestartPolicy), "must be a RestartPolicy"))
    """Restart policy of every worker slot."""
    allowed_targets: tuple[str, ...] = attrs.field(
        default=DEFAULT_ALLOWED_TARGETS, converter=to_tuple, validator=must(
            lambda v: str_tuple(v) and all(v), "must be a list of module prefixes"))
    """Module prefixes whose callables the enhanced bridge may call (``pool.call``):
    calling arbitrary code is a security decision, so frameworks (``"dspy"``,
    ``"pandas"``) must be added explicitly. Only objects that belong to these modules
    are reachable (not, say, a builtin or another module one of them imported); an
    entry may also name one callable exactly (``"os.getpid"``). See docs/plugins.md."""
    retry: RetryPolicy | None = attrs.field(default=None, validator=must(
        optional(lambda v: isinstance(v, RetryPolicy)), "must be a RetryPolicy or None"))
    """Automatic retries (``None``: none); see :class:`RetryPolicy`."""
    circuit_breaker: CircuitBreakerPolicy | None = attrs.field(default=None, validator=must(
        optional(lambda v: isinstance(v, CircuitBreakerPolicy)),
        "must be a CircuitBreakerPolicy or None"))
    """The pool's circuit breaker (``None``: none); see :class:`CircuitBreakerPolicy`."""
    control: bool = attrs.field(default=True, validator=_BOOL)
    """Serve the control socket (``snakepit ls``/``stats``/``top``/``recycle``/``drain``)
    in ``state_dir``; ``False`` (or ``SNAKEPIT_CONTROL=0`` in the environment) turns it
    off. With :func:`~snakepit.open_pools`, one socket serves every pool of the block if
    any of them asks for it."""
    state_dir: str | None = attrs.field(default=None, validator=must(optional(non_empty_str),
                                                                     "must be a path"))
    """Directory of the run registry (``None``: ``$SNAKEPIT_STATE_DIR``, else
    ``$XDG_RUNTIME_DIR/snakepit``, else a per-user directory under the temp dir)."""
    preload: tuple[str, ...] = attrs.field(default=(), converter=to_tuple, validator=must(
        lambda v: str_tuple(v) and all(_MODULE_NAME.match(m) for m in v),
        "must be a list of module names"))
    """Modules every worker imports before it serves (``"numpy"``, a model library).
    With ``warm_start`` they are imported once, in the template, not in each worker."""
    shm_threshold: int | None = attrs.field(default=64 << 10, validator=must(
        optional(at_least(1024, integer=True)), "must be a number of bytes >= 1024 or None"))
    """Buffers (``bytes``, ``bytearray``, ``memoryview``) of at least this many bytes go
    through a shared-memory segment in ``/dev/shm`` instead of the pipe, both ways
    (msgpack codec, workers that support it; ``None``: always through the pipe).
    Each segment is bounded by ``max_frame_size``. Default: a pipe's buffer (64 KiB)."""
    warm_start: bool = attrs.field(default=False, validator=_BOOL)
    """Fork workers from a template process that imported ``preload`` and the handler's
    module once, instead of starting each interpreter cold; replacements are forked too
    (Linux, the python adapter; see docs/performance.md for what forking implies)."""

    __attrs_pre_init__ = building
    __attrs_post_init__ = validate

    @staticmethod
    def _cross_checks(values: Mapping[str, Any], bad: set[str]) -> list[tuple[str, str]]:
        """Checks across fields, made only where each field involved is valid itself."""
        found = []
        if ("memory_limit" not in bad and "health_check_interval" not in bad
                and values["memory_limit"] is not None
                and values["health_check_interval"] is None):
            found.append(("memory_limit", "is sampled by the health check, so it needs "
                                          "health_check_interval to be set"))
        if ("heartbeat_interval" not in bad and "heartbeat_timeout" not in bad
                and values["heartbeat_interval"] is not None
                and values["heartbeat_timeout"] <= values["heartbeat_interval"]):
            found.append(("heartbeat_timeout", f"must exceed heartbeat_interval "
                                               f"({values['heartbeat_interval']})"))
        return found

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, path: str = "") -> PoolConfig:
        """Build a config from plain data (a parsed TOML or JSON table).

        Args:
            data: field names to values; ``restart``, ``retry`` and ``circuit_breaker``
                may be nested tables.
            path: prefix for error paths (``"pools.optimizer"``).

        Raises:
            ConfigError: every unknown key, mistyped and invalid value, with its path,
                nested tables included.
        """
        try:
            return converter.structure(data, cls)
        except ClassValidationError as group:
            raise config_error(group, path) from None


# -- the converter -----------------------------------------------------------------------
# Scalars, lists and plain tables go into the classes as they are: their validators
# say what each must be, in one message per field for Python and TOML alike. What the
# converter adds is the tables: unknown keys, and nested tables, each reported with its
# path beside every other problem of the table.
_AS_GIVEN = {int, float, str, bool, Codec, Mapping[str, Any], Mapping[str, str]}


def _as_given(value: Any, _: Any) -> Any:
    return value

def _structure_table(data: Any, cls: type[Any]) -> Any:
    """Structure a table into the configuration class ``cls``: every unknown key, every
    nested table's problems and every failed check of ``cls``, all at once.

    Raises:
        ClassValidationError: the problems, each noted with its field.
    """
    if isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        raise TypeError(f"must be a table (got {data!r})")
    fields = attrs.fields(attrs.resolve_types(cls))  # the annotations are strings
    found = [noted(ValueError("unknown field"), key) for key in data
             if key not in {field.name for field in fields}]
    values, bad = {}, set()
    for field in fields:
        if field.name not in data:
            continue
        try:
            value = converter.structure(data[field.name], field.type)
        except Exception as exc:  # a nested table: its own group, with its paths
            found.append(noted(exc, field.name, field.type))
            bad.add(field.name)
            continue
        values[field.name] = field.converter(value) if callable(field.converter) else value
    for field in fields:  # a required field left out
        if field.name not in data and field.default is attrs.NOTHING:
            found.append(noted(KeyError(field.name), field.name, field.type))
            bad.add(field.name)
    # the raw value of a field that failed (the cross checks skip it, but may read it:
    # a route is checked against the names of the pools, valid or not)
    raw = {name: data[name] for name in bad if name in data}
    found += problems(cls, {**defaults(cls), **raw, **values}, bad)
    if found:
        raise ClassValidationError(f"invalid {cls.__name__}", in_field_order(cls, found), cls)
    return cls(**values)


converter = cattrs.Converter(detailed_validation=True)
"""Structures configuration data into the classes of this module (one converter)."""
for _kind in (int, float, str, bool):  # before cattrs' own int(), float(), ...
    converter.register_structure_hook(_kind, _as_given)
converter.register_structure_hook_func(lambda t: t in _AS_GIVEN, _as_given)
converter.register_structure_hook_func(lambda t: t == tuple[str, ...],
                                       lambda value, _: to_tuple(value))
converter.register_structure_hook_func(attrs.has, _structure_table)
_structure_pools = make_mapping_structure_fn(dict[str, PoolConfig], converter)


def _pool_tables(data: Any, _: Any) -> Any:
    """``pools``: each table structured as a PoolConfig named by its key."""
    if not isinstance(data, Mapping):
        raise TypeError(f"must be a table of pool tables (got {data!r})")
    return _structure_pools({name: {"name": name, **table} if isinstance(table, Mapping)
                             else table for name, table in data.items()},
                            dict[str, PoolConfig])


converter.register_structure_hook_func(lambda t: t == Mapping[str, PoolConfig], _pool_tables)


@attrs.frozen(kw_only=True)
class SnakepitConfig:
    """Several named pools and how commands are routed to them.

    Raises:
        ConfigError: every problem, each with its path (``pools.optimizer.size``).
    """

    pools: Mapping[str, PoolConfig] = attrs.field(validator=must(
        mapping_of(str, PoolConfig), "must be a table of pools"))
    """The pools, by name (each pool's ``name`` is its key)."""
    routes: Mapping[str, str] = attrs.field(factory=dict, validator=must(
        mapping_of(str, str), "must map command patterns to pool names"))
    """Command pattern (``fnmatch`` glob, first match wins) to pool name."""
    default_pool: str | None = attrs.field(default=None, validator=must(
        optional(lambda v: isinstance(v, str)), "must be a pool name"))
    """The pool for commands no route matches (``None``: such commands are refused)."""

    __attrs_pre_init__ = building
    __attrs_post_init__ = validate

    @staticmethod
    def _cross_checks(values: Mapping[str, Any], bad: set[str]) -> list[tuple[str, str]]:
        pools, found = values.get("pools"), list[tuple[str, str]]()
        if not isinstance(pools, Mapping):
            return found
        if "pools" not in bad:
            if not pools:
                found.append(("pools", "must name at least one pool"))
            found += [(f"pools.{name}.name", f"must be {name!r} (the pool's key), got "
                                            f"{pool.name!r}")
                      for name, pool in pools.items() if pool.name != name]
        if "routes" not in bad:
            found += [(f"routes.{pattern}", f"no pool named {target!r}")
                      for pattern, target in values["routes"].items() if target not in pools]
        if "default_pool" not in bad and values["default_pool"] not in (None, *pools):
            found.append(("default_pool", f"no pool named {values['default_pool']!r}"))
        return found

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SnakepitConfig:
        """Build from plain data: ``{"pools": {name: {...}}, "routes": {...}, ...}``.

        Every pool is validated and every error reported at once, with its path.

        Raises:
            ConfigError: every problem, each with its path (``pools.optimizer.size``).
        """
        if not isinstance(data, Mapping):
            raise ConfigError([f"config: must be a table, got {type(data).__name__}"])
        try:
            return converter.structure(data, cls)
        except ClassValidationError as group:
            raise config_error(group) from None

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
