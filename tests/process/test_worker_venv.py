"""A pool whose workers run in their own virtualenv, which has nothing but msgpack."""

import os
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


async def test_a_virtualenv_directory_stands_for_its_python(bare_venv: Path) -> None:
    venv = bare_venv.parent.parent
    async with snakepit.open_pool(size=1, python=str(venv),
                                  handler="snakepit.testing:ChaosHandler") as pool:
        assert (await pool.execute("info"))["executable"] == str(bare_venv)
        # run as if activated: scripts installed in the venv are found first
        assert await pool.execute("getenv", {"name": "VIRTUAL_ENV"}) == str(venv)
        path = await pool.execute("getenv", {"name": "PATH"})
        assert path.split(os.pathsep)[0] == str(venv / "bin")


async def test_a_directory_that_is_no_virtualenv_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(snakepit.ConfigError, match=r"python: .* is a directory but no "
                                                   r"virtualenv"):
        async with snakepit.open_pool(size=1, python=str(tmp_path)):
            pass  # pragma: no cover
