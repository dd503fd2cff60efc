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
    """Run the test suite; arguments after ``--`` go to pytest."""
    session.install(".[test]")
    session.run("pytest", *session.posargs)


PLUGINS = ("pandas", "dspy", "transformers", "gpu", "node", "prometheus", "otel")
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
    session.run("ruff", "check", "src", "tests", "benchmarks", "plugins", "docs", "noxfile.py")


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
    """Run the side-by-side benchmarks (snakepit.benchmarking); arguments after ``--``
    go to the runner (``-- --quick``, ``-- --only calls --repeat 5``)."""
    session.install(".", "pebble", "trio-parallel", "matplotlib", "numpy")
    session.run("python", "benchmarks/run.py", *session.posargs)
