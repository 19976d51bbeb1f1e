"""The homework generator: markers parse, student copies import and fail their grader with the
"not implemented yet" message, restoring the solution makes the grader pass, the project is untouched."""
import hashlib
import os
import re
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
    h.update((root / "README.md").read_bytes())
    return h.hexdigest()


def _math_line(line):
    """A solution line reduced to what would give the answer away, or None for plumbing.

    Comments and spacing go; a line that is only a call (``self.trunk.backward(dh, c)``, its
    result assigned or not) or shorter than 16 characters is plumbing, not math."""
    code = re.sub(r"\s+", " ", line.split("#")[0].strip())
    rhs = code.split(" = ", 1)[-1] if " = " in code else code
    depth, outside = 0, []
    for ch in rhs:                                  # the right side outside any parentheses
        depth += ch in "([{"
        depth -= ch in ")]}"
        outside.append(ch if depth == 0 else "")
    if len(code) < 16 or not re.search(r"[-+*/@]", "".join(outside)):
        return None
    return code


def _solution_lines(root, ids):
    """The math lines of the SOLUTION regions with these ids: {line: region}."""
    out = {}
    for r in hw.find_regions(root):
        if r.id in ids and r.kind == "solution":
            for line in (root / r.path).read_text().splitlines()[r.begin + 1:r.end]:
                m = _math_line(line)
                if m:
                    out[m] = r
    return out


def _leaks(copy, solution):
    """Where in a student copy a solution line still sits: [(path, line number, line)]."""
    hits = []
    files = [copy / "README.md"] + [p for folder in ("nplvm", "kernels", "lessons", "tests", "docs")
                                    for p in sorted((copy / folder).rglob("*.py"))]
    for path in files:
        if not path.exists():
            continue
        for i, line in enumerate(path.read_text().splitlines()):
            if _math_line(line) in solution:
                hits.append((str(path.relative_to(copy)), i + 1, line.strip()))
    return hits


def _plain_env(copy):
    """The environment of a student running the copy's own commands (no backend forced)."""
    env = {k: v for k, v in os.environ.items() if k not in ("NPLVM_KERNELS", "PYTHONPATH")}
    return dict(env, PYTHONPATH=str(copy), MPLBACKEND="Agg")


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


def test_grade_refuses_a_tree_that_is_not_a_copy_of_the_assignment(tmp_path, capsys):
    """The solutions themselves pass every test: grading them would grade nothing."""
    with pytest.raises(hw.HomeworkError, match="not a student copy"):
        hw.grade("fa-em", ROOT)
    assert hw.main(["grade", "fa-em", str(ROOT)]) == 2
    assert "not a student copy" in capsys.readouterr().err
    copy = tmp_path / "kl"
    hw.make("kl-gradient", copy)
    assert hw.copy_assignment(copy) == "kl-gradient"
    with pytest.raises(hw.HomeworkError, match="a student copy of 'kl-gradient'"):
        hw.grade("fa-em", copy)


def test_twin_and_markdown_regions_are_replaced(tmp_path):
    (tmp_path / "nplvm").mkdir()
    (tmp_path / "kernels").mkdir()
    (tmp_path / "nplvm" / "m.py").write_text(textwrap.dedent('''\
        def f(x):
            # SOLUTION double: return twice x
            return 2 * x
            # END SOLUTION


        def fast_f(x):
            # TWIN double: return f(x)
            return x + x
            # END TWIN


        TABLE = {
            "a": 1,
            # TWIN double:
            "double": "x + x",
            # END TWIN
        }
        '''))
    (tmp_path / "README.md").write_text("intro\n<!-- SOLUTION double: the doubling example -->\n"
                                        "```python\ny = 2 * x\n```\n<!-- END SOLUTION -->\nend\n")
    regions = hw.find_regions(tmp_path)
    assert [(r.kind, r.id) for r in regions] == [("solution", "double"), ("twin", "double"),
                                                 ("twin", "double"), ("markdown", "double")]
    py = hw.strip_regions((tmp_path / "nplvm" / "m.py").read_text(), regions[:3])
    ns = {}
    exec(py, ns)
    assert "x + x" not in py and ns["TABLE"] == {"a": 1}
    with pytest.raises(NotImplementedError, match="not implemented yet"):
        ns["fast_f"](1)                              # the twin calls the stub
    md = hw.strip_regions((tmp_path / "README.md").read_text(), regions[3:])
    assert "2 * x" not in md and "homework `double`" in md and md.startswith("intro") and md.endswith("end\n")


@pytest.mark.slow
@pytest.mark.parametrize("name", list(hw.ASSIGNMENTS))
def test_assignment_round_trip(name, tmp_path):
    """make; then in the copy a plain pytest of the assignment's tests, ``grade`` and the lesson
    that uses the code all fail with "not implemented yet", and no other file holds a line of
    the solution; restoring the solution makes the grader pass."""
    assignment = hw.ASSIGNMENTS[name]
    before = _tree_digest(ROOT)
    copy = tmp_path / "student"
    regions = hw.make(name, copy)
    assert _tree_digest(ROOT) == before, "generating homework changed the project"
    assert hw.copy_assignment(copy) == name

    # The student copy imports: every stubbed module still parses and loads.
    modules = sorted({".".join(r.path.with_suffix("").parts) for r in regions
                      if r.path.suffix == ".py" and r.path.parts[0] in ("nplvm", "kernels")})
    proc = subprocess.run([sys.executable, "-c", "; ".join(f"import {m}" for m in modules)],
                          cwd=copy, capture_output=True, text=True,
                          env={"PYTHONPATH": str(copy), "PATH": "/usr/bin:/bin",
                               "NPLVM_KERNELS": "reference"})
    assert proc.returncode == 0, proc.stderr

    # No other place in the copy gives the answer away.
    solution = _solution_lines(ROOT, set(assignment.regions))
    assert solution, f"{name}: no solution lines found"
    assert _leaks(copy, solution) == [], f"{name}: the copy still holds solution lines"

    # A plain pytest of the assignment's tests (the default kernels) fails, saying what is missing.
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *assignment.tests]
    cmd += ["-k", assignment.select] if assignment.select else []
    plain = subprocess.run(cmd, cwd=copy, env=_plain_env(copy), capture_output=True, text=True)
    assert plain.returncode != 0 and "not implemented yet" in plain.stdout, plain.stdout[-3000:]

    # Its grader fails, saying what is missing.
    graded = hw.grade(name, copy)
    assert graded.returncode != 0, graded.stdout[-3000:]
    assert "not implemented yet" in graded.stdout, graded.stdout[-3000:]

    # The lesson that uses the code fails in quick mode.
    if assignment.lesson:
        lesson = subprocess.run([sys.executable, assignment.lesson, "--quick", "--out",
                                 str(tmp_path / "lesson")], cwd=copy, env=_plain_env(copy),
                                capture_output=True, text=True, timeout=600)
        out = lesson.stdout + lesson.stderr
        assert lesson.returncode != 0 and "not implemented yet" in out, out[-3000:]

    # Restoring the solution makes the same grader pass.
    for path in {r.path for r in regions}:
        shutil.copyfile(ROOT / path, copy / path)
    assert _leaks(copy, solution)                    # (the leak check has teeth)
    graded = hw.grade(name, copy)
    assert graded.returncode == 0, graded.stdout[-3000:]
    assert " passed" in graded.stdout
