"""``snakepit doctor``: will these pools start here? Find out before a deploy fails.

Each check is a :class:`Finding` -- pass, warn or fail, with what was seen and, for
anything not passing, how to fix it. Machine checks look at the state directory, the
pipe size limit and the process/thread and file limits; pool checks resolve the
adapter and pool kind (the plugins the config names), find the executable, and start
one real worker of the pool and complete its handshake.
"""

from __future__ import annotations

import os
import resource
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

import attrs
import trio

from snakepit.adapters import find_adapter
from snakepit.config import PoolConfig, SnakepitConfig
from snakepit.errors import ConfigError, SnakepitError, WorkerStartupError
from snakepit.kinds import find_kind
from snakepit.process.launch import PIPE_SIZE
from snakepit.process.registry import default_state_dir
from snakepit.process.trust import secure_dir

Status = Literal["pass", "warn", "fail"]

# A worker holds three pipes on the host (6 descriptors until the child's ends close,
# 3 after) plus a pidfd; a bridge runs a reader and a heartbeat thread.
_FDS_PER_WORKER = 4
_THREADS_PER_WORKER = 3


@attrs.frozen
class Finding:
    """One check's outcome."""

    scope: str
    """``machine``, or the pool's name."""
    check: str
    status: Status
    detail: str
    fix: str = ""
    """What to do about a warning or a failure."""


def load_config(path: str | None) -> tuple[SnakepitConfig, str]:
    """The config to check and where it came from: ``path``, else ``./snakepit.toml``,
    else ``[tool.snakepit]`` of ``./pyproject.toml``, else one default pool.

    Raises:
        ConfigError: the file is invalid (every problem named).
    """
    if path is not None:
        return SnakepitConfig.from_toml(path), path
    if Path("snakepit.toml").is_file():
        return SnakepitConfig.from_toml("snakepit.toml"), "snakepit.toml"
    if Path("pyproject.toml").is_file():
        try:
            return SnakepitConfig.from_toml("pyproject.toml"), "pyproject.toml"
        except ConfigError as exc:
            if not any("no [tool.snakepit] table" in error for error in exc.errors):
                raise
    return SnakepitConfig(pools={"default": PoolConfig()}), "the default pool (no config found)"


def _state_dir(config: PoolConfig) -> Path:
    return Path(config.state_dir) if config.state_dir else default_state_dir()


def machine_findings(pools: Iterable[PoolConfig]) -> list[Finding]:
    """State directories, the pipe size limit, process and file limits."""
    pools = list(pools)
    found = [_check_state_dir(directory)
             for directory in sorted({_state_dir(pool) for pool in pools})]
    found.append(_check_pipe_size())
    workers = sum(pool.size for pool in pools)
    found.append(_check_limit(resource.RLIMIT_NPROC, "process/thread limit (ulimit -u)",
                              workers * _THREADS_PER_WORKER + 64, "ulimit -u"))
    found.append(_check_limit(resource.RLIMIT_NOFILE, "open files limit (ulimit -n)",
                              workers * _FDS_PER_WORKER + 64, "ulimit -n"))
    return found


def _check_state_dir(directory: Path) -> Finding:
    try:
        secure_dir(directory)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".doctor-"):
            pass
    except ConfigError as exc:  # another user owns it or may write it
        problem, _, fix = exc.errors[0].partition("; ")
        return Finding("machine", f"state directory {directory}", "fail",
                       problem.removeprefix(f"state_dir: {directory} "), fix)
    except OSError as exc:
        return Finding("machine", f"state directory {directory}", "fail",
                       f"not writable: {exc.strerror or exc}",
                       "set state_dir (or SNAKEPIT_STATE_DIR) to a directory this user can "
                       "write: the run registry and control socket live there")
    return Finding("machine", f"state directory {directory}", "pass", "writable")


def _check_pipe_size() -> Finding:
    try:
        limit = int(Path("/proc/sys/fs/pipe-max-size").read_text())
    except (OSError, ValueError):
        return Finding("machine", "pipe buffer size", "warn", "cannot read "
                       "/proc/sys/fs/pipe-max-size (not Linux?)",
                       "large payloads will use the default pipe buffer")
    if limit < PIPE_SIZE and os.geteuid() != 0:
        return Finding("machine", "pipe buffer size", "warn",
                       f"fs.pipe-max-size is {limit} bytes: pipes cannot be raised to "
                       f"{PIPE_SIZE} (large payloads move about half as fast)",
                       f"sysctl -w fs.pipe-max-size={PIPE_SIZE}")
    return Finding("machine", "pipe buffer size", "pass",
                   f"pipes can be raised to {PIPE_SIZE} bytes (limit {limit})")


def _check_limit(which: int, name: str, needed: int, command: str) -> Finding:
    soft, _ = resource.getrlimit(which)
    if soft != resource.RLIM_INFINITY and soft < needed:
        return Finding("machine", name, "fail", f"soft limit {soft}, the pools need about "
                       f"{needed}", f"raise it: {command} {needed} (or in the service unit)")
    shown = "unlimited" if soft == resource.RLIM_INFINITY else str(soft)
    return Finding("machine", name, "pass", f"soft limit {shown} (about {needed} needed)")


def _fix_for_startup(error: WorkerStartupError, config: PoolConfig) -> str:
    """A suggestion matched to what a failed worker wrote on its way out."""
    tail = error.stderr_tail or ""
    if "No module named 'msgpack'" in tail:
        return (f"install msgpack for {config.python} ({config.python} -m pip install "
                "msgpack), or set codec = 'json'")
    if "No module named 'snakepit'" in tail:
        return (f"{config.python} cannot import snakepit.bridge: use an interpreter of the "
                "host's Python version")
    module = config.handler.partition(":")[0]
    if "ModuleNotFoundError" in tail or "ImportError" in tail or "AttributeError" in tail:
        return (f"make handler {config.handler!r} importable by {config.python} "
                f"(is {module!r} installed there, or on PYTHONPATH / cwd?)")
    if "GPU" in str(error):
        return ("run on a machine with an NVIDIA GPU and its driver (nvidia-smi), or set "
                f"pools.{config.name}.options.fallback_cpu = true")
    if "startup_timeout" in str(error):
        return "the worker is slow to start: raise startup_timeout, or look at its stderr"
    return "run the worker's command by hand and read its stderr (shown above)"


async def pool_findings(config: PoolConfig, *,
                        on_started: Callable[[], None] | None = None) -> list[Finding]:
    """Resolve the pool's adapter and kind, find its executable, start one worker."""
    from snakepit.pool.tree import run_pool

    name = config.name
    found: list[Finding] = []
    try:
        adapter = find_adapter(config)
    except ConfigError as exc:
        found.append(Finding(name, "adapter", "fail", "; ".join(exc.errors),
                             f"install the plugin that provides adapter {config.adapter!r} "
                             "(`snakepit plugins` lists what is installed)"))
        return found
    found.append(Finding(name, "adapter", "pass", f"{adapter.name} (codecs "
                         f"{', '.join(adapter.codecs)})"))
    try:
        spec = adapter.launch(config, f"{name}-doctor")
    except ConfigError as exc:  # the adapter cannot start a worker as configured
        fields = sorted({error.partition(":")[0] for error in exc.errors})
        found.append(Finding(name, "executable", "fail", "; ".join(exc.errors),
                             "install what the detail names, or set "
                             + ", ".join(f"pools.{name}.{f}" for f in fields)))
        return found
    try:
        kind = find_kind(config)
        await trio.to_thread.run_sync(kind.prepare, config)  # may query devices
        found.append(Finding(name, "pool kind", "pass", kind.name))
    except ConfigError as exc:
        found.append(Finding(name, "pool kind", "fail", "; ".join(exc.errors),
                             f"install the plugin that provides kind {config.kind!r}, or fix "
                             f"pools.{name}.options"))
        return found
    except SnakepitError as exc:  # the kind cannot run here (no GPU, say)
        found.append(Finding(name, "pool kind", "fail", str(exc),
                             "run on a machine that has what this kind needs, or use its "
                             "CPU fallback option (see the plugin's README)"))
        return found
    executable = spec.argv[0]
    resolved = shutil.which(executable) if os.sep not in executable else (
        executable if os.access(executable, os.X_OK) else None)
    if resolved is None:
        found.append(Finding(name, "executable", "fail", f"{executable!r} not found or "
                             "not executable", f"install {os.path.basename(executable)!r} "
                             f"or point pools.{name} at an existing one (python/command)"))
        return found
    found.append(Finding(name, "executable", "pass", resolved))
    trial = attrs.evolve(config, size=1, health_check_interval=None, memory_limit=None,
                         control=False)
    try:
        async with run_pool(trial, control=False) as pool:
            worker = pool.workers()[0]
            welcome = worker.welcome
            assert welcome is not None
            found.append(Finding(name, "worker handshake", "pass",
                                 f"pid {welcome.pid}, codec {welcome.codec}, concurrency "
                                 f"{welcome.concurrency}, {welcome.python or ''} "
                                 f"{welcome.handler or ''}".strip()))
    except WorkerStartupError as exc:
        tail = " | ".join((exc.stderr_tail or "").strip().splitlines()[-3:])
        found.append(Finding(name, "worker handshake", "fail",
                             f"{exc}{': ' + tail if tail else ''}",
                             _fix_for_startup(exc, config)))
    except ConfigError as exc:  # found on start (a state dir another user controls)
        problem, _, fix = "; ".join(exc.errors).partition("; ")
        found.append(Finding(name, "worker handshake", "fail", problem, fix))
    finally:
        if on_started is not None:
            on_started()
    return found


async def diagnose(config: SnakepitConfig, *,
                   on_pool_checked: Callable[[], None] | None = None) -> list[Finding]:
    """Every finding for ``config``: the machine's, then each pool's (checked at once)."""
    found = machine_findings(config.pools.values())
    results: dict[str, list[Finding]] = {}

    async def check(pool: PoolConfig) -> None:
        results[pool.name] = await pool_findings(pool, on_started=on_pool_checked)

    async with trio.open_nursery() as nursery:
        for pool in config.pools.values():
            nursery.start_soon(check, pool)
    for name in config.pools:
        found += results[name]
    return found


def as_data(findings: Iterable[Finding]) -> list[dict[str, Any]]:
    return [attrs.asdict(finding) for finding in findings]
