"""Small helpers the numbered lessons share: arguments, figures, the table of checks, and cells.

A lesson is a script ``NN_name.py`` cut into ``# %%`` cells (the percent format that Jupyter
through jupytext, VS Code and Spyder read), one per step of its derivation, written at the top
level so that it runs cell by cell as a notebook and top to bottom as a script.  It

* parses ``--quick`` (a few seconds; what the tests run), ``--out DIR`` (where figures go,
  default ``figures/<lesson-name>/`` at the repository root) and ``--seed``
  -> ``parse_args(lesson_argv(), __doc__, FILE)``
* prints every derivation it verifies as a row "identity | lhs | rhs | difference | tol | ok"
  -> ``CheckTable`` (rows that hold by construction are worked examples: ``table.example``)
* saves PNG figures                                                          -> ``save_figure``
* ends with ``results = finish(table, results)`` and, as a script, exits non-zero if a check fails.

``run_lesson(path, argv)`` runs a lesson file with the given arguments and returns its
``results`` dict (``{"checks": ..., "all_ok": ..., "figures": [...], ...}``), so a test asserts
the same numbers the student reads.  In a notebook ``lesson_argv()`` reads the arguments from
``$NPLVM_LESSON_ARGS`` (e.g. "--quick"), since the kernel's own command line is not the lesson's.

Usage::

    import _common as C
    args = C.parse_args(C.lesson_argv(), __doc__, FILE)
    table = C.CheckTable("KL of two Gaussians")
    table.add("KL closed form = MC", lhs=kl, rhs=kl_mc, tol=4 * se, note="tol = 4 SE")
    table.add("L_1 <= L_5", lhs=L1, rhs=L5, tol=3 * se, relation="<=")
    table.example("log mean w >= mean log w (every sample)", lhs=a, rhs=b, relation=">=")
    C.save_figure(fig, args.out / "kl.png")
    results = C.finish(table, results)

For gradients to 1e-8 and better, ``richardson_grad`` gives central differences with one
Richardson step (error O(h^4)), sharper than ``nplvm.gradcheck.numerical_grad`` (O(h^2)).
"""
from __future__ import annotations

import argparse
import math
import os
import runpy
import shlex
import sys
from pathlib import Path

import numpy as np

LESSONS_DIR = Path(__file__).resolve().parent
REPO_ROOT = LESSONS_DIR.parent
if str(REPO_ROOT) not in sys.path:              # `import nplvm` when run as a script
    sys.path.insert(0, str(REPO_ROOT))

import matplotlib  # noqa: E402

matplotlib.use("Agg")                            # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402,F401  (re-exported for the lessons)

__all__ = ["parse_args", "lesson_name", "in_notebook", "lesson_argv", "run_lesson", "save_figure", "CheckTable",
           "finish", "richardson_grad", "quick_or", "load_data", "user_error", "plt", "REPO_ROOT"]

_ARGV = None                                     # set by run_lesson for the lesson it runs

RELATIONS = ("=", "<=", ">=")
KINDS = ("check", "example")


def lesson_name(file):
    """'lessons/02_kl_gaussian.py' -> '02_kl_gaussian'."""
    return Path(file).stem


def in_notebook():
    """Whether the lesson runs inside IPython/Jupyter (where it must not call sys.exit)."""
    return "ipykernel" in sys.modules or "IPython" in sys.modules


def lesson_argv():
    """The lesson's command-line arguments: those given to ``run_lesson``, else the script's
    (``sys.argv[1:]``), else -- in a notebook, whose kernel has its own command line --
    ``$NPLVM_LESSON_ARGS`` split like a shell would (default: none, the full lesson)."""
    if _ARGV is not None:
        return list(_ARGV)
    if in_notebook():
        return shlex.split(os.environ.get("NPLVM_LESSON_ARGS", ""))
    return sys.argv[1:]


def run_lesson(path, argv=()):
    """Run the lesson file ``path`` top to bottom with the arguments ``argv`` (a list of strings)
    and return its ``results`` dict.  What the tests call; a lesson is not imported, it is run."""
    global _ARGV
    _ARGV = [str(a) for a in argv]
    try:
        namespace = runpy.run_path(str(path), run_name="__lesson__")
    finally:
        _ARGV = None
    return namespace["results"]


def parse_args(argv, description, file, extra=None):
    """The common flags: --quick, --out (default figures/<lesson-name>/), --seed (default 0).

    argv: a list of strings (None: sys.argv[1:]); description: the lesson's docstring;
    file: the lesson's __file__; extra: optional function(parser) adding lesson-specific flags.
    Returns the Namespace with ``out`` a Path that exists.
    """
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="small sizes so the lesson runs in a few seconds (the tests use it)")
    parser.add_argument("--out", type=Path, default=None,
                        help="directory for the PNG figures (default figures/<lesson-name>/)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random draw (default 0)")
    if extra is not None:
        extra(parser)
    args = parser.parse_args(argv)
    # a bad value is the user's mistake: "error: ..." and exit status 2 (parser.error), no traceback
    if args.seed < 0:
        parser.error(f"argument --seed: expected an integer >= 0, got {args.seed}")
    if args.out is None:
        args.out = REPO_ROOT / "figures" / lesson_name(file)
    args.out = Path(args.out)
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"argument --out: {str(args.out)!r} is a file, expected a folder for the figures")
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        parser.error(f"argument --out: cannot create {str(args.out)!r} ({e.strerror or e})")
    return args


def user_error(message):
    """A user's mistake found after parsing: ``error: <message>`` on stderr, exit status 2, no
    traceback (what ``parse_args`` does for the common flags)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def load_data(args, labels=False, **kwargs):
    """``nplvm.data.load_dataset(args.data, **kwargs)`` for a lesson's ``--data``.  A source that
    cannot be read, or (labels=True) one without test labels, is the user's mistake (``user_error``)."""
    from nplvm.data import DataError, load_dataset
    try:
        ds = load_dataset(args.data, **kwargs)
    except DataError as e:
        user_error(f"argument --data: {e}")
    if labels and ds.test_labels is None:
        user_error(f"argument --data: expected a dataset with test labels (this lesson scores clusters "
                   f"with them), got {args.data!r}")
    return ds


def save_figure(fig, path, dpi=110):
    """Write ``fig`` as a PNG to ``path`` (parents created), close it, and return the path as str."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    print(f"saved {path}")
    return str(path)


def _fmt(v):
    if v is None:
        return ""
    v = float(v)
    if v == 0.0 or (1e-3 <= abs(v) < 1e5):
        return f"{v:.6f}"
    return f"{v:.3e}"


class CheckTable:
    """Numeric checks of derivations, printed as "identity | lhs | rhs | difference | tol | ok".

    Each row compares two numbers computed two different ways:

      relation "="   ok when |lhs - rhs| <= tol
      relation "<="  ok when lhs - rhs <= tol        (lhs is below rhs, up to tol)
      relation ">="  ok when rhs - lhs <= tol

    ``tol`` is what the row is judged by: float rounding for an exact identity (1e-10), a few
    standard errors for a Monte Carlo estimate, the finite-difference error for a gradient.
    For gradients, pass the relative error as ``lhs`` and 0 as ``rhs`` (relation "<=" also
    reads well: "rel. error <= 1e-7").

    ``kind="example"`` records a *worked example*: an identity that holds by construction (two
    names for the same computation, an inequality every sample obeys, such as log of a mean >=
    mean of logs).  It is printed, marked "example", so the student sees the numbers, but it is
    not a check: it cannot fail, so it does not count towards ``all_ok``.  Every row of kind
    "check" (the default) must be able to fail.
    """

    def __init__(self, title):
        self.title = title
        self.rows = {}

    def add(self, identity, lhs, rhs, tol, relation="=", note="", kind="check"):
        """Record one row; returns whether it holds.  ``identity`` names it (unique per table);
        ``kind`` is "check" (counted) or "example" (shown, not counted: see the class docstring)."""
        if kind not in KINDS:
            raise ValueError(f"expected kind in {KINDS}, got {kind!r}")
        if relation not in RELATIONS:
            raise ValueError(f"expected relation in {RELATIONS}, got {relation!r}")
        if identity in self.rows:
            raise ValueError(f"a check named {identity!r} is already in the table")
        lhs, rhs, tol = float(lhs), float(rhs), float(tol)
        diff = lhs - rhs
        if relation == "=":
            ok = abs(diff) <= tol
        elif relation == "<=":
            ok = diff <= tol
        else:
            ok = -diff <= tol
        ok = bool(ok) and math.isfinite(diff)
        self.rows[identity] = {"lhs": lhs, "rhs": rhs, "difference": diff, "tol": tol,
                               "relation": relation, "ok": ok, "note": note, "kind": kind}
        return ok

    def example(self, identity, lhs, rhs, tol=0.0, relation="=", note=""):
        """``add(..., kind="example")``: a worked example, printed but not counted."""
        return self.add(identity, lhs, rhs, tol, relation=relation, note=note, kind="example")

    @property
    def all_ok(self):
        return not self.failures()

    def failures(self):
        """The names of the checks (kind "check") that do not hold."""
        return [k for k, r in self.rows.items() if r["kind"] == "check" and not r["ok"]]

    def checks(self):
        """{identity: row} of the rows that are checks (not worked examples)."""
        return {k: dict(r) for k, r in self.rows.items() if r["kind"] == "check"}

    def to_dict(self):
        """{identity: {"lhs", "rhs", "difference", "tol", "relation", "ok", "note", "kind"}} (a copy)."""
        return {k: dict(r) for k, r in self.rows.items()}

    def render(self):
        head = ("identity", "lhs", "rel", "rhs", "difference", "tol", "ok")
        lines = [head]
        for k, r in self.rows.items():
            status = ("ok" if r["ok"] else "FAIL") if r["kind"] == "check" else "example"
            lines.append((k, _fmt(r["lhs"]), r["relation"], _fmt(r["rhs"]), _fmt(r["difference"]),
                          _fmt(r["tol"]), status))
        widths = [max(len(l[i]) for l in lines) for i in range(len(head))]
        out = [f"== {self.title} =="]
        for j, l in enumerate(lines):
            cells = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(l, widths))]
            out.append(" | ".join(cells))
            if j == 0:
                out.append("-+-".join("-" * w for w in widths))
        for k, r in self.rows.items():
            if r["note"]:
                out.append(f"  [{k}] {r['note']}")
        n_bad = len(self.failures())
        n_ex = sum(r["kind"] == "example" for r in self.rows.values())
        out.append(f"{len(self.rows) - n_ex} checks: " + ("all ok" if n_bad == 0 else f"{n_bad} FAILED")
                   + (f"  (+ {n_ex} worked example{'s' if n_ex != 1 else ''}, shown, not counted: "
                      "they hold by construction)" if n_ex else ""))
        return "\n".join(out)

    def __str__(self):
        return self.render()


def finish(table, results):
    """Print the lesson's table of checks and record it in ``results`` (returned, for main):
    ``results["checks"]`` the rows that are checks, ``results["examples"]`` the worked examples,
    ``results["all_ok"]`` whether every check holds."""
    print(table)
    results["checks"] = table.checks()
    results["examples"] = {k: r for k, r in table.to_dict().items() if r["kind"] == "example"}
    results["all_ok"] = table.all_ok
    return results


def richardson_grad(f, x, h=1e-3):
    """df/dx for every entry of the float64 array x (perturbed in place, restored exactly).

    Central differences D(h) = (f(x + h e_i) - f(x - h e_i)) / 2h have error O(h^2); one
    Richardson step (4 D(h/2) - D(h)) / 3 cancels it, leaving O(h^4) ~ 1e-12, with a step large
    enough that rounding in f costs only ~1e-13.  That resolves gradients to ~1e-10 relative,
    where plain central differences (h = 1e-6) stop near 1e-8.
    """
    if x.dtype != np.float64:
        raise TypeError(f"expected a float64 array for finite differences, got {x.dtype}")
    g = np.zeros_like(x)
    flat = x.reshape(-1)                       # a view: x must be contiguous
    if not np.shares_memory(flat, x):
        raise ValueError("expected a contiguous array (it is perturbed in place)")
    for i in range(x.size):
        old = flat[i]

        def D(s):
            flat[i] = old + s
            fp = float(f())
            flat[i] = old - s
            fm = float(f())
            flat[i] = old
            return (fp - fm) / ((old + s) - (old - s))

        g.reshape(-1)[i] = (4.0 * D(h / 2) - D(h)) / 3.0
    return g


def quick_or(args, quick, full):
    """``quick`` under --quick, else ``full``."""
    return quick if args.quick else full

