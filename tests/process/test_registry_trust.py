"""The run registry believes nothing another user could have planted.

The suite runs as root here, so a second user is real where it can be (uid 65534
creates the state dir, a victim process runs as 65534) and faked by ``chown``
otherwise (a record or a segment that another user owns).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

import snakepit
from snakepit.process.registry import RUN_ID_ENV, reap_orphans, start_time
from snakepit.protocol.shm import SEGMENT_DIR
from snakepit.worker.run import registry
from tests.conftest import is_alive

NOBODY = 65534

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as a "
                                "second user (chown, setuid)")


def dead_run_id() -> str:
    """The run id of a host that is gone (a child that has exited)."""
    child = subprocess.Popen(["true"])
    child.wait()
    return f"{child.pid}-1"


def start_victim(run_id: str | None, *, user: int | None = None) -> subprocess.Popen[bytes]:
    """A process leading its own group, as a worker does; marked with ``run_id``'s
    environment entry when one is given."""
    env = {k: v for k, v in os.environ.items() if k != RUN_ID_ENV}
    if run_id is not None:
        env[RUN_ID_ENV] = run_id
    return subprocess.Popen(["sleep", "300"], env=env, user=user, start_new_session=True)


def plant_record(runs: Path, run_id: str, pids: list[int], *, name: str | None = None,
                 host: tuple[int, int] | None = None) -> Path:
    host_pid, host_start = host or tuple(int(part) for part in run_id.split("-"))
    runs.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = runs / f"{name or run_id}.json"
    path.write_text(json.dumps({
        "run_id": run_id, "host_pid": host_pid, "host_start": host_start,
        "workers": [{"pid": pid, "start": start_time(pid)} for pid in pids]}))
    path.chmod(0o600)
    return path


def stop(process: subprocess.Popen[bytes]) -> None:
    process.kill()
    process.wait()


def test_a_record_of_ours_naming_a_marked_process_of_ours_is_reaped(tmp_path: Path) -> None:
    """The positive control: the tests below differ from this in one thing each."""
    run_id = dead_run_id()
    victim = start_victim(run_id)
    try:
        plant_record(tmp_path / "runs", run_id, [victim.pid])
        assert [r.pid for r in reap_orphans(tmp_path)] == [victim.pid]
        victim.wait(timeout=10)
    finally:
        stop(victim)


@pytest.mark.parametrize("tamper", ["other owner", "group-writable", "symlink"])
def test_a_record_another_user_could_write_is_ignored(
        tmp_path: Path, tamper: str, caplog: pytest.LogCaptureFixture) -> None:
    run_id = dead_run_id()
    victim = start_victim(run_id)
    try:
        record = plant_record(tmp_path / "runs", run_id, [victim.pid])
        if tamper == "other owner":
            os.chown(record, NOBODY, NOBODY)
        elif tamper == "group-writable":
            record.chmod(0o620)
        else:
            real = tmp_path / "elsewhere.json"
            record.rename(real)
            record.symlink_to(real)
        with caplog.at_level(logging.WARNING, logger="snakepit.registry"):
            assert reap_orphans(tmp_path) == []
        assert is_alive(victim.pid)
        assert f"ignoring registry file {record}" in caplog.text
    finally:
        stop(victim)


def test_a_process_without_the_run_marker_is_not_killed(tmp_path: Path) -> None:
    """Its pid and start time match the record (anyone can read them in /proc), but it
    does not carry the dead run's id: it was never that run's worker."""
    run_id = dead_run_id()
    victim = start_victim(None)
    try:
        plant_record(tmp_path / "runs", run_id, [victim.pid])
        assert reap_orphans(tmp_path) == []
        assert is_alive(victim.pid)
    finally:
        stop(victim)


def test_a_process_of_another_user_is_not_killed(tmp_path: Path) -> None:
    """Root may signal any process; the registry still kills only its own user's."""
    run_id = dead_run_id()
    victim = start_victim(run_id, user=NOBODY)
    try:
        plant_record(tmp_path / "runs", run_id, [victim.pid])
        assert reap_orphans(tmp_path) == []
        assert is_alive(victim.pid)
    finally:
        stop(victim)


def test_segments_of_another_user_are_left(tmp_path: Path) -> None:
    run_id = dead_run_id()
    ours = Path(SEGMENT_DIR) / f"snakepit-{run_id}-1-0"
    theirs = Path(SEGMENT_DIR) / f"snakepit-{run_id}-1-1"
    try:
        ours.write_bytes(b"x")
        theirs.write_bytes(b"x")
        os.chown(theirs, NOBODY, NOBODY)
        plant_record(tmp_path / "runs", run_id, [])
        reap_orphans(tmp_path)
        assert not ours.exists()
        assert theirs.exists()
    finally:
        ours.unlink(missing_ok=True)
        theirs.unlink(missing_ok=True)


async def test_a_record_carrying_a_live_runs_id_reaps_nothing(tmp_path: Path) -> None:
    """A record under a dead host's name that carries a live run's id (whose workers
    are marked with it) must not kill that run's workers or remove its segments."""
    async with snakepit.open_pool(size=1, state_dir=str(tmp_path), control=False) as pool:
        live = registry(pool.config).run_id
        (worker,) = pool.workers()
        assert worker.pid is not None
        segment = Path(SEGMENT_DIR) / f"snakepit-{live}-0-test"
        segment.write_bytes(b"x")
        try:
            dead_pid, dead_start = (int(part) for part in dead_run_id().split("-"))
            for name in (f"{dead_pid}-{dead_start}", live):
                plant_record(tmp_path / "runs", live, [worker.pid], name=name,
                             host=(dead_pid, dead_start))
                assert await trio.to_thread.run_sync(reap_orphans, tmp_path) == []
                assert is_alive(worker.pid) and segment.exists()
            assert await pool.execute("echo", {"x": 1}) == {"x": 1}
        finally:
            segment.unlink(missing_ok=True)


@pytest.fixture
def shared_tmp(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A temp dir like /tmp (sticky, world-writable), made the default state dir's
    parent: no SNAKEPIT_STATE_DIR, no XDG_RUNTIME_DIR."""
    directory = Path(tempfile.mkdtemp(prefix="sp-tmp-"))
    directory.chmod(0o1777)
    monkeypatch.delenv("SNAKEPIT_STATE_DIR", raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(directory))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


PLANT = """
import json, os, sys
os.setgid(65534); os.setuid(65534)
state, run_id, pid, start = sys.argv[1:]
os.makedirs(state + "/runs", mode=0o777)
os.chmod(state, 0o777); os.chmod(state + "/runs", 0o777)
host_pid, host_start = run_id.split("-")
with open(f"{state}/runs/{run_id}.json", "w") as file:
    json.dump({"run_id": run_id, "host_pid": int(host_pid), "host_start": int(host_start),
               "workers": [{"pid": int(pid), "start": int(start)}]}, file)
"""


async def test_a_state_dir_another_user_made_first_is_refused(shared_tmp: Path) -> None:
    """uid 65534 creates ``<tmp>/snakepit-<uid>`` before us and plants a record naming
    one of our processes: a plain ``open_pool`` refuses the directory and kills
    nothing."""
    state = shared_tmp / f"snakepit-{os.geteuid()}"
    run_id = dead_run_id()
    victim = start_victim(run_id)
    try:
        await trio.run_process([sys.executable, "-c", PLANT, str(state), run_id,
                                str(victim.pid), str(start_time(victim.pid))])
        assert state.stat().st_uid == NOBODY
        with pytest.raises(snakepit.ConfigError) as info:
            async with snakepit.open_pool(size=1):
                pass
        (error,) = info.value.errors
        assert error.startswith(f"state_dir: {state} belongs to uid {NOBODY}")
        assert "SNAKEPIT_STATE_DIR" in error
        assert is_alive(victim.pid)
    finally:
        stop(victim)


async def test_a_state_dir_others_may_write_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o777)
    with pytest.raises(snakepit.ConfigError) as info:
        async with snakepit.open_pool(size=1, state_dir=str(state)):
            pass
    (error,) = info.value.errors
    assert error.startswith(f"state_dir: {state} is writable by other users (mode 777)")
    assert "chmod 700" in error


async def test_the_state_dir_and_its_folders_are_0700_and_records_0600(
        shared_tmp: Path) -> None:
    async with snakepit.open_pool(size=1) as pool:
        state = shared_tmp / f"snakepit-{os.geteuid()}"
        assert registry(pool.config).state_dir == state
        for directory in (state, state / "runs", state / "control"):
            info = directory.lstat()
            assert stat.S_IMODE(info.st_mode) == 0o700, directory
            assert info.st_uid == os.geteuid()
        record = registry(pool.config).path  # the run's own record: no one else reads it
        assert record.exists() and stat.S_IMODE(record.stat().st_mode) == 0o600


def test_cleanup_refuses_a_state_dir_others_may_write(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o777)
    done = subprocess.run([sys.executable, "-m", "snakepit", "cleanup", "--state-dir",
                           str(state)], capture_output=True, text=True)
    assert done.returncode == 1
    assert f"Error: state_dir: {state} is writable by other users" in done.stderr
    assert "Traceback" not in done.stderr


def test_doctor_names_a_state_dir_others_may_write(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o777)
    config = tmp_path / "snakepit.toml"
    config.write_text(f'[pools.p]\nsize = 1\nstate_dir = "{state}"\n')
    done = subprocess.run([sys.executable, "-m", "snakepit", "doctor", str(config), "--json"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    (finding,) = [f for f in json.loads(done.stdout)
                  if f["check"] == f"state directory {state}"]
    assert finding["status"] == "fail"
    assert finding["detail"].startswith("is writable by other users (mode 777)")
    assert finding["fix"].startswith("check what it holds, then chmod 700 it")
