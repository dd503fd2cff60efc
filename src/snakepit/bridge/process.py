"""Making this process a well-behaved worker: signals, parent death, private wire fds.

Standard library only, like the rest of the bridge.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any


class Terminated(BaseException):
    """SIGTERM or SIGINT arrived. Exit cleanly."""


def _on_signal(signum: int, frame: Any) -> None:
    raise Terminated(signum)


def install_signal_handlers() -> None:
    """SIGTERM and SIGINT end the worker cleanly (no traceback)."""
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when the host dies (PR_SET_PDEATHSIG).

    The host passes its pid in ``SNAKEPIT_HOST_PID``; if we have already been
    re-parented (the host died before we got here) we exit at once.
    """
    host_pid = os.environ.get("SNAKEPIT_HOST_PID")
    if not sys.platform.startswith("linux") or not host_pid:
        return
    import ctypes

    pr_set_pdeathsig = 1
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - exotic libc
        return
    if os.getppid() != int(host_pid):
        os._exit(0)


def private_wire_fds() -> tuple[int, int]:
    """Move the wire to private fds; returns (read_fd, write_fd).

    Fd 0 then reads /dev/null and fd 1 writes to stderr, so a stray ``print`` (or a C
    library writing to stdout) cannot corrupt the wire, and a subprocess a handler
    spawns does not inherit it.
    """
    wire_in = os.dup(0)
    wire_out = os.dup(1)  # os.dup makes non-inheritable fds (PEP 446)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    return wire_in, wire_out
