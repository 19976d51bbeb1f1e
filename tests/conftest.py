"""Fixtures shared by the tests (the repository-wide set-up is in ../conftest.py)."""
import importlib.util
import sys
from pathlib import Path

import pytest

LESSONS = Path(__file__).resolve().parents[1] / "lessons"


@pytest.fixture(scope="session")
def load_lesson():
    """``load_lesson(stem)`` imports lessons/<stem>.py as a module.

    A lesson's file name starts with a digit, so it cannot be imported by ``import``; the lessons'
    folder goes on sys.path for their ``import _common``.
    """
    def load(stem):
        if str(LESSONS) not in sys.path:
            sys.path.insert(0, str(LESSONS))
        spec = importlib.util.spec_from_file_location(f"lesson_{stem}", LESSONS / f"{stem}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    return load


@pytest.fixture(scope="session")
def run_lesson():
    """``run_lesson(stem, argv)`` runs lessons/<stem>.py top to bottom (``_common.run_lesson``) with
    the arguments ``argv`` and returns its ``results`` dict.  Lessons written as notebook cells at
    the top level are run, not imported."""
    if str(LESSONS) not in sys.path:
        sys.path.insert(0, str(LESSONS))
    import _common

    def run(stem, argv):
        return _common.run_lesson(LESSONS / f"{stem}.py", argv)
    return run
