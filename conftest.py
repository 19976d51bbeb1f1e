# Test-suite set-up, loaded by pytest before any test module imports NumPy.
#
# * Makes `import nplvm` and `import kernels` work in the tests even without `pip install -e .`.
# * Runs the suite on one thread per library: the tests use small arrays, where a thread pool's
#   hand-off costs more than it saves (and on a busy 2-core machine, far more).  The benchmarks and
#   lessons keep the machine's default.  An explicit setting in the environment wins.
import os
import sys

for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(var, "1")
os.environ.setdefault("MPLBACKEND", "Agg")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
