"""Lessons open as notebooks: ``# %%`` cells (jupytext's percent format) at the top level, one per
step, each of which compiles on its own -- a cell boundary inside a function or a loop would not."""
import re
from pathlib import Path

import pytest

LESSONS = sorted((Path(__file__).resolve().parents[1] / "lessons").glob("[0-9][0-9]_*.py"))


@pytest.mark.parametrize("lesson", LESSONS, ids=[p.stem for p in LESSONS])
def test_cells_compile_alone(lesson):
    src = lesson.read_text()
    cells = re.split(r"^# %%.*$", src, flags=re.M)
    assert len(cells) >= 6, f"{lesson.name}: expected a cell per step, found {len(cells) - 1} markers"
    assert not re.search(r"^[ \t]+# %%", src, flags=re.M), f"{lesson.name}: an indented cell marker"
    for i, cell in enumerate(cells):
        compile(cell, f"{lesson.name}[cell {i}]", "exec")
    assert "C.in_notebook()" in cells[-1], f"{lesson.name}: the last cell must not sys.exit in a notebook"
