"""The real-GPU check (not collected by pytest: it needs an NVIDIA GPU and torch).

Run ``python plugins/snakepit-gpu/tests/real_gpu_check.py``: a GPU pool of one worker
per device; each worker must see exactly one device, and torch there must report the
GPU nvidia-smi names for that index.
"""

import trio

import snakepit
from snakepit_gpu import query


async def main() -> None:
    devices = query()
    config = snakepit.PoolConfig(size=len(devices), kind="gpu",
                                 handler="snakepit.bridge.enhanced:EnhancedHandler",
                                 allowed_targets=("torch.cuda",))
    async with snakepit.open_pool(config) as pool:
        for worker in pool.stats().workers:
            index = worker.info["device"]
            count = await pool.call("torch.cuda.device_count")
            name = await pool.call("torch.cuda.get_device_name", 0)
            print(f"{worker.id}: device {index} -> torch sees {count} device(s): {name}")
            assert count == 1 and name == devices[index].name


trio.run(main)
