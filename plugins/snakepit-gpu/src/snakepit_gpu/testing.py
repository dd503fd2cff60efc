"""A fake ``nvidia-smi``, to test GPU pools on machines without a GPU.

::

    from snakepit_gpu.testing import FakeNvidiaSmi

    fake = FakeNvidiaSmi(tmp_path)                     # writes tmp_path/nvidia-smi
    fake.set_devices(100, 200)                         # two GPUs, 100 and 200 MiB in use
    config = snakepit.PoolConfig(size=2, kind="gpu",
                                 options={"nvidia_smi": str(fake.path)})

The fake is a small Python script (run by this interpreter) that answers the one query
snakepit-gpu makes, from a JSON listing beside it that :meth:`FakeNvidiaSmi.set_devices`
rewrites -- so a test can change the devices' memory between readings. As the real
tool does, it exits 6 ("No devices were found") for an empty listing and 9 (the driver
cannot be reached) with no listing at all (:meth:`FakeNvidiaSmi.break_driver`).

Each worker of a GPU pool gets ``CUDA_VISIBLE_DEVICES`` as with real devices; the
workers themselves run on the CPU, so this tests placement, the crash barrier and
telemetry, not CUDA code.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["SCRIPT", "FakeNvidiaSmi", "fake_device"]

SCRIPT = '''\
"""A stand-in for nvidia-smi (snakepit_gpu.testing): prints the devices of a JSON listing.

The listing is LISTING below, or $FAKE_GPUS. With $FAKE_GPUS_GATE (a Unix socket path)
it first reports there and waits for a word back, so a test can hold a query in flight.
"""

import json
import os
import socket
import sys

LISTING = {listing!r}

if os.environ.get("FAKE_GPUS_GATE"):
    gate = socket.socket(socket.AF_UNIX)
    gate.settimeout(30)
    gate.connect(os.environ["FAKE_GPUS_GATE"])
    gate.sendall(b"query\\n")
    gate.recv(16)
try:
    with open(LISTING or os.environ["FAKE_GPUS"]) as file:
        devices = json.load(file)
except (KeyError, OSError):
    print("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.")
    sys.exit(9)
if not devices:
    print("No devices were found")
    sys.exit(6)
for d in devices:
    print(f"{{d['index']}}, {{d['uuid']}}, {{d['name']}}, {{d['used']}}, {{d['total']}}, "
          f"{{d['util']}}")
'''
"""The fake's source; ``{listing}`` is the path of its JSON listing (``None``: read the
path from ``$FAKE_GPUS``)."""


def fake_device(index: int, memory_used: float = 0.0, *, name: str = "Fake H100",
                memory_total: float = 81559.0, utilization: float = 0.0,
                uuid: str | None = None) -> dict[str, Any]:
    """One device of a listing (memory in MiB, utilisation in %); its UUID is
    ``GPU-<index as 4 digits>`` unless given."""
    return {"index": index, "uuid": uuid or f"GPU-{index:04d}", "name": name,
            "used": memory_used, "total": memory_total, "util": utilization}


class FakeNvidiaSmi:
    """A fake ``nvidia-smi`` executable in ``directory`` and the listing it reads.

    Args:
        directory: where to write ``nvidia-smi`` and its ``gpus.json`` (a test's
            ``tmp_path``); put it first on ``PATH``, or name :attr:`path` in
            ``options={"nvidia_smi": ...}``.
        listing_from_env: read the listing's path from ``$FAKE_GPUS`` at each run
            instead of the file beside it.
    """

    def __init__(self, directory: str | os.PathLike[str], *,
                 listing_from_env: bool = False) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.listing = self.directory / "gpus.json"
        """The JSON listing the fake prints."""
        self.path = self.directory / "nvidia-smi"
        """The executable."""
        source = SCRIPT.format(listing=None if listing_from_env else str(self.listing))
        self.path.write_text(f"#!{sys.executable}\n{source}")
        self.path.chmod(self.path.stat().st_mode | stat.S_IEXEC)

    def set_devices(self, *devices: float | Mapping[str, Any]) -> None:
        """The devices the next reading lists: each a number (the memory in use, in
        MiB, of device ``i``, reporting ``10 * i`` % utilisation) or a
        :func:`fake_device`. None at all: "No devices were found"."""
        listing = [dict(device) if isinstance(device, Mapping)
                   else fake_device(i, device, utilization=10 * i)
                   for i, device in enumerate(devices)]
        self.listing.write_text(json.dumps(listing))

    def break_driver(self) -> None:
        """Make the next readings fail as a broken driver does (exit status 9)."""
        self.listing.unlink(missing_ok=True)
