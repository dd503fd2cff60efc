"""Every complete example in the docs runs, so the docs cannot rot (as trio-parallel does).

A block fenced ```python is a complete program; ```py marks fragments.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)

EXAMPLES = [
    pytest.param(code, id=f"{page.name}:{n}")
    for page in PAGES
    for n, code in enumerate(BLOCK.findall(page.read_text()), start=1)
]


def test_the_docs_have_examples() -> None:
    assert len(EXAMPLES) >= 5


@pytest.mark.parametrize("code", EXAMPLES)
def test_example_runs(code: str, tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("cls", ["PoolConfig", "RestartPolicy", "RetryPolicy",
                                 "CircuitBreakerPolicy", "SnakepitConfig"])
def test_every_config_field_is_in_the_configuration_reference(cls: str) -> None:
    import attrs

    import snakepit

    page = (ROOT / "docs" / "configuration.md").read_text()
    # the section whose heading names the class, up to the next section
    section = re.search(rf"^## [^\n]*`{cls}`[^\n]*$(.*?)(?=^## |\Z)", page,
                        re.DOTALL | re.MULTILINE)
    assert section, f"configuration.md has no section on {cls}"
    missing = [field.name for field in attrs.fields(getattr(snakepit, cls))
               if f"| `{field.name}` |" not in section.group(1)]
    assert not missing, f"{cls} fields missing from its table in configuration.md: {missing}"
