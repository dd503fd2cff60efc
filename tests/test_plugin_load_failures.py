"""A plugin that fails to import is reported as failing to load, with why -- not as
"no adapter named ..." (run in a fresh interpreter: plugins load once per process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = """
import json, sys, trio, snakepit

async def main():
    found = {}
    for field, value in (("adapter", "cobol"), ("kind", "quantum")):
        try:
            async with snakepit.open_pool(snakepit.PoolConfig(size=1, **{field: value})):
                pass
        except snakepit.ConfigError as exc:
            found[field] = exc.errors
    print(json.dumps(found))

trio.run(main)
"""


def broken_plugin(where: Path, group: str, name: str, module: str) -> None:
    """Install (by its metadata) a distribution whose entry point cannot be imported."""
    dist = where / f"broken_{name}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: broken-{name}\n"
                                   "Version: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[{group}]\n{name} = {module}\n")
    (where / f"{module}.py").write_text(
        f"raise ImportError('lib{name}.so: cannot open shared object file')\n")


@pytest.mark.parametrize("field", ["adapter", "kind"])
def test_a_plugin_that_fails_to_load_is_named_with_why(tmp_path: Path, field: str) -> None:
    broken_plugin(tmp_path, "snakepit.adapters", "cobol", "cobol_adapter")
    broken_plugin(tmp_path, "snakepit.pool_kinds", "quantum", "quantum_kind")
    path = os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "PYTHONPATH": path})
    assert result.returncode == 0, result.stderr
    (error,) = json.loads(result.stdout.splitlines()[-1])[field]
    what, name = ("adapter", "cobol") if field == "adapter" else ("pool kind", "quantum")
    assert error.startswith(f"{field}: the plugin that provides {what} {name!r} failed to "
                            f"load (broken-{name} 1.0, ")
    assert f"lib{name}.so: cannot open shared object file" in error
    assert "no adapter named" not in error and "no pool kind named" not in error
