"""The README's quickstart is two lines, and CI runs the second one verbatim."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def quickstart_lines() -> list[str]:
    """The command lines of the README's Quickstart section (its ```sh blocks)."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.DOTALL)
    return [line for block in blocks for line in block.splitlines() if line.strip()]


def test_the_quickstart_is_two_lines() -> None:
    lines = quickstart_lines()
    assert len(lines) == 2, lines
    assert "snakepit demo" in lines[0]
    assert "pytest" in lines[1]


def test_ci_runs_the_readme_test_line_verbatim() -> None:
    script = (ROOT / ".ci" / "run").read_text().splitlines()
    commands = [line for line in script
                if line.strip() and not line.startswith("#")
                and not line.startswith(("set ", "cd "))]
    assert commands == [quickstart_lines()[1]]
