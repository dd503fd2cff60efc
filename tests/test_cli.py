"""The ``snakepit`` command and its demo, run as a user would."""

import re
import subprocess
import sys

from tests.conftest import is_alive


def test_demo_runs_and_leaves_no_process_behind() -> None:
    result = subprocess.run([sys.executable, "-m", "snakepit", "demo", "--calls", "300"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "300 results, all correct" in out
    assert out.count("WorkerTimeout: ") == 2
    assert "WorkerCrashed: " in out and "RemoteError: " in out
    assert "the pool still answers: ping -> " in out
    # the totals line, whatever the machine's load did to the timing of the story
    totals = re.search(r"(\d+) timeouts, (\d+) crashes.*restarts (\d+)$", out, re.MULTILINE)
    assert totals is not None, out
    timeouts, crashes, restarts = map(int, totals.groups())
    assert timeouts == 2 and crashes == 1
    assert restarts >= 2  # the stubborn sleeper's worker and the crashed one
    assert "every worker process has exited" in out
    first_line = out.splitlines()[0]
    pids = [int(p) for p in first_line.split("pids ")[1].rstrip(")").split(", ")]
    assert len(pids) == 4
    assert not any(is_alive(pid) for pid in pids)


def test_version_flag() -> None:
    result = subprocess.run([sys.executable, "-m", "snakepit", "--version"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "0.1.0"
