"""``snakepit doctor``'s table at a narrow width: fixes wrap, nothing is cut off."""

from __future__ import annotations

import io

from rich.console import Console

from snakepit.cli.doctor import Finding, findings_table

FIX = ("install the NVIDIA driver, or set pools.neural.options.fallback_cpu = true to "
       "run the pool's workers on the CPU")


def column(rendered: str, index: int) -> str:
    """The text of column ``index`` of a rendered table's body, its lines joined."""
    cells = [line.split("│")[index + 1] for line in rendered.splitlines()
             if line.startswith("│")]
    return " ".join(cell.strip() for cell in cells if cell.strip())


def test_a_long_fix_wraps_whole_at_80_columns() -> None:
    findings = [Finding("neural", "gpu", "fail", "no NVIDIA GPU: 'nvidia-smi' not found on "
                        "PATH [pools.neural]", FIX)]
    out = io.StringIO()
    Console(file=out, width=80, color_system=None).print(findings_table(findings, "x.toml"))
    rendered = out.getvalue()
    assert "…" not in rendered
    assert all(len(line) <= 80 for line in rendered.splitlines())
    fix = column(rendered, 4)
    # folding may split a long word across lines: compare without the whitespace
    assert fix.replace(" ", "") == FIX.replace(" ", "")
    assert "[pools.neural]" in column(rendered, 3)  # brackets are text, not markup
