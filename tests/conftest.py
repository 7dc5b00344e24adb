import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """A small local text corpus (about 60 kB, 12 documents) for fast data/train tests."""
    root = tmp_path_factory.mktemp("corpus")
    lines = [f"Line {i}: the quick brown fox {i % 7} jumps over the lazy dog {i % 11}." for i in range(1200)]
    for d in range(12):
        (root / f"doc{d:02d}.txt").write_text("\n".join(lines[d * 100:(d + 1) * 100]) + "\n")
    return root


@pytest.fixture(scope="session")
def work(tmp_path_factory) -> Path:
    """A work folder shared by the tests of one session (token files, caches)."""
    return Path(os.environ.get("ARCHBENCH_TEST_WORK") or tmp_path_factory.mktemp("work"))
