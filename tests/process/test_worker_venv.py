"""A pool whose workers run in their own virtualenv, which has nothing but msgpack."""

import subprocess
import sys
from pathlib import Path

import pytest

import snakepit


@pytest.fixture(scope="module")
def bare_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with msgpack only: no trio, attrs, cattrs or snakepit."""
    root = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True)
    python = root / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "msgpack"], check=True,
                   timeout=300)
    missing = subprocess.run([str(python), "-c", "import trio"], capture_output=True)
    assert missing.returncode != 0  # really bare
    return python


async def test_workers_run_in_another_interpreter_with_only_msgpack(bare_venv: Path) -> None:
    async with snakepit.open_pool(size=2, python=str(bare_venv)) as pool:
        info = await pool.execute("info")
        assert info["executable"] == str(bare_venv)
        assert await pool.execute("echo", {"bytes": b"\x00\x01"}) == {"bytes": b"\x00\x01"}
        assert pool.workers()[0].welcome.codec == "msgpack"  # type: ignore[union-attr]


async def test_the_same_venv_in_json_mode(bare_venv: Path) -> None:
    async with snakepit.open_pool(size=1, python=str(bare_venv), codec="json") as pool:
        assert await pool.execute("compute", {"op": "mul", "a": 6, "b": 7}) == 42
