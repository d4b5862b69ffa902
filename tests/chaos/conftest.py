from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos.harness import Chaos


@pytest.fixture
def chaos(tmp_path: Path) -> Iterator[Chaos]:
    """Starts the test's processes; every one still running is killed at the end."""
    harness = Chaos(tmp_path)
    try:
        yield harness
    finally:
        harness.close()
