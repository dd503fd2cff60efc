"""The fork server's template process (worker side, standard library only).

``python -m snakepit.bridge.forkserver --handler module:Class --preload numpy
--control-fd N`` imports the preloaded modules and the handler's module once, tells the
host it is ready, then forks a worker for each request that arrives on the control
socket (a Unix ``SOCK_SEQPACKET`` socket the host passed as fd ``N``). A request is a
JSON map ``{env, cwd, handler}`` with the worker's three pipe ends attached as
``SCM_RIGHTS``; the answer is ``{pid}`` or ``{error}``.

Each worker is forked twice -- the template forks an intermediate process, which forks
the worker and exits at once -- so the worker is re-parented. The host marks itself a
*child subreaper* (``PR_SET_CHILD_SUBREAPER``) while it waits for the answer, which
comes only after the intermediate has been reaped: the worker then is a child of the
host, exactly like a worker the host started itself. The host reaps it, and its
parent-death signal (set by the worker after the move) fires when the *host* dies, not
the template. Nothing a worker does depends on the template staying alive.

The template exits on end of file on the control socket, on SIGTERM, and -- through its
own parent-death signal -- with the host.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import socket
import sys
import time
import traceback
from typing import Any

from snakepit.bridge.__main__ import main as bridge_main  # imported once, here
from snakepit.bridge.process import die_with_parent

# How long a fresh worker waits to be re-parented to the host (it happens as soon as
# the intermediate process exits, well within a millisecond).
_ADOPTION_TIMEOUT = 10.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m snakepit.bridge.forkserver",
                                     description=__doc__)
    parser.add_argument("--handler", required=True, help="module:Class the workers serve")
    parser.add_argument("--preload", action="append", default=[], metavar="MODULE",
                        help="a module to import once, before forking (repeatable)")
    parser.add_argument("--control-fd", type=int, required=True)
    options = parser.parse_args(argv)
    die_with_parent()
    os.dup2(2, 1)  # a stray print in a preloaded module must not fill an unread pipe
    control = socket.socket(fileno=options.control_fd)
    try:
        for name in options.preload:
            importlib.import_module(name)
        importlib.import_module(options.handler.partition(":")[0])
    except BaseException:
        sys.stderr.write("snakepit.bridge.forkserver: cannot import the preloaded modules "
                         "or the handler's module\n")
        traceback.print_exc()
        return 3
    control.send(json.dumps({"ready": True, "pid": os.getpid(),
                             "preloaded": options.preload}).encode())
    return serve_forks(control)


def serve_forks(control: socket.socket) -> int:
    """Fork workers for the requests that arrive until the host closes the socket.

    Requests that arrive together (a pool starting all its workers) are forked as one
    batch, through one intermediate process: a fork and an exit of a process that has
    imported numpy cost a few milliseconds each, and a batch pays them once.
    """
    while True:
        batch = _receive_batch(control)
        if batch is None:
            return 0
        good = [(request, fds) for request, fds in batch
                if isinstance(request, dict) and len(fds) == 3]
        try:
            pids = iter(_fork_workers(good, control) if good else [])
            answers = [{"pid": next(pids)} if isinstance(request, dict) and len(fds) == 3
                       else {"error": f"malformed fork request ({len(fds)} fds)"}
                       for request, fds in batch]
        except Exception as exc:  # answered, so the host fails the starts clearly
            answers = [{"error": f"{type(exc).__name__}: {exc}"} for _ in batch]
        finally:
            for _, fds in batch:
                for fd in fds:
                    os.close(fd)
        try:
            for answer in answers:
                control.send(json.dumps(answer).encode())
        except OSError:
            return 0


def _receive_batch(control: socket.socket) -> list[tuple[Any, list[int]]] | None:
    """Block for one request, then take every other one already waiting; None at EOF."""
    batch: list[tuple[Any, list[int]]] = []
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(control, 1 << 20, 3)
        except BlockingIOError:
            break
        except OSError:
            message, fds = b"", []
        finally:
            control.setblocking(False)
        if not message:
            for fd in fds:
                os.close(fd)
            if not batch:
                return None
            break
        try:
            request = json.loads(message)
        except ValueError:
            request = None
        batch.append((request, list(fds)))
    control.setblocking(True)
    return batch


def _fork_workers(batch: list[tuple[dict[str, Any], list[int]]],
                  control: socket.socket) -> list[int]:
    """Fork a worker per request, through one intermediate process; return their pids
    once the intermediate has exited (the workers then are the host's children)."""
    report_read, report_write = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    intermediate = os.fork()
    if intermediate == 0:
        try:
            os.close(report_read)
            # end of file on this pipe tells the workers the intermediate has exited
            gone_read, gone_write = os.pipe()
            for index, (request, fds) in enumerate(batch):
                worker = os.fork()
                if worker == 0:
                    os.close(gone_write)
                    os.close(report_write)
                    for _, others in batch[:index] + batch[index + 1:]:
                        for fd in others:
                            os.close(fd)
                    _become_worker(request, fds, control, gone_read)  # never returns
                os.write(report_write, worker.to_bytes(4, "little"))
        finally:
            os._exit(0)
    os.close(report_write)
    report = b""
    try:
        while chunk := os.read(report_read, 4 * len(batch)):
            report += chunk
    finally:
        os.close(report_read)
        os.waitpid(intermediate, 0)  # from here on the workers are the host's children
    if len(report) != 4 * len(batch):
        raise OSError(f"the intermediate process forked {len(report) // 4} of "
                      f"{len(batch)} workers")
    return [int.from_bytes(report[i:i + 4], "little") for i in range(0, len(report), 4)]


def _become_worker(request: dict[str, Any], fds: list[int], control: socket.socket,
                   intermediate_gone: int) -> None:
    """In the forked worker: take the pipes, the environment, then serve; never returns."""
    code = 1
    try:
        host_pid = int(request["env"]["SNAKEPIT_HOST_PID"])
        os.setsid()  # its own session and process group, as a cold-started worker
        control.close()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.environ.clear()
        os.environ.update(request["env"])
        if request.get("cwd"):
            os.chdir(request["cwd"])
        os.read(intermediate_gone, 1)  # end of file: the intermediate is exiting
        os.close(intermediate_gone)
        give_up = time.monotonic() + _ADOPTION_TIMEOUT
        while os.getppid() != host_pid:  # it closes its files just before re-parenting
            if time.monotonic() > give_up:
                return
            time.sleep(0.0001)
        code = bridge_main(["--handler", request["handler"]])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
