"""Finding NVIDIA GPUs and reading their state, through ``nvidia-smi``."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

QUERY = "index,uuid,name,memory.used,memory.total,utilization.gpu"


@dataclass(frozen=True)
class Device:
    """One GPU as ``nvidia-smi`` reports it (memory in MiB, utilisation in %)."""

    index: int
    uuid: str
    name: str
    memory_used: float
    memory_total: float
    utilization: float


class NoGPU(RuntimeError):
    """No NVIDIA GPU could be found (no driver, no ``nvidia-smi``, or no device)."""


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:  # "[N/A]" on some boards
        return 0.0


def query(nvidia_smi: str = "nvidia-smi", timeout: float = 10.0) -> list[Device]:
    """Every GPU ``nvidia-smi`` sees.

    Raises:
        NoGPU: ``nvidia-smi`` is missing, fails, or lists no device.
    """
    executable = shutil.which(nvidia_smi)
    if executable is None:
        raise NoGPU(f"{nvidia_smi!r} not found on PATH: no NVIDIA driver on this machine?")
    try:
        out = subprocess.run(
            [executable, f"--query-gpu={QUERY}", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=timeout, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise NoGPU(f"{nvidia_smi} failed: {exc}") from exc
    devices = []
    for line in out.strip().splitlines():
        fields = [field.strip() for field in line.split(",")]
        if len(fields) != 6:
            continue
        devices.append(Device(int(fields[0]), fields[1], fields[2], _number(fields[3]),
                              _number(fields[4]), _number(fields[5])))
    if not devices:
        raise NoGPU(f"{nvidia_smi} lists no GPU")
    return devices
