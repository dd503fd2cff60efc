"""A host for the host-death test: opens a Ray pool, prints its workers, then waits.

``python host_script.py <ray address> <size>`` prints one JSON line -- each worker's pid
and its actor's pid -- once the pool is up, then sleeps until it is killed.
"""

from __future__ import annotations

import json
import sys

import trio

import snakepit


async def main(address: str, size: int) -> None:
    config = snakepit.PoolConfig(size=size, kind="ray", handler="snakepit.testing:ChaosHandler",
                                 options={"address": address, "num_cpus": 0.5})
    async with snakepit.open_pool(config) as pool:
        workers = [{"pid": w.pid, "actor_pid": w.info["actor_pid"],
                    "actor": w.info["ray_actor"]} for w in pool.stats().workers]
        assert all([await pool.execute("pid", timeout=10) for _ in range(size)])
        print(json.dumps(workers), flush=True)
        await trio.sleep_forever()


if __name__ == "__main__":
    trio.run(main, sys.argv[1], int(sys.argv[2]))
