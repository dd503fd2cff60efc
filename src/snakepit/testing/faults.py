"""Faults injected into chosen calls of any Python handler, without writing a handler.

:meth:`Faults.wrap` turns a pool's config into one whose workers serve
:class:`FaultInjector`: your handler, unchanged, except that before each call it looks
for a fault armed for that command. :meth:`Faults.inject` arms one, as a file in a
directory the host and the workers share; the first call of that command that any
worker starts claims it (an atomic rename, so exactly one call gets it) and suffers it:

- ``crash``: the worker exits at once (code 1), as a segfaulting extension would; the
  caller gets :class:`~snakepit.WorkerCrashed`.
- ``hang``: the call never returns and ignores cancellation; the caller's timeout gives
  :class:`~snakepit.WorkerTimeout` and the worker is killed after ``cancel_grace``.
- ``slow``: the call waits ``seconds`` first, then runs normally.
- ``garbage``: the worker writes bytes that are no frame onto the wire; the caller
  gets :class:`~snakepit.ProtocolError` and the host replaces the worker.
- ``oversized``: the answer is larger than ``max_frame_size``; the caller gets the
  :class:`~snakepit.PayloadError` a real oversized answer gives, and the worker lives
  on.

The worker side uses the standard library only; :meth:`Faults.wrap` imports snakepit's
config lazily.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from snakepit.bridge import CallContext, CommandHandler
from snakepit.bridge.handler import Command

if TYPE_CHECKING:
    from snakepit.config import PoolConfig

__all__ = ["FAULT_KINDS", "Fault", "FaultInjector", "Faults"]

#: Every fault :meth:`Faults.inject` knows.
FAULT_KINDS = ("crash", "hang", "slow", "garbage", "oversized")

HANDLER_ENV = "SNAKEPIT_FAULTS_HANDLER"
"""The wrapped handler (``module:Class``), for :class:`FaultInjector` in the worker."""
DIR_ENV = "SNAKEPIT_FAULTS_DIR"
"""The directory where armed faults wait to be claimed."""
_SUFFIX = ".fault"


@dataclasses.dataclass(frozen=True)
class Fault:
    """One fault for the next call of ``command``."""

    command: str
    """The command whose next call suffers it."""
    kind: str
    """One of :data:`FAULT_KINDS`."""
    seconds: float = 1.0
    """For ``slow``: how long the call waits before it runs."""

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {self.kind!r}: one of {', '.join(FAULT_KINDS)}")
        if self.seconds < 0:
            raise ValueError("seconds must be >= 0")


def _file_prefix(command: str) -> str:
    return command.encode().hex() + "-"


class Faults:
    """Arms faults for the pools whose configs went through :meth:`wrap`.

    Args:
        directory: where armed faults wait (created if missing); a fresh one per test.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._order = itertools.count()

    def wrap(self, config: PoolConfig) -> PoolConfig:
        """``config`` with its handler served by :class:`FaultInjector`.

        Raises:
            ConfigError: the pool runs no Python handler (a ``command``, or another
                adapter): there is no handler to wrap.
        """
        import attrs

        from snakepit.errors import ConfigError

        if config.command is not None or config.adapter != "python":
            raise ConfigError([f"{config.name}: faults need a Python handler (adapter "
                               f"'python', no command); this pool has adapter "
                               f"{config.adapter!r}, command {config.command!r}"])
        if config.handler == f"{__name__}:FaultInjector":
            return config
        return attrs.evolve(config, handler=f"{__name__}:FaultInjector",
                            env={**config.env, HANDLER_ENV: config.handler,
                                 DIR_ENV: str(self.directory)})

    def inject(self, command: str, kind: str, *, seconds: float = 1.0) -> Fault:
        """Arm ``kind`` for the next call of ``command`` that a worker starts.

        Faults armed for one command are claimed in the order they were armed.

        Raises:
            ValueError: unknown ``kind``, or ``seconds`` < 0.
        """
        fault = Fault(command, kind, seconds)
        name = f"{_file_prefix(command)}{next(self._order):08d}{_SUFFIX}"
        staging = self.directory / (name + ".tmp")
        staging.write_text(json.dumps(dataclasses.asdict(fault)))
        staging.rename(self.directory / name)  # appears whole, never half written
        return fault

    def pending(self) -> list[Fault]:
        """Faults armed and not claimed yet, in the order they were armed."""
        return [Fault(**json.loads(path.read_text()))
                for path in sorted(self.directory.glob(f"*{_SUFFIX}"),
                                   key=lambda p: p.name.rsplit("-", 1)[1])]

    def clear(self) -> None:
        """Disarm every pending fault."""
        for path in self.directory.glob(f"*{_SUFFIX}"):
            path.unlink(missing_ok=True)


# -- the worker side -----------------------------------------------------------------


def _claim(directory: str, command: str) -> Fault | None:
    """Take the oldest fault armed for ``command``, or None (another worker may win
    the race for it: the rename succeeds for exactly one)."""
    prefix = _file_prefix(command)
    try:
        names = sorted(n for n in os.listdir(directory)
                       if n.startswith(prefix) and n.endswith(_SUFFIX))
    except FileNotFoundError:
        return None
    for name in names:
        path = os.path.join(directory, name)
        taken = f"{path}.taken-{os.getpid()}"
        try:
            os.rename(path, taken)
        except FileNotFoundError:
            continue
        with open(taken) as f:
            return Fault(**json.loads(f.read()))
    return None


def _hang() -> None:
    while True:  # neither answers nor heeds cancellation: only a kill ends it
        time.sleep(3600)


def _suffer(fault: Fault, handler: CommandHandler, ctx: CallContext) -> str | None:
    """Apply ``fault`` to the running call; returns a value to answer with instead of
    the command's, or None to run the command."""
    sys.stderr.write(f"snakepit.testing: injecting {fault.kind!r} into call "
                     f"{ctx.id} ({fault.command})\n")
    sys.stderr.flush()
    if fault.kind == "crash":
        os._exit(1)
    if fault.kind == "hang":
        _hang()
    if fault.kind == "slow":
        time.sleep(fault.seconds)
        return None
    if fault.kind == "garbage":
        bridge = handler.bridge
        with bridge._write_lock:  # between frames, never inside one
            os.write(bridge._write_fd, b"\x00\x00\x00\x08\xc1garbage")
        _hang()  # the host kills this worker; its answer would race that
    # oversized: one character more than a frame may carry (str: both codecs carry it)
    size: int = handler.bridge._max_frame_size + 1
    return "x" * size


class FaultInjector(CommandHandler):
    """Serves the handler named in ``$SNAKEPIT_FAULTS_HANDLER`` with armed faults.

    Instantiating it returns an instance of *that* handler (its type, commands and
    ``info`` unchanged) whose command lookup first claims a fault armed for the call
    (see :class:`Faults`). Set it up with :meth:`Faults.wrap`, not by hand.
    """

    def __new__(cls) -> FaultInjector:
        from snakepit.bridge.__main__ import load_handler

        handler = load_handler(os.environ[HANDLER_ENV])
        _install(handler, os.environ[DIR_ENV])
        return handler  # type: ignore[return-value]  # the wrapped handler, patched


def _install(handler: CommandHandler, directory: str) -> None:
    """Make ``handler.lookup`` return commands that claim armed faults first."""
    lookup = handler.lookup
    wrapped: dict[str, tuple[Command, Command]] = {}  # name: (the handler's, faulty)

    def faulty_lookup(name: str) -> Command | None:
        command = lookup(name)
        if command is None:
            return None
        if name not in wrapped or wrapped[name][0] is not command:  # (re-registered)
            wrapped[name] = (command, _faulty(command, handler, directory))
        return wrapped[name][1]

    handler.lookup = faulty_lookup  # type: ignore[method-assign]


def _faulty(command: Command, handler: CommandHandler, directory: str) -> Command:
    def call(args: Any, ctx: CallContext) -> Any:
        fault = _claim(directory, command.name)
        if fault is not None:
            instead = _suffer(fault, handler, ctx)
            if instead is not None:
                return iter((instead,)) if command.streaming else instead
        return command(args, ctx)

    faulty = Command(command.name, call)
    faulty.streaming = command.streaming
    return faulty
