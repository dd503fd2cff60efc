"""snakepit-ray: its options and handshake here, and the Ray suite in a private namespace.

The suite in ``suite/`` needs a real Ray with all traffic on loopback, so the last test
here runs it in a network namespace that has nothing but ``lo`` (``unshare -n``, as root;
``unshare -rn`` maps the user to root where user namespaces are allowed) and asserts that
it passed. Where no namespace can be made it is skipped, saying so.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import trio

import snakepit
from snakepit.kinds import apply_kind, find_kind
from snakepit.plugins import installed_plugins
from snakepit_ray import RayPoolKind, RayRuntime, check_options
from snakepit_ray.auth import MAGIC, NONCE_SIZE, AuthError, serve_handshake
from snakepit_ray.channel import open_channel

SUITE = Path(__file__).parent / "suite"
REPO = Path(__file__).resolve().parents[3]


def ray_config(**overrides: object) -> snakepit.PoolConfig:
    settings: dict[str, object] = {"kind": "ray", "size": 1}
    settings.update(overrides)
    return snakepit.PoolConfig(**settings)  # type: ignore[arg-type]


# -- the pool kind -----------------------------------------------------------------------
def test_found_through_its_entry_point() -> None:
    assert any(p.distribution == "snakepit-ray" and p.group == "snakepit.pool_kinds"
               and p.name == "ray" and p.error is None for p in installed_plugins())
    assert isinstance(find_kind(ray_config()), RayPoolKind)


def test_options_have_defaults_and_every_bad_one_is_named() -> None:
    options = check_options(ray_config())
    assert options["address"] is None and options["num_cpus"] == 1 and options["bind"] is None
    with pytest.raises(snakepit.ConfigError) as caught:
        check_options(ray_config(options={"num_cpus": -1, "num_gpus": "one",
                                          "resources": {"TPU": "x"}, "adress": "auto",
                                          "scheduling_strategy": "PACK"},
                                 memory_limit=1 << 30))
    errors = "\n".join(caught.value.errors)
    for name in ("num_cpus", "num_gpus", "resources", "adress", "scheduling_strategy",
                 "memory_limit"):
        assert name in errors


def test_the_kind_opens_workers_itself() -> None:
    config = ray_config(handler="snakepit.testing:ChaosHandler")
    runtime = RayPoolKind().prepare(config)
    spec = apply_kind(runtime, snakepit.adapters.PythonAdapter().launch(config, "p-0"), "p-0")
    assert spec.open == runtime.open_worker
    # the bridge runs under the actor's interpreter unless options.python names one
    assert runtime.argv(config, spec) == (list(spec.argv), True)
    other = RayRuntime(config, check_options(ray_config(options={"python": "/opt/py"})))
    assert other.argv(config, spec)[0][0] == "/opt/py"
    command = ray_config(command=("./worker", "--x"))
    assert RayPoolKind().prepare(command).argv(command, snakepit.adapters.CommandAdapter()
                                               .launch(command, "p-0")) == (["./worker", "--x"],
                                                                            False)


def test_options_reach_the_actor() -> None:
    runtime = RayPoolKind().prepare(ray_config(options={
        "num_cpus": 2, "num_gpus": 0.5, "resources": {"accelerator_type:A100": 1},
        "memory": 1 << 30, "runtime_env": {"pip": ["dspy"]}, "scheduling_strategy": "SPREAD"}))
    assert runtime.actor_options() == {
        "num_cpus": 2, "num_gpus": 0.5, "max_restarts": 0, "scheduling_strategy": "SPREAD",
        "resources": {"accelerator_type:A100": 1}, "memory": 1 << 30,
        "runtime_env": {"pip": ["dspy"]}}


# -- the handshake -----------------------------------------------------------------------
def actor_side(secret: bytes, results: list[object]) -> tuple[str, int]:
    """A listener answering one connection as the actor does; returns its address."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        connection, _ = listener.accept()
        listener.close()
        connection.settimeout(5)
        try:
            results.append(serve_handshake(connection, secret))
        except (AuthError, OSError) as exc:
            results.append(exc)
        connection.close()

    threading.Thread(target=serve, daemon=True).start()
    return listener.getsockname()


async def test_the_handshake_admits_the_secret_holder() -> None:
    secret, results = os.urandom(32), []
    host, port = actor_side(secret, results)
    sock = await open_channel(host, port, secret, b"w")
    sock.close()
    assert results == [b"w"]


async def test_the_handshake_refuses_a_stranger() -> None:
    results: list[object] = []
    host, port = actor_side(os.urandom(32), results)
    with pytest.raises(snakepit.WorkerStartupError, match="closed the connection"):
        await open_channel(host, port, os.urandom(32), b"w")
    assert isinstance(results[0], AuthError) and "bad HMAC" in str(results[0])


async def test_the_host_refuses_an_impostor_actor() -> None:
    """Something else on the actor's port cannot fake the actor's proof."""
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    async def impostor() -> None:
        connection, _ = await listener.accept()
        await connection.send(MAGIC + os.urandom(NONCE_SIZE))
        await connection.recv(1 + 32 + 32)
        await connection.send(os.urandom(32))
        connection.close()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(impostor)
        with pytest.raises(snakepit.WorkerStartupError, match="did not prove"):
            await open_channel(*listener.getsockname(), os.urandom(32), b"w")
    listener.close()


# -- the Ray suite, in a loopback-only network namespace ----------------------------------
def namespace_command() -> list[str] | None:
    """``unshare`` arguments that give a private network namespace here, or None."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return None
    for command in (["unshare", "-n"], ["unshare", "-rn"]):
        probe = subprocess.run([*command, "ip", "link", "set", "lo", "up"],
                               capture_output=True)
        if probe.returncode == 0:
            return command
    return None


def suite_command(pytest_args: list[str]) -> list[str] | None:
    """The command that runs the Ray suite inside its own namespace (None: impossible)."""
    unshare = namespace_command()
    if unshare is None:
        return None
    inner = [sys.executable, "-m", "pytest", str(SUITE), "-o", "python_files=suite_*.py",
             "-p", "no:cacheprovider", "-q", *pytest_args]
    return [*unshare, "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *inner]


def test_ray_suite_in_a_loopback_only_namespace() -> None:
    command = suite_command([])
    if command is None:
        pytest.skip("cannot create a network namespace here (unshare -n needs root, or "
                    "user namespaces for unshare -rn): the Ray suite runs only on loopback")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"the Ray suite failed:\n{output}"
    assert " passed" in result.stdout and "skipped" not in result.stdout, output
