"""Checkpoint files: a user's file is read without running code from it; proda's own and the original's load."""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from proda.checkpoint_io import load_checkpoint, save_checkpoint
from proda.errors import CheckpointError


class RunsCodeWhenUnpickled:
    """What a malicious .pkl holds: unpickling calls os.system (here: creates a marker file)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_file_that_would_run_code_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    marker = tmp_path / "it_ran"
    evil = tmp_path / "from_gta5_to_cityscapes_on_deeplabv2_best_model.pkl"
    torch.save({"ResNet101": {"model_state": {"w": torch.ones(1)}}, "x": RunsCodeWhenUnpickled(marker)}, evil)
    with pytest.raises(CheckpointError, match=r"best_model\.pkl: refused to load: unpickling it would import "
                                              r"(posix|nt|os)\.system, which can run code"):
        load_checkpoint(evil)
    assert not marker.exists()


def test_a_proda_checkpoint_with_torch_and_numpy_state_loads(tmp_path: Path) -> None:
    """Resume state holds numpy's RNG state (an array) and the original's files numpy floats: both allowed."""
    state = {"model": {"w": torch.arange(3.0)}, "rng": {"numpy": np.random.get_state(), "python": random.getstate()},
             "best_iou": np.float64(0.575), "iteration": 7, "meta": {"class_names": ["road"], "size": None}}
    save_checkpoint(tmp_path / "run.pth", state)
    back = load_checkpoint(tmp_path / "run.pth")
    assert torch.equal(back["model"]["w"], state["model"]["w"]) and back["best_iou"] == 0.575
    np.testing.assert_array_equal(back["rng"]["numpy"][1], state["rng"]["numpy"][1])
    assert back["rng"]["python"] == state["rng"]["python"]


def test_a_plain_torch_file_loads_and_a_corrupt_proda_file_is_named(tmp_path: Path) -> None:
    torch.save({"conv1.weight": torch.zeros(2, 3, 1, 1)}, tmp_path / "resnet.pth")
    assert load_checkpoint(tmp_path / "resnet.pth")["conv1.weight"].shape == (2, 3, 1, 1)
    save_checkpoint(tmp_path / "run.pth", {"w": torch.ones(4)})
    data = bytearray((tmp_path / "run.pth").read_bytes())
    data[-3] ^= 0xFF
    (tmp_path / "run.pth").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"run\.pth: checkpoint is corrupt or truncated"):
        load_checkpoint(tmp_path / "run.pth")
