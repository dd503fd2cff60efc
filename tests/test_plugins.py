"""Plugin discovery through real entry points, a broken plugin included."""

import os
import subprocess
import sys
from pathlib import Path

import snakepit


def broken_distribution(root: Path) -> dict[str, str]:
    """A distribution whose serializer entry point fails to import; returns the env."""
    dist = root / "snakepit_broken-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: snakepit-broken\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[snakepit.serializers]\nbroken = snakepit_broken_plugin\n")
    (root / "snakepit_broken_plugin.py").write_text("raise RuntimeError('plugin bug')\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), *sys.path])}


def test_snakepit_plugins_lists_distributions_and_hooks(tmp_path: Path) -> None:
    env = broken_distribution(tmp_path)
    result = subprocess.run([sys.executable, "-m", "snakepit", "plugins"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert "pandas  [snakepit.serializers]  from snakepit-pandas" in result.stdout
    assert "hooks: snakepit_serializers" in result.stdout
    assert "broken  [snakepit.serializers]  from snakepit-broken 1.0" in result.stdout
    assert "FAILED TO LOAD: RuntimeError('plugin bug')" in result.stdout
    assert result.returncode == 1  # something is broken: say so to scripts


POOL = """
import trio, snakepit
async def main():
    config = snakepit.PoolConfig(size=1, handler="snakepit.bridge.enhanced:EnhancedHandler")
    async with snakepit.open_pool(config) as pool:
        print(await pool.call("json.dumps", [1]))
trio.run(main)
"""


def test_a_broken_plugin_does_not_take_the_pool_down(tmp_path: Path) -> None:
    env = broken_distribution(tmp_path)
    result = subprocess.run([sys.executable, "-c", POOL], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[1]"
    assert "snakepit plugin 'broken'" in result.stderr  # the host reported it


def test_public_names() -> None:
    for name in ("Ref", "RefLost", "open_pools", "SnakepitConfig", "RetryPolicy",
                 "CircuitBreakerPolicy", "CircuitOpen", "telemetry"):
        assert hasattr(snakepit, name)
