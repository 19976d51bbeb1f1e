"""``python -m nplvm``: the command line (see nplvm/cli.py)."""
import sys

from .cli import main

sys.exit(main())
