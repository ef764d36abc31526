"""Shared test configuration (keep it small: fixtures belong next to their tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

MOUNT_TESTS = Path(__file__).parent / "mount"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under tests/mount is a real-mount test: ``-m "not mount"`` skips them."""
    for item in items:
        if MOUNT_TESTS in Path(item.path).parents:
            item.add_marker(pytest.mark.mount)
