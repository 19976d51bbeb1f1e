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
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE_DIRS = ("nplvm", "kernels")          # where solution regions may live

BEGIN = re.compile(r"^(?P<indent>[ \t]*)# SOLUTION (?P<id>[a-z0-9][a-z0-9-]*): (?P<what>.+?)\s*$")
END = re.compile(r"^[ \t]*# END SOLUTION\s*$")
HINT = re.compile(r"^[ \t]*# HINT")

# Everything copied into a student copy, and everything that is not.
IGNORE = shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.pyc", ".pytest_cache",
                                ".hypothesis", "*.egg-info", "figures", "runs", "out", "build")


@dataclass(frozen=True)
class Assignment:
    """One homework: the region ids a student writes and the tests that grade them."""
    description: str
    regions: tuple[str, ...]
    tests: tuple[str, ...]          # pytest node ids or files, relative to the project root
    select: str = ""                # an optional pytest -k expression


ASSIGNMENTS: dict[str, Assignment] = {
    "layer-backward": Assignment(
        "Backward pass of the fused linear layer y = act(x W + b): dx, dW, db",
        regions=("layer-backward",),
        tests=("tests/test_nn.py",), select="linear or mlp or Linear or MLP"),
    "gru-backward": Assignment(
        "Backward pass of one GRU step: dx, dh_prev and every parameter gradient",
        regions=("gru-backward",),
        tests=("tests/test_nn.py",), select="gru or GRU"),
    "kl-gradient": Assignment(
        "KL(N(mu, e^logvar) || N(0, I)) in closed form and its gradients w.r.t. mu and logvar",
        regions=("kl-gradient",),
        tests=("tests/test_distributions.py",), select="kl_std_normal"),
    "fa-em": Assignment(
        "Factor Analysis EM: the E-step (posterior mean and covariance) and the M-step (W, psi)",
        regions=("fa-estep", "fa-mstep"),
        tests=("tests/test_fa.py",)),
    "vae-reparam-gradient": Assignment(
        "The VAE's reparameterized gradient: from dL/dz back to dL/dmu and dL/dlogvar",
        regions=("vae-reparam-gradient",),
        tests=("tests/test_vae.py",), select="grad"),
    "iwae-gradient": Assignment(
        "The IWAE gradient through the normalized importance weights",
        regions=("iwae-gradient",),
        tests=("tests/test_vae.py",), select="iwae"),
    "gmvae-gradient": Assignment(
        "The GMVAE gradient with y summed exactly: through q(y|x) and, per component, by reparameterization",
        regions=("gmvae-gradient",),
        tests=("tests/test_gmvae.py",), select="grad"),
    "gmvae-yhead": Assignment(
        "Fitting q(y|x) to given responsibilities: the cross-entropy gradient through the softmax",
        regions=("gmvae-yhead",),
        tests=("tests/test_gmvae.py",), select="y_head"),
    "vade-gamma": Assignment(
        "VaDE's q(c|x) = gamma = p(c|z) from the mixture prior, and its gradient w.r.t. z, pi, mu_c, logvar_c",
        regions=("vade-gamma", "vade-gamma-backward"),
        tests=("tests/test_vade.py",), select="grad or gamma"),
    "vrnn-bptt": Assignment(
        "Backpropagation through time in the VRNN: the reverse loop over t carrying dh",
        regions=("vrnn-bptt",),
        tests=("tests/test_vrnn.py",), select="grad"),
}


class HomeworkError(RuntimeError):
    """A malformed solution marker or an unknown assignment."""


@dataclass(frozen=True)
class Region:
    path: Path            # relative to the project root
    id: str
    what: str
    begin: int            # 0-based line index of the BEGIN marker
    end: int              # 0-based line index of the END marker
    indent: str


def find_regions(root: Path = ROOT) -> list[Region]:
    """Every solution region under the source folders, in file order; raise on unbalanced markers."""
    regions = []
    for folder in SOURCE_DIRS:
        for path in sorted((root / folder).rglob("*.py")):
            lines = path.read_text().splitlines()
            open_ = None
            for i, line in enumerate(lines):
                m = BEGIN.match(line)
                if m:
                    if open_ is not None:
                        raise HomeworkError(f"{path}:{i + 1}: SOLUTION inside another SOLUTION region "
                                            f"(opened at line {open_[0] + 1})")
                    open_ = (i, m)
                elif END.match(line):
                    if open_ is None:
                        raise HomeworkError(f"{path}:{i + 1}: END SOLUTION without a SOLUTION")
                    j, m0 = open_
                    regions.append(Region(path.relative_to(root), m0["id"], m0["what"], j, i,
                                          m0["indent"]))
                    open_ = None
            if open_ is not None:
                raise HomeworkError(f"{path}:{open_[0] + 1}: SOLUTION region never closed")
    return regions


def stub_lines(region: Region, body: list[str]) -> list[str]:
    """What replaces a region's body in the student copy: its hints, then the raise."""
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

    The project itself is only read.  Returns the regions that were replaced.
    """
    assignment = get_assignment(name)
    out = Path(out_dir).resolve()
    if out == root or root in out.parents:
        raise HomeworkError(f"the student copy must go outside the project, not to {out}")
    if out.exists() and any(out.iterdir()):
        raise HomeworkError(f"{out} exists and is not empty; choose a new folder")
    regions = [r for r in find_regions(root) if r.id in assignment.regions]
    missing = set(assignment.regions) - {r.id for r in regions}
    if missing:
        raise HomeworkError(f"assignment {name!r} names regions with no markers in the source: "
                            f"{sorted(missing)}")
    shutil.copytree(root, out, ignore=IGNORE, dirs_exist_ok=True)
    for path in sorted({r.path for r in regions}):
        mine = [r for r in regions if r.path == path]
        (out / path).write_text(strip_regions((root / path).read_text(), mine))
    return regions


def grade(name: str, copy_dir, extra_args=()) -> subprocess.CompletedProcess:
    """Run assignment ``name``'s tests in a student copy; returns the finished pytest process.

    The NumPy reference kernels are used (NPLVM_KERNELS=reference): grading checks the math,
    and a fresh copy then pays no Numba compilation.
    """
    assignment = get_assignment(name)
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
            regions = make(args.assignment, args.out_dir)
            print(f"wrote a student copy to {args.out_dir}; to write:")
            for r in regions:
                print(f"  {r.path}:{r.begin + 1}  {r.what}")
            tests = " ".join(get_assignment(args.assignment).tests)
            print(f"grade it with: python -m nplvm.homework grade {args.assignment} {args.out_dir}"
                  f"   (runs {tests})")
        else:
            proc = grade(args.assignment, args.copy_dir)
            sys.stdout.write(proc.stdout)
            sys.stderr.write(proc.stderr)
            return proc.returncode
    except HomeworkError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
