"""The docs site builds in strict mode, as ``nox -s docs`` does, so CI catches what
would break it: a link or anchor to nothing, a page left out of the nav, a docstring the
API reference cannot parse. (tests/test_docs.py runs the examples on the pages.)
"""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_docs_site_builds_in_strict_mode(tmp_path: Path) -> None:
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # The API reference was generated from the docstrings, not left as bare `:::` lines.
    reference = (site / "reference" / "pools" / "index.html").read_text()
    assert 'id="snakepit.pool.tree.open_pool"' in reference
    assert 'id="snakepit.pool.pool.Pool.execute"' in reference
    assert ":::" not in reference
