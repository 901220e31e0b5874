"""Shared fixtures: tiny datasets in the official layouts, written fresh into each test's tmp_path.

Each fixture returns ``(root, raw_labels)``; see :mod:`fixtures` for the writers and what they return.
Tests that corrupt files may do so freely: every test gets its own copy.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # `import fixtures` from any test, whatever pytest's import mode

from fixtures import write_cityscapes, write_gta5, write_synthia  # noqa: E402


@pytest.fixture
def gta5_data(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    root = tmp_path / "GTA5"
    return root, write_gta5(root)


@pytest.fixture
def synthia_data(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    root = tmp_path / "SYNTHIA-RAND-CITYSCAPES"
    return root, write_synthia(root)


@pytest.fixture
def cityscapes_data(tmp_path: Path) -> tuple[Path, dict[str, dict[str, np.ndarray]]]:
    root = tmp_path / "cityscapes"
    return root, write_cityscapes(root)


# Test tensors are tiny: one thread avoids oversubscribing the (shared, 2-core) machine, which made single
# forward passes up to 100x slower with torch's default pool.
import torch  # noqa: E402

torch.set_num_threads(1)


def pytest_configure(config) -> None:
    # Long end-to-end tests (tests/engine/test_kill.py). They run by default (CI included); `-m "not slow"` skips them.
    config.addinivalue_line("markers", "slow: a long end-to-end test; runs by default, deselect with -m 'not slow'")
