"""Every citation of the lecture notes in a lesson names a seed file that exists and a section of it.

A lesson cites the notes as ``NNN_<hash>.txt, "SECTION"`` (or, after that, ``notes NNN, "SECTION"``);
each quoted section must occur in that file (case and line breaks ignored; a quote ending in
"..." is checked up to the dots).  The notes live in ``../shared/seeds`` beside the repository
(``$NPLVM_SEEDS`` overrides); without them the test is skipped.
"""
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SEEDS = Path(os.environ.get("NPLVM_SEEDS", ROOT.parent / "shared" / "seeds"))
OWN = sorted((ROOT / "lessons").glob("[0-9][0-9]_*.py"))
QUOTES = r'((?:"[^"]+"[\s,;:()]*)+)'
FULL = re.compile(r"(\d{3}_[0-9a-f]{16}\.txt)[,:]?\s*\(?" + QUOTES)
SHORT = re.compile(r"notes (\d{3}),\s*\(?" + QUOTES)


def norm(text):
    return re.sub(r"\s+", " ", text).strip().lower()


def citations(path):
    src = path.read_text()
    files = {f[:3]: f for f in re.findall(r"\d{3}_[0-9a-f]{16}\.txt", src)}
    out = [(m.group(1), q) for m in FULL.finditer(src) for q in re.findall(r'"([^"]+)"', m.group(2))]
    for m in SHORT.finditer(src):
        out += [(files.get(m.group(1), m.group(1) + "_?.txt"), q) for q in re.findall(r'"([^"]+)"', m.group(2))]
    return out


@pytest.mark.skipif(not SEEDS.is_dir(), reason=f"lecture notes not found at {SEEDS}")
@pytest.mark.parametrize("lesson", OWN, ids=[p.stem for p in OWN])
def test_citations_name_a_seed_and_a_section(lesson):
    cites = citations(lesson)
    assert cites, f"{lesson.name} cites no seed file by name and section"
    for fname, section in cites:
        seed = SEEDS / fname
        assert seed.is_file(), f"{lesson.name} cites {fname}, which is not in {SEEDS}"
        want = norm(section.split("...")[0].rstrip(", "))
        assert want in norm(seed.read_text()), f"{lesson.name}: section {section!r} not found in {fname}"
