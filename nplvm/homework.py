"""Homework from the codebase: student copies generated from marked solutions, graded by the tests.

The source marks each solution region with two comments, at the indentation of the block:

    def gru_backward(params, grads, dh_new, cache):
        \"\"\"Docstring and hints stay in the student copy.\"\"\"
        # SOLUTION gru-backward: the GRU cell's backward pass (dx, dh and the parameter gradients)
        ...the solution...
        # END SOLUTION

A reader of the full code sees two short comments.  ``make`` writes a copy of the project in which
the lines between the markers are replaced by

        raise NotImplementedError("not implemented yet: the GRU cell's backward pass (...)")

Lines inside a region that start with ``# HINT`` are kept in the student copy, above the raise.
An assignment is a set of region ids plus the tests that grade it; the tests are the project's
own (the gradient checks above all), so the grader is the test suite.

    python -m nplvm.homework list
    python -m nplvm.homework make fa-em /tmp/hw-fa
    python -m nplvm.homework grade fa-em /tmp/hw-fa      # runs that assignment's tests there
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE_DIRS = ("nplvm", "kernels", "lessons")      # where solution regions may live (*.py)
MARKDOWN = ("README.md", "docs")                    # Markdown files and folders with regions too
MARKER_FILE = ".homework.json"                      # written by make: which assignment a copy is

# kind -> (begin, end) patterns; a begin gives the indent, the region id and its text.
_ID = r"(?P<id>[a-z0-9][a-z0-9-]*)"
PATTERNS = {
    "solution": (re.compile(rf"^(?P<indent>[ \t]*)# SOLUTION {_ID}: (?P<what>.+?)\s*$"),
                 re.compile(r"^[ \t]*# END SOLUTION\s*$")),
    "twin": (re.compile(rf"^(?P<indent>[ \t]*)# TWIN {_ID}:(?P<what>.*?)\s*$"),
             re.compile(r"^[ \t]*# END TWIN\s*$")),
    "markdown": (re.compile(rf"^(?P<indent>[ \t]*)<!-- SOLUTION {_ID}: (?P<what>.+?)\s*-->\s*$"),
                 re.compile(r"^[ \t]*<!-- END SOLUTION -->\s*$")),
}
BEGIN, END = PATTERNS["solution"]
HINT = re.compile(r"^[ \t]*# HINT")

# Everything copied into a student copy, and everything that is not.
_IGNORE = shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.pyc", ".pytest_cache",
                                 ".hypothesis", "*.egg-info", "figures", "runs", "out", "build",
                                 MARKER_FILE)


def IGNORE(folder, names):
    """What copytree leaves out; Numba's compiled kernels (kernels/__pycache__/*.nbi, *.nbc) are
    kept: Numba checks them against the source file's time stamp (copytree keeps it), so a copy
    whose kernels are unchanged runs without compiling them again, and a changed file recompiles."""
    ignored = set(_IGNORE(folder, names))
    if Path(folder).name == "kernels" and "__pycache__" in names:
        ignored.discard("__pycache__")
    if Path(folder).name == "__pycache__" and Path(folder).parent.name == "kernels":
        ignored |= {n for n in names if not n.endswith((".nbi", ".nbc"))}
    return ignored


@dataclass(frozen=True)
class Assignment:
    """One homework: the region ids a student writes and the tests that grade them."""
    description: str
    regions: tuple[str, ...]
    tests: tuple[str, ...]          # pytest node ids or files, relative to the project root
    select: str = ""                # an optional pytest -k expression
    lesson: str = ""                # the lesson that runs this code (its --quick mode fails in a copy)


ASSIGNMENTS: dict[str, Assignment] = {
    "layer-backward": Assignment(
        "Backward pass of the fused linear layer y = act(x W + b): dx, dW, db",
        regions=("layer-backward",),
        tests=("tests/test_nn.py",), select="linear or mlp or Linear or MLP",
        lesson="lessons/03_vae_mnist.py"),
    "gru-backward": Assignment(
        "Backward pass of one GRU step: dx, dh_prev and every parameter gradient",
        regions=("gru-backward",),
        tests=("tests/test_nn.py",), select="gru or GRU", lesson="lessons/09_vrnn.py"),
    "kl-gradient": Assignment(
        "The KL between two diagonal Gaussians in closed form and its gradients (the VAE's KL to "
        "N(0, I) is the special case)",
        regions=("kl-gradient",),
        tests=("tests/test_distributions.py",), select="kl", lesson="lessons/02_kl_gaussian.py"),
    "fa-em": Assignment(
        "Factor Analysis EM: the E-step (posterior mean and covariance) and the M-step (W, psi)",
        regions=("fa-estep", "fa-mstep"),
        tests=("tests/test_fa.py",), lesson="lessons/01_factor_analysis.py"),
    "vae-reparam-gradient": Assignment(
        "The reparameterized gradient: from dL/dz back to dL/dmu and dL/dlogvar",
        regions=("vae-reparam-gradient",),
        tests=("tests/test_vae.py",), select="grad", lesson="lessons/03_vae_mnist.py"),
    "iwae-gradient": Assignment(
        "The IWAE gradient through the normalized importance weights",
        regions=("iwae-gradient",),
        tests=("tests/test_vae.py",), select="iwae", lesson="lessons/05_iwae.py"),
    "gmvae-gradient": Assignment(
        "The GMVAE gradient with y summed exactly: through q(y|x) and, per component, by reparameterization",
        regions=("gmvae-gradient",),
        tests=("tests/test_gmvae.py",), select="grad", lesson="lessons/08_gmvae.py"),
    "gmvae-yhead": Assignment(
        "Fitting q(y|x) to given responsibilities: the cross-entropy gradient through the softmax",
        regions=("gmvae-yhead",),
        tests=("tests/test_gmvae.py",), select="y_head", lesson="lessons/08_gmvae.py"),
    "cvae-kl-gradient": Assignment(
        "The KL between the CVAE's recognition q(z|x,y) and prior p(z|x) networks (two learned diagonal "
        "Gaussians) and its gradients w.r.t. both",
        regions=("kl-gradient",),
        tests=("tests/test_cvae.py",), select="kl or grad", lesson="lessons/15_cvae.py"),
    "nvdm-softmax-gradient": Assignment(
        "The NVDM's softmax decoder with word counts: the gradient of -log p(d|z) w.r.t. the logits",
        regions=("nvdm-softmax-gradient",),
        tests=("tests/test_nvdm.py",), select="grad", lesson="lessons/20_nvdm.py"),
    "vampprior-gradient": Assignment(
        "The VampPrior KL's gradient: d log (1/K) sum_k N(z | m_k, e^s_k) w.r.t. z, m_k and s_k (on to the pseudo-inputs)",
        regions=("vampprior-gradient",),
        tests=("tests/test_vampprior.py",), select="grad", lesson="lessons/18_optimal_prior.py"),
    "vade-gamma": Assignment(
        "VaDE's q(c|x) = gamma = p(c|z) from the mixture prior, and its gradient w.r.t. z, pi, mu_c, logvar_c",
        regions=("vade-gamma", "vade-gamma-backward"),
        tests=("tests/test_vade.py",), select="grad or gamma", lesson="lessons/16_vade.py"),
    "vrnn-bptt": Assignment(
        "Backpropagation through time in the VRNN: the reverse loop over t carrying dh",
        regions=("vrnn-bptt",),
        tests=("tests/test_vrnn.py",), select="grad", lesson="lessons/09_vrnn.py"),
    "factorvae-tc-gradient": Assignment(
        "FactorVAE: the gradient of the total-correlation term gamma * mean T(z) through the discriminator",
        regions=("factorvae-tc-gradient",),
        tests=("tests/test_factorvae.py",), select="gradient or gamma_zero or fit",
        lesson="lessons/19_factorvae.py"),
    "lvae-merge-gradient": Assignment(
        "The Ladder VAE's precision-weighted merge: its backward to both Gaussians' means and log-variances",
        regions=("lvae-merge-gradient",),
        tests=("tests/test_hvae.py",), select="merge or grad", lesson="lessons/17_hierarchical_vae.py"),
}


class HomeworkError(RuntimeError):
    """A malformed solution marker or an unknown assignment."""


@dataclass(frozen=True)
class Region:
    path: Path            # relative to the project root
    id: str
    what: str             # the text after the id: what to write (a twin: its replacement statement)
    begin: int            # 0-based line index of the BEGIN marker
    end: int              # 0-based line index of the END marker
    indent: str
    kind: str = "solution"    # "solution", "twin" or "markdown"


def _source_files(root: Path):
    """The files that may hold regions: *.py under SOURCE_DIRS, *.md under MARKDOWN."""
    for folder in SOURCE_DIRS:
        yield from (p for p in sorted((root / folder).rglob("*.py"))
                    if p.relative_to(root) != Path("nplvm/homework.py"))   # its docstring shows markers
    for name in MARKDOWN:
        p = root / name
        yield from ([p] if p.is_file() else sorted(p.rglob("*.md")) if p.is_dir() else [])


def _file_regions(path: Path, root: Path) -> list[Region]:
    kinds = ("markdown",) if path.suffix == ".md" else ("solution", "twin")
    regions, open_ = [], None
    for i, line in enumerate(path.read_text().splitlines()):
        for kind in kinds:
            begin, end = PATTERNS[kind]
            m = begin.match(line)
            if m:
                if open_ is not None:
                    raise HomeworkError(f"{path}:{i + 1}: {kind.upper()} inside another region "
                                        f"(opened at line {open_[0] + 1})")
                open_ = (i, m, kind)
            elif end.match(line):
                if open_ is None or open_[2] != kind:
                    raise HomeworkError(f"{path}:{i + 1}: END {kind.upper()} without a {kind.upper()}")
                j, m0, _ = open_
                regions.append(Region(path.relative_to(root), m0["id"], m0["what"].strip(), j, i,
                                      m0["indent"], kind))
                open_ = None
    if open_ is not None:
        raise HomeworkError(f"{path}:{open_[0] + 1}: SOLUTION region never closed")
    return regions


def find_regions(root: Path = ROOT) -> list[Region]:
    """Every region (solution, twin, Markdown) in the project, in file order; raise on unbalanced markers."""
    return [r for path in _source_files(Path(root)) for r in _file_regions(path, Path(root))]


def stub_lines(region: Region, body: list[str]) -> list[str]:
    """What replaces a region's body in the student copy.

    solution: its hints, then the raise; twin: its statement (nothing if empty); Markdown: a line
    saying what was left out.
    """
    if region.kind == "twin":
        return [f"{region.indent}{region.what}"] if region.what else []
    if region.kind == "markdown":
        return [f"*(Left out of this student copy: homework `{region.id}`, {region.what}.)*"]
    hints = [line for line in body if HINT.match(line)]
    msg = f"not implemented yet: {region.what} (homework '{region.id}')"
    return hints + [f"{region.indent}raise NotImplementedError({msg!r})"]


def strip_regions(text: str, regions: list[Region]) -> str:
    """The text with the given regions (all from this file) replaced by their stubs."""
    lines = text.splitlines()
    for r in sorted(regions, key=lambda r: r.begin, reverse=True):
        body = lines[r.begin + 1:r.end]
        lines[r.begin:r.end + 1] = [lines[r.begin]] + stub_lines(r, body) + [lines[r.end]]
    return "\n".join(lines) + ("\n" if text.endswith("\n") else "")


def get_assignment(name: str) -> Assignment:
    if name not in ASSIGNMENTS:
        raise HomeworkError(f"unknown assignment {name!r}; `python -m nplvm.homework list` shows "
                            f"them: {', '.join(ASSIGNMENTS)}")
    return ASSIGNMENTS[name]


def make(name: str, out_dir, root: Path = ROOT) -> list[Region]:
    """Write a student copy of the project to out_dir with assignment ``name``'s regions stubbed.

    Every region of the assignment's ids is replaced, twins and Markdown included, and
    ``.homework.json`` names the assignment.  The project itself is only read.  Returns the
    regions that were replaced.
    """
    assignment = get_assignment(name)
    out = Path(out_dir).resolve()
    if out == root or root in out.parents:
        raise HomeworkError(f"the student copy must go outside the project, not to {out}")
    if out.exists() and any(out.iterdir()):
        raise HomeworkError(f"{out} exists and is not empty; choose a new folder")
    regions = [r for r in find_regions(root) if r.id in assignment.regions]
    missing = set(assignment.regions) - {r.id for r in regions if r.kind == "solution"}
    if missing:
        raise HomeworkError(f"assignment {name!r} names regions with no markers in the source: "
                            f"{sorted(missing)}")
    shutil.copytree(root, out, ignore=IGNORE, dirs_exist_ok=True)
    for path in sorted({r.path for r in regions}):
        mine = [r for r in regions if r.path == path]
        (out / path).write_text(strip_regions((root / path).read_text(), mine))
    (out / MARKER_FILE).write_text(json.dumps({"assignment": name, "regions": list(assignment.regions)},
                                              indent=1) + "\n")
    return regions


def copy_assignment(copy_dir):
    """The assignment a folder is a student copy of (from ``.homework.json``), or None."""
    try:
        return json.loads((Path(copy_dir) / MARKER_FILE).read_text())["assignment"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def grade(name: str, copy_dir, extra_args=()) -> subprocess.CompletedProcess:
    """Run assignment ``name``'s tests in a student copy; returns the finished pytest process.

    Raises HomeworkError when copy_dir is not a student copy of that assignment (the solutions
    themselves would pass, which grades nothing).  The NumPy reference kernels are used
    (NPLVM_KERNELS=reference): a fresh copy then pays no Numba compilation; the fast kernels
    call the same student code in a copy (twins), so plain ``pytest`` fails and passes alike.
    """
    assignment = get_assignment(name)
    made_for = copy_assignment(copy_dir)
    if made_for != name:
        what = (f"a student copy of {made_for!r}" if made_for else
                f"not a student copy (no {MARKER_FILE}; `python -m nplvm.homework make {name} DIR` writes one)")
        raise HomeworkError(f"{Path(copy_dir).resolve()} is {what}, not of assignment {name!r}")
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *assignment.tests]
    if assignment.select:
        cmd += ["-k", assignment.select]
    env = dict(os.environ, NPLVM_KERNELS="reference", PYTHONPATH=str(Path(copy_dir).resolve()),
               MPLBACKEND="Agg")
    return subprocess.run(cmd + list(extra_args), cwd=copy_dir, env=env, capture_output=True,
                          text=True)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m nplvm.homework", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="the assignments, one line each")
    mk = sub.add_parser("make", help="write a student copy with one assignment's solutions removed")
    mk.add_argument("assignment")
    mk.add_argument("out_dir")
    gr = sub.add_parser("grade", help="run an assignment's tests in a student copy")
    gr.add_argument("assignment")
    gr.add_argument("copy_dir", nargs="?", default=".")
    args = p.parse_args(argv)
    try:
        if args.cmd == "list":
            width = max(map(len, ASSIGNMENTS))
            for name, a in ASSIGNMENTS.items():
                print(f"{name:<{width}}  {a.description}")
        elif args.cmd == "make":
            if Path(args.out_dir).exists() and not Path(args.out_dir).is_dir():
                raise HomeworkError(f"{args.out_dir!r} is a file; expected a new (or empty) folder "
                                    "for the student copy")
            regions = make(args.assignment, args.out_dir)
            print(f"wrote a student copy to {args.out_dir}; to write:")
            for r in regions:
                if r.kind == "solution" and not r.what.startswith("the fused"):
                    print(f"  {r.path}:{r.begin + 1}  {r.what}")
            others = sorted({str(r.path) for r in regions if r.kind != "solution"
                             or r.what.startswith("the fused")})
            if others:
                print(f"  (the same math was also taken out of {', '.join(others)}: "
                      f"its fast twins call your code, or wait for the solution)")
            tests = " ".join(get_assignment(args.assignment).tests)
            print(f"grade it with: python -m nplvm.homework grade {args.assignment} {args.out_dir}"
                  f"   (runs {tests})")
        else:
            if not Path(args.copy_dir).is_dir():
                raise HomeworkError(f"no student copy at {args.copy_dir!r} (not a folder); make one with: "
                                    f"python -m nplvm.homework make {args.assignment} DIR")
            proc = grade(args.assignment, args.copy_dir)
            sys.stdout.write(proc.stdout)
            sys.stderr.write(proc.stderr)
            return proc.returncode
    except HomeworkError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:                      # a path that cannot be read or written
        where = f": {e.filename!r}" if getattr(e, "filename", None) else ""
        print(f"error: {e.strerror or e}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted (Ctrl-C)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
