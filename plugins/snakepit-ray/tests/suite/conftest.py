"""The Ray suite's fixtures: one local Ray (2 CPUs, 1 GPU) for the session, loopback only.

These tests run only inside a private network namespace that has nothing but loopback
(``tests/test_ray_plugin.py`` and ``nox -s ray`` start them there with ``unshare -n``),
so that Ray -- which otherwise picks the machine's interface address -- and the worker
connections stay on 127.0.0.1. Their files are named ``suite_*.py`` so that a plain
``pytest`` run does not collect them outside that namespace.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

# Ray's own threads and logs are chatty; nothing here depends on them.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def loopback_only() -> bool:
    """Whether this process's network namespace has no interface but ``lo``.

    (Asked of the kernel: /sys/class/net shows the namespace sysfs was mounted in.)
    """
    return [name for _, name in socket.if_nameindex()] == ["lo"]


@pytest.fixture(scope="session")
def ray_temp_dir() -> Iterator[Path]:
    """Where the session's Ray keeps its files (logs, sockets), removed afterwards.

    Short, because Ray's unix socket paths must fit in 107 bytes.
    """
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="sp-ray-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def ray_address(ray_temp_dir: Path) -> Iterator[str]:
    """Start the session's local Ray (as the pools' default would) and yield its address."""
    if not loopback_only():
        pytest.exit("the Ray suite runs only inside a loopback-only network namespace "
                    "(run plugins/snakepit-ray/tests/test_ray_plugin.py, or nox -s ray)",
                    returncode=3)
    import ray

    from snakepit_ray import connect

    # one declared GPU (none need exist): Ray hands it out and sets CUDA_VISIBLE_DEVICES
    address = connect(None, {"num_cpus": 2, "num_gpus": 1, "include_dashboard": False,
                             "_temp_dir": str(ray_temp_dir)})
    yield address
    ray.shutdown()


@pytest.fixture(autouse=True)
def no_leftovers(ray_address: str) -> Iterator[None]:
    """Every test leaves no actor and no worker process behind, and Ray has every CPU
    and GPU back (no actor holds them, not even a pending one)."""
    yield
    import time

    import ray

    deadline = time.monotonic() + 10
    while (left := leftover_processes()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"test left processes behind: {left}"
    total = ray.cluster_resources()

    def released() -> bool:
        free = ray.available_resources()
        return all(free.get(name) == total[name] for name in ("CPU", "GPU"))

    while not released() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert released(), (ray.available_resources(), total)


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def same_network(pid: int) -> bool:
    """Whether ``pid`` is in this network namespace (others' tests share the pids)."""
    try:
        return os.readlink(f"/proc/{pid}/ns/net") == os.readlink("/proc/self/ns/net")
    except OSError:
        return False


def leftover_processes() -> dict[int, str]:
    """Actor processes (``ray::SnakepitWorker``) and bridges alive in this namespace."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and is_alive(int(entry.name)) and same_network(int(entry.name)):
            line = cmdline(int(entry.name))
            if line.startswith("ray::SnakepitWorker") or "-m snakepit.bridge" in line:
                found[int(entry.name)] = line
    return found


def is_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def parent_pid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
