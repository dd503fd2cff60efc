"""Development sessions: ``nox`` runs tests, lint and typecheck; ``nox -s docs`` and
``nox -s bench`` too.

Sessions use the interpreter nox itself runs on (no ``python=``), so a developer's and
CI's Python is the one tested.
"""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    """Run the core test suite (``tests/``); arguments after ``--`` go to pytest.

    Only ``tests/`` by default: it needs nothing beyond ``.[test]``, which is what this
    session installs. The plugins' tests need their own distributions (``nox -s
    plugin``); the README's test line installs everything and runs both.
    """
    session.install(".[test]")
    session.run("pytest", *(session.posargs or ["tests"]))


PLUGINS = ("pandas", "dspy", "transformers", "gpu", "node", "prometheus", "otel", "ray")
# plugins whose tests need their own `test` extra (the OpenTelemetry SDK)
TEST_EXTRAS = ("otel",)


@nox.session
@nox.parametrize("plugin", PLUGINS)
def plugin(session: nox.Session, plugin: str) -> None:
    """One plugin distribution's tests, installed through its own pyproject."""
    extra = ["torch==2.13.0"] if plugin == "transformers" else []
    target = f"plugins/snakepit-{plugin}" + ("[test]" if plugin in TEST_EXTRAS else "")
    session.install("-e", ".[test]", "-e", target, *extra)
    session.run("pytest", f"plugins/snakepit-{plugin}", *session.posargs)


def network_namespace() -> list[str] | None:
    """``unshare`` arguments that give a private network namespace here, or None."""
    import shutil
    import subprocess

    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return None
    for command in (["unshare", "-n"], ["unshare", "-rn"]):
        if subprocess.run([*command, "ip", "link", "set", "lo", "up"],
                          capture_output=True).returncode == 0:
            return command
    return None


@nox.session
def ray(session: nox.Session) -> None:
    """The Ray pool's suite against a local Ray (2 CPUs), all traffic on loopback.

    A local Ray picks the machine's interface address even when asked for 127.0.0.1,
    so the suite runs in a private network namespace with only ``lo`` up.
    """
    unshare = network_namespace()
    if unshare is None:
        session.skip("cannot create a network namespace here (unshare -n needs root, or "
                     "user namespaces for unshare -rn): the Ray suite runs only on loopback")
    session.install("-e", ".[test]", "-e", "plugins/snakepit-ray")
    session.run(*unshare, "sh", "-c", 'ip link set lo up && exec "$@"', "sh",
                "python", "-m", "pytest", "plugins/snakepit-ray/tests/suite",
                "-o", "python_files=suite_*.py", "-p", "no:cacheprovider", *session.posargs,
                external=True, env={"RAY_USAGE_STATS_ENABLED": "0"})


@nox.session
def chaos(session: nox.Session) -> None:
    """The chaos state machine with many randomized examples (CI runs a few, fixed)."""
    session.install(".[test]")
    session.run("pytest", "tests/chaos", *session.posargs,
                env={"HYPOTHESIS_PROFILE": "chaos", "SNAKEPIT_CHAOS_EXAMPLES": "200"})


@nox.session
def lint(session: nox.Session) -> None:
    """Check style and common bugs with ruff."""
    session.install("ruff")
    session.run("ruff", "check", "src", "tests", "benchmarks", "plugins", "docs", "examples",
                "noxfile.py")


@nox.session
def typecheck(session: nox.Session) -> None:
    """Type-check with mypy (strict; settings in [tool.mypy] of pyproject.toml)."""
    session.install(".", "mypy")
    session.run("mypy")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the docs site into site/ in strict mode: any warning fails the build."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "mkdocs", "build", "--strict", *session.posargs,
                env={"NO_MKDOCS_2_WARNING": "1"})


@nox.session
def bench(session: nox.Session) -> None:
    """Run the side-by-side benchmarks (snakepit.benchmarking), then the session-store
    figures as pools use the store (benchmarks/sessions.py); arguments after ``--`` go
    to the runner (``-- --quick``, ``-- --only calls --repeat 5``)."""
    session.install(".", "pebble", "trio-parallel", "matplotlib", "numpy")
    session.run("python", "benchmarks/run.py", *session.posargs)
    session.run("python", "benchmarks/sessions.py")
