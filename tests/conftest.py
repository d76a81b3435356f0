"""Shared test fixtures: tiny, built in the test; ../shared/data only where a test says so (skipped if absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("LMFORGE_QUIET", "1")  # no live progress bars in test logs

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """../shared/data beside the checkout; the test is skipped with a reason when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"team data not present at {SHARED_DATA} (only on team machines and CI)")
    return SHARED_DATA
