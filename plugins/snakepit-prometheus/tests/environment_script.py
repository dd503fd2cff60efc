"""Runs a pool in a fresh process and prints, as JSON, what the Prometheus plugin did.

Used by ``test_prometheus_plugin.py``: the environment variables the plugin reads are
read once per process, so each configuration gets a process of its own.
"""

import json
import os
import urllib.request
from pathlib import Path

import trio
from prometheus_client import generate_latest

import snakepit
import snakepit_prometheus


def listening_ports() -> list[int]:
    """TCP ports this process listens on (its sockets matched against /proc/net/tcp*)."""
    inodes = set()
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    ports = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.append(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read().decode()


async def main() -> None:
    config = snakepit.PoolConfig(size=1, name="env-pool", handler="snakepit.testing:ChaosHandler")
    async with snakepit.open_pool(config) as pool:
        for i in range(3):
            await pool.execute("echo", i)
        servers = snakepit_prometheus.servers()
        report = {
            "servers": [[server.addr, server.port] for server in servers],
            "listening": listening_ports(),
            "scraped": (await trio.to_thread.run_sync(fetch, servers[0].url)
                        if servers else None),
            "collected": generate_latest(snakepit_prometheus.REGISTRY).decode(),
        }
    print(json.dumps(report))


trio.run(main)
