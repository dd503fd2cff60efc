"""The ``snakepit`` command and its demo, run as a user would."""

import subprocess
import sys

from tests.conftest import is_alive


def test_demo_runs_and_leaves_no_process_behind() -> None:
    result = subprocess.run([sys.executable, "-m", "snakepit", "demo", "--calls", "300"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "300 results, all correct" in out
    assert "WorkerTimeout" in out and "WorkerCrashed" in out and "RemoteError" in out
    assert "restarts 2" in out
    assert "every worker process has exited" in out
    first_line = out.splitlines()[0]
    pids = [int(p) for p in first_line.split("pids ")[1].rstrip(")").split(", ")]
    assert len(pids) == 4
    assert not any(is_alive(pid) for pid in pids)


def test_version_flag() -> None:
    result = subprocess.run([sys.executable, "-m", "snakepit", "--version"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "0.1.0"
