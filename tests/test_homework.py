"""The homework generator: markers parse, student copies import and fail their grader with the
"not implemented yet" message, restoring the solution makes the grader pass, the project is untouched."""
import hashlib
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nplvm import homework as hw

ROOT = hw.ROOT


def _tree_digest(root: Path) -> str:
    """A digest of every source file the generator reads (what must stay unchanged)."""
    h = hashlib.sha256()
    for folder in hw.SOURCE_DIRS + ("tests", "lessons"):
        for path in sorted((root / folder).rglob("*.py")):
            h.update(str(path.relative_to(root)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def test_strip_regions_keeps_docstring_and_hints(tmp_path):
    src = textwrap.dedent('''\
        def f(x):
            """Double x."""
            # SOLUTION double: return twice x
            # HINT: one multiplication
            y = 2 * x
            return y
            # END SOLUTION
        ''')
    (tmp_path / "nplvm").mkdir()
    (tmp_path / "kernels").mkdir()
    (tmp_path / "nplvm" / "m.py").write_text(src)
    [r] = hw.find_regions(tmp_path)
    assert (r.id, r.what, r.begin, r.end, r.indent) == ("double", "return twice x", 2, 6, "    ")
    out = hw.strip_regions(src, [r])
    assert '"""Double x."""' in out and "# HINT: one multiplication" in out
    assert "y = 2 * x" not in out
    ns = {}
    exec(out, ns)
    with pytest.raises(NotImplementedError, match="not implemented yet: return twice x"):
        ns["f"](1)


@pytest.mark.parametrize("bad, msg", [
    ("# SOLUTION a: x\n# SOLUTION b: y\n# END SOLUTION\n", "inside another"),
    ("# END SOLUTION\n", "without a SOLUTION"),
    ("# SOLUTION a: x\npass\n", "never closed"),
])
def test_malformed_markers_raise(tmp_path, bad, msg):
    (tmp_path / "nplvm").mkdir()
    (tmp_path / "kernels").mkdir()
    (tmp_path / "nplvm" / "m.py").write_text(bad)
    with pytest.raises(hw.HomeworkError, match=msg):
        hw.find_regions(tmp_path)


def test_every_assignment_has_its_regions_and_tests():
    ids = {r.id for r in hw.find_regions()}
    for name, a in hw.ASSIGNMENTS.items():
        assert set(a.regions) <= ids, f"{name}: markers missing for {set(a.regions) - ids}"
        for t in a.tests:
            assert (ROOT / t.split("::")[0]).exists(), f"{name}: test file {t} missing"
    assert len(hw.ASSIGNMENTS) >= 5


def test_list_and_errors(capsys, tmp_path):
    assert hw.main(["list"]) == 0
    out = capsys.readouterr().out
    for name in hw.ASSIGNMENTS:
        assert name in out
    assert hw.main(["make", "no-such-thing", str(tmp_path / "x")]) == 2
    assert "unknown assignment" in capsys.readouterr().err
    with pytest.raises(hw.HomeworkError, match="outside the project"):
        hw.make("fa-em", ROOT / "tmp-student-copy")


@pytest.mark.slow
@pytest.mark.parametrize("name", list(hw.ASSIGNMENTS))
def test_assignment_round_trip(name, tmp_path):
    before = _tree_digest(ROOT)
    copy = tmp_path / "student"
    regions = hw.make(name, copy)
    assert _tree_digest(ROOT) == before, "generating homework changed the project"

    # The student copy imports: every stubbed module still parses and loads.
    modules = sorted({".".join(r.path.with_suffix("").parts) for r in regions})
    proc = subprocess.run([sys.executable, "-c", "; ".join(f"import {m}" for m in modules)],
                          cwd=copy, capture_output=True, text=True,
                          env={"PYTHONPATH": str(copy), "PATH": "/usr/bin:/bin",
                               "NPLVM_KERNELS": "reference"})
    assert proc.returncode == 0, proc.stderr

    # Its grader fails, saying what is missing.
    graded = hw.grade(name, copy)
    assert graded.returncode != 0, graded.stdout[-3000:]
    assert "not implemented yet" in graded.stdout, graded.stdout[-3000:]

    # Restoring the solution makes the same grader pass.
    for path in {r.path for r in regions}:
        shutil.copyfile(ROOT / path, copy / path)
    graded = hw.grade(name, copy)
    assert graded.returncode == 0, graded.stdout[-3000:]
    assert " passed" in graded.stdout
