"""The pytest plugin as a user's project meets it: installed, found through its
``pytest11`` entry point, in a pytest run of its own (a subprocess in a temp dir that
knows nothing of this repository's conftest)."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import installed_snakepit, is_alive

PYTEST_INI = "[pytest]\ntrio_mode = true\n"


def run_pytest(project: Path, tests: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run pytest in ``project`` (a user's project: one test file, trio mode) with
    snakepit installed; returns the finished process."""
    project.mkdir(exist_ok=True)
    (project / "pytest.ini").write_text(PYTEST_INI)
    (project / "test_app.py").write_text(textwrap.dedent(tests))
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args],
        cwd=project, env=installed_snakepit(project.parent / "site"), capture_output=True,
        text=True, timeout=120)


def test_pytest_fixtures_lists_snakepit_pool(tmp_path: Path) -> None:
    result = run_pytest(tmp_path / "project", "def test_nothing():\n    pass\n",
                        "--fixtures")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "snakepit_pool" in result.stdout
    assert "fails if" in result.stdout or "left behind" in result.stdout  # its docstring
    assert "snakepit/testing/pytest_plugin.py" in result.stdout  # from the entry point


def test_the_plugin_imports_neither_trio_nor_hypothesis(tmp_path: Path) -> None:
    # it is loaded by every pytest run where snakepit is installed: it must cost nothing
    code = ("import sys, snakepit.testing.pytest_plugin\n"
            "heavy = [m for m in ('trio', 'hypothesis', 'snakepit.bridge', 'attrs') "
            "if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    env = installed_snakepit(tmp_path / "site")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr


CLEAN = """
    import pytest
    import snakepit

    CONFIG = snakepit.PoolConfig(size=2, handler="snakepit.testing:ChaosHandler",
                                 cancel_grace=0.2, shutdown_grace=2.0)

    async def test_calls_and_a_crash_leave_nothing(snakepit_pool):
        pool = await snakepit_pool(CONFIG)
        other = await snakepit_pool(CONFIG, name="other", size=1)
        assert await pool.execute("echo", 1) == 1
        assert await other.execute("big", {"size": 4 << 20}) == b"x" * (4 << 20)  # via shm
        snakepit_pool.inject("echo", "crash")
        with pytest.raises(snakepit.WorkerCrashed):
            await pool.execute("echo", 2)
        await pool.wait_ready()
        assert await pool.execute("echo", 3) == 3
"""


def test_a_clean_test_passes(tmp_path: Path) -> None:
    result = run_pytest(tmp_path / "project", CLEAN)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


LEAKS = """
    import os
    import snakepit
    from snakepit.worker.run import registry

    CONFIG = snakepit.PoolConfig(size=1, handler="snakepit.testing:ChaosHandler")

    async def test_leaks_a_worker_process(snakepit_pool):
        pool = await snakepit_pool(CONFIG)
        pid = await pool.execute("escape")  # a child in a session of its own
        print("ESCAPED", pid)

    async def test_leaks_a_segment(snakepit_pool):
        pool = await snakepit_pool(CONFIG)
        prefix = f"snakepit-{registry(pool.config).run_id}-{os.getpid()}-"
        with open(f"/dev/shm/{prefix}leaked", "wb") as segment:
            segment.write(b"left behind")

    async def test_leaks_a_descriptor(snakepit_pool):
        pool = await snakepit_pool(CONFIG)
        read_end, write_end = os.pipe()
        print("PIPE", read_end, write_end)
"""


@pytest.fixture(scope="module")
def leaky_run(tmp_path_factory: pytest.TempPathFactory) -> subprocess.CompletedProcess[str]:
    """One run of three tests, each leaking one thing (run once for the module)."""
    return run_pytest(tmp_path_factory.mktemp("leaky") / "project", LEAKS, "-s", "-rA")


def test_a_leaked_worker_process_fails_the_test(
        leaky_run: subprocess.CompletedProcess[str]) -> None:
    out = leaky_run.stdout
    assert leaky_run.returncode == 1, out + leaky_run.stderr
    assert "FAILED test_app.py::test_leaks_a_worker_process" in out
    pid = int(re.search(r"ESCAPED (\d+)", out).group(1))  # type: ignore[union-attr]
    assert re.search(rf"left behind:\s+.*process {pid} \(.*time.sleep\(3600\)\) of snakepit "
                     r"run \S+ is still running", out), out
    assert not is_alive(pid)  # and the fixture killed it


def test_a_leaked_segment_fails_the_test(leaky_run: subprocess.CompletedProcess[str]) -> None:
    out = leaky_run.stdout
    assert "FAILED test_app.py::test_leaks_a_segment" in out
    found = re.search(r"shared-memory segment (/dev/shm/snakepit-\S+-leaked) was not removed",
                      out)
    assert found, out
    assert not Path(found.group(1)).exists()  # the fixture removed it


def test_a_leaked_descriptor_fails_the_test(leaky_run: subprocess.CompletedProcess[str]) -> None:
    out = leaky_run.stdout
    assert "FAILED test_app.py::test_leaks_a_descriptor" in out
    read_end, write_end = re.search(r"PIPE (\d+) (\d+)", out).groups()  # type: ignore[union-attr]
    assert re.search(rf"file descriptor {read_end} \(pipe:\[\d+\]\) is still open", out), out
    assert re.search(rf"file descriptor {write_end} \(pipe:\[\d+\]\) is still open", out), out
    assert "3 failed" in out  # each test failed for its own leak only


def test_the_fixture_works_on_trio_marked_tests_outside_trio_mode(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "pytest.ini").write_text("[pytest]\n")  # no trio_mode
    (project / "test_app.py").write_text(textwrap.dedent("""
        import pytest

        @pytest.mark.trio
        async def test_marked(snakepit_pool):
            pool = await snakepit_pool(size=1)
            assert await pool.execute("echo", [1, "a"]) == [1, "a"]
    """))
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q"],
                            cwd=project, env=installed_snakepit(tmp_path / "site"),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
