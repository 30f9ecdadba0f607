import sys
from pathlib import Path
from typing import Iterator

import pytest
from twisted.python import log

# The unit tests share small in-memory fakes (tests/unit/fakes.py).
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def logged() -> Iterator[list[str]]:
    """The text of every line logged during the test."""
    lines: list[str] = []

    def observe(event):
        lines.append(log.textFromEventDict(event) or "")

    log.addObserver(observe)
    yield lines
    log.removeObserver(observe)
