"""The real-GPU check (not collected by pytest: it needs an NVIDIA GPU and torch).

Run ``python plugins/snakepit-gpu/tests/real_gpu_check.py``: a GPU pool of one worker
per device. Each worker, checked on its own, must see exactly one device, and that
device must be the physical GPU the pool placed it on (same UUID as ``nvidia-smi``
reports for that index, same name).
"""

import trio

import snakepit
from snakepit_gpu import query
from snakepit_gpu.devices import Device

ENHANCED = "snakepit.bridge.enhanced:EnhancedHandler"


def same_uuid(smi: str, torch_text: str) -> bool:
    """nvidia-smi says ``GPU-<uuid>``; torch prints the UUID with or without the prefix."""
    def bare(text: str) -> str:
        text = text.strip().lower()
        return text[4:] if text.startswith("gpu-") else text

    return bare(smi) == bare(torch_text)


async def check_worker(pool: snakepit.Pool, placed: dict[str, int],
                       devices: dict[int, Device], checked: dict[str, str]) -> None:
    # one pipeline runs wholly in one worker; the ref it returns says which, and later
    # calls through that ref go to that worker only
    count, props = await pool.pipeline([
        {"target": "torch.cuda.device_count"},
        {"target": "torch.cuda.get_device_properties", "args": [0]},
    ])
    if props.worker in checked:
        return
    index = placed[props.worker]
    device = devices[index]
    name = await props.getattr("name")
    uuid = await pool.call("builtins.str", await props.getattr("uuid"))
    line = (f"{props.worker} (pid {props.pid}): placed on GPU {index} {device.uuid}; "
            f"torch sees {count} device(s): {name} {uuid}")
    print(line)
    assert count == 1, line
    assert name == device.name and same_uuid(device.uuid, uuid), line
    checked[props.worker] = line


async def main() -> None:
    devices = {device.index: device for device in query()}
    config = snakepit.PoolConfig(size=len(devices), kind="gpu", handler=ENHANCED,
                                 allowed_targets=("torch", "builtins.str"),
                                 startup_timeout=120)
    async with snakepit.open_pool(config) as pool:
        placed = {worker.id: worker.info["device"] for worker in pool.stats().workers}
        assert sorted(placed.values()) == sorted(devices), placed  # one per device
        checked: dict[str, str] = {}
        for _ in range(20):  # concurrent pipelines spread over the workers
            async with trio.open_nursery() as nursery:
                for _ in range(len(devices)):
                    nursery.start_soon(check_worker, pool, placed, devices, checked)
            if len(checked) == len(placed):
                break
        missing = sorted(set(placed) - set(checked))
        assert not missing, f"never reached workers {missing}"
    print(f"OK: {len(checked)} worker(s), each on its own GPU")


trio.run(main)
