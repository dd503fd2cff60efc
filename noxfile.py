"""Development sessions: ``nox`` runs tests, lint and typecheck; ``nox -s bench`` too.

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


PLUGINS = ("pandas", "dspy", "transformers", "gpu", "node")


@nox.session
@nox.parametrize("plugin", PLUGINS)
def plugin(session: nox.Session, plugin: str) -> None:
    """One plugin distribution's tests, installed through its own pyproject."""
    extra = ["torch==2.13.0"] if plugin == "transformers" else []
    session.install("-e", ".[test]", "-e", f"plugins/snakepit-{plugin}", *extra)
    session.run("pytest", f"plugins/snakepit-{plugin}", *session.posargs)


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
    session.run("ruff", "check", "src", "tests", "benchmarks", "plugins", "noxfile.py")


@nox.session
def typecheck(session: nox.Session) -> None:
    """Type-check with mypy (strict; settings in [tool.mypy] of pyproject.toml)."""
    session.install(".", "mypy")
    session.run("mypy")


@nox.session
def bench(session: nox.Session) -> None:
    """Run the side-by-side benchmarks; arguments after ``--`` go to the runner."""
    session.install(".", "pebble", "trio-parallel", "matplotlib")
    session.run("python", "benchmarks/run.py", *session.posargs)
    session.run("python", "benchmarks/sessions.py")
