# Makes `import nplvm` and `import kernels` work in the tests even without `pip install -e .`.
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
