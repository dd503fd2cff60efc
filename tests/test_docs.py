"""Every complete example in the docs runs, so the docs cannot rot (as trio-parallel does).

A block fenced ```python is a complete program; ```py marks fragments. A block fenced
```python title="test_*.py" is a test file: it runs with pytest in a project of its own
where snakepit is installed (its pytest plugin found through the entry point), with the
``pytest.ini`` of the page's ```ini block.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
TEST_FILE = re.compile(r'^```python title="(test_\w+\.py)"\n(.*?)^```', re.DOTALL | re.MULTILINE)
INI = re.compile(r"^```ini\n(.*?)^```", re.DOTALL | re.MULTILINE)

EXAMPLES = [
    pytest.param(code, id=f"{page.name}:{n}")
    for page in PAGES
    for n, code in enumerate(BLOCK.findall(page.read_text()), start=1)
]


TEST_FILES = [
    pytest.param(page, name, code, id=f"{page.name}:{name}")
    for page in PAGES
    for name, code in TEST_FILE.findall(page.read_text())
]


def test_the_docs_have_examples() -> None:
    assert len(EXAMPLES) >= 5
    assert len(TEST_FILES) >= 4


@pytest.mark.parametrize("code", EXAMPLES)
def test_example_runs(code: str, tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(("page", "name", "code"), TEST_FILES)
def test_example_test_file_passes(page: Path, name: str, code: str, tmp_path: Path) -> None:
    from tests.conftest import installed_snakepit

    ini = INI.findall(page.read_text())
    assert len(ini) == 1, f"{page.name} needs one ```ini block: the pytest.ini its tests use"
    project = tmp_path / "project"
    project.mkdir()
    (project / "pytest.ini").write_text(ini[0])
    (project / name).write_text(code)
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                             "-rfEs", name], cwd=project, env=installed_snakepit(tmp_path / "site"),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"\d+ passed", result.stdout), result.stdout
    assert not re.search(r"failed|skipped|error", result.stdout.splitlines()[-1]), result.stdout


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
