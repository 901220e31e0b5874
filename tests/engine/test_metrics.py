"""ConfusionMatrix / mIoU: hand-computed matrices, ignore handling, NaN classes, miou_13, distributed reduce."""
from __future__ import annotations

import math
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hypothesis import given, settings
from hypothesis import strategies as st

from proda.data import labels
from proda.engine.metrics import ConfusionMatrix, summarize


def pixels_from_matrix(mat: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(pred, target) 1-D tensors whose confusion matrix (rows = GT) is ``mat``."""
    preds, targets = [], []
    for gt, row in enumerate(mat):
        for pr, count in enumerate(row):
            preds += [pr] * count
            targets += [gt] * count
    return torch.tensor(preds, dtype=torch.int64), torch.tensor(targets, dtype=torch.int64)


def cm_from_matrix(mat: list[list[int]]) -> ConfusionMatrix:
    cm = ConfusionMatrix(len(mat))
    cm.update(*pixels_from_matrix(mat))
    assert cm.mat.tolist() == mat
    return cm


def test_3x3_by_hand() -> None:
    cm = cm_from_matrix([[3, 1, 0], [0, 2, 2], [1, 0, 1]])
    # class 0: tp 3, fn 1, fp 1 -> 3/5; class 1: tp 2, fn 2, fp 1 -> 2/5; class 2: tp 1, fn 1, fp 2 -> 1/4
    assert cm.iou().tolist() == pytest.approx([0.6, 0.4, 0.25])
    assert cm.miou() == pytest.approx(100 * (0.6 + 0.4 + 0.25) / 3)  # 41.667
    assert cm.pixel_accuracy() == pytest.approx(60.0)  # 6 of 10


def test_4x4_absent_class_is_nan_and_excluded_from_mean() -> None:
    cm = cm_from_matrix([[2, 0, 1, 0], [0, 1, 0, 0], [1, 0, 3, 0], [0, 0, 0, 0]])
    iou = cm.iou()
    # class 0: 2/(2+1+1); class 1: 1/1; class 2: 3/(3+1+1); class 3: never seen -> NaN
    assert iou[:3].tolist() == pytest.approx([0.5, 1.0, 0.6])
    assert math.isnan(iou[3].item())
    assert cm.miou() == pytest.approx(70.0)
    assert cm.miou_subset([1, 3]) == pytest.approx(100.0)


def test_class_only_predicted_counts_as_zero() -> None:
    cm = cm_from_matrix([[2, 0, 0, 2], [0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    # class 0: 2/4; class 1: 1; class 2: NaN; class 3: predicted twice, never GT -> 0 (and counted)
    assert cm.miou() == pytest.approx(100 * (0.5 + 1.0 + 0.0) / 3)


def test_ignore_pixels_dropped_whatever_their_prediction() -> None:
    cm = ConfusionMatrix(3)
    target = torch.tensor([[0, 255, 1], [2, -1, 255]])
    pred = torch.tensor([[0, 255, 1], [2, 7, 0]])  # predictions on ignored pixels are never looked at
    cm.update(pred, target)
    assert int(cm.mat.sum()) == 3
    assert cm.miou() == pytest.approx(100.0)
    cm.update(pred[:, :1].contiguous(), target[:, :1].contiguous())
    assert cm.mat.diagonal().tolist() == [2, 1, 2]
    cm.reset()
    assert int(cm.mat.sum()) == 0 and math.isnan(cm.miou()) and math.isnan(cm.pixel_accuracy())


def test_update_rejects_bad_input() -> None:
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="shape"):
        cm.update(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="outside"):
        cm.update(torch.tensor([3]), torch.tensor([0]))
    with pytest.raises(TypeError):
        cm.update(torch.zeros(2), torch.zeros(2, dtype=torch.long))


def test_miou_13_of_16_class_matrix_by_hand() -> None:
    # 16-class compact order: 0 road, 3 wall, 4 fence, 5 pole, 9 sky, 15 bicycle.
    # Every class has 1 correct pixel except: wall's only pixel predicted road; fence and bicycle absent;
    # pole has one more pixel predicted sky.
    mat = [[0] * 16 for _ in range(16)]
    for k in range(16):
        if k not in (3, 4, 15):
            mat[k][k] = 1
    mat[3][0] = 1
    mat[5][9] = 1
    cm = cm_from_matrix(mat)
    # road 1/2, wall 0, fence NaN, pole 1/2, sky 1/2, bicycle NaN, ten others 1 -> 11.5 / 14 classes
    assert cm.miou() == pytest.approx(100 * 11.5 / 14)  # 82.142857
    # 13 classes (drop wall, fence, pole): road 1/2, sky 1/2, bicycle NaN, ten others 1 -> 11 / 12
    assert labels.INDICES_13_IN_16 == (0, 1, 2, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)
    result = summarize(cm, 16)
    assert result["miou"] == pytest.approx(100 * 11.5 / 14)
    assert result["miou_13"] == pytest.approx(100 * 11 / 12)  # 91.6667


def test_to_dict_schema_and_table() -> None:
    cm = cm_from_matrix([[2, 0, 1, 0], [0, 1, 0, 0], [1, 0, 3, 0], [0, 0, 0, 0]])
    names = ["road", "sidewalk", "building", "wall"]
    d = cm.to_dict(names)
    assert set(d) == {"miou", "per_class_iou"}
    assert isinstance(d["miou"], float) and d["miou"] == pytest.approx(70.0)
    assert list(d["per_class_iou"]) == names
    assert d["per_class_iou"]["road"] == pytest.approx(50.0)
    assert d["per_class_iou"]["wall"] is None
    table = cm.format_table(names)
    for name in names:
        assert name in table
    assert "70.00" in table and "mIoU" in table
    assert "37.50" in table  # building holds 3 of the 8 GT pixels
    with pytest.raises(ValueError):
        cm.to_dict(names[:3])


def test_summarize_19_has_no_miou_13() -> None:
    cm = ConfusionMatrix(19)
    cm.update(torch.arange(19), torch.arange(19))
    result = summarize(cm, 19)
    assert result["miou"] == pytest.approx(100.0)
    assert "miou_13" not in result
    assert list(result["per_class_iou"]) == list(labels.CLASSES_19)


def test_reduce_is_noop_without_process_group() -> None:
    cm = cm_from_matrix([[1, 2], [3, 4]])
    assert cm.reduce_() is cm
    assert cm.mat.tolist() == [[1, 2], [3, 4]]


def _reduce_rank(rank: int, store_path: str) -> torch.Tensor:
    """Join a 2-rank gloo group, count this rank's shard, all-reduce; returns the reduced matrix."""
    dist.init_process_group(
        "gloo", init_method=f"file://{store_path}", rank=rank, world_size=2, timeout=timedelta(seconds=60)
    )
    try:
        cm = ConfusionMatrix(3)
        if rank == 0:
            cm.update(torch.tensor([0, 1, 2, 2]), torch.tensor([0, 1, 1, 255]))
        else:
            cm.update(torch.tensor([2, 0]), torch.tensor([2, 0]))
        return cm.reduce_().mat.clone()
    finally:
        dist.destroy_process_group()


def _spawned_rank_1(_: int, store_path: str, out_path: str) -> None:
    torch.save(_reduce_rank(1, store_path), out_path)


def test_reduce_sums_over_two_gloo_ranks(tmp_path) -> None:
    # This process is rank 0 and one spawned process is rank 1: a single extra torch import keeps it fast.
    store, out = str(tmp_path / "store"), str(tmp_path / "rank1.pt")
    ctx = mp.spawn(_spawned_rank_1, args=(store, out), nprocs=1, join=False)
    try:
        rank0 = _reduce_rank(0, store)
    finally:
        ctx.join()
    expected = [[2, 0, 0], [0, 1, 1], [0, 0, 1]]  # rank 0 + rank 1, counted by hand
    assert rank0.tolist() == expected
    assert torch.load(out).tolist() == expected
    assert not dist.is_initialized()


@settings(max_examples=40, deadline=None)
@given(
    num_classes=st.integers(1, 6),
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=3),
    data=st.data(),
)
def test_property_total_and_perfect_prediction(num_classes: int, shape: list[int], data) -> None:
    n = math.prod(shape)
    target_values = data.draw(st.lists(st.sampled_from([*range(num_classes), 255]), min_size=n, max_size=n))
    pred_values = data.draw(st.lists(st.integers(0, num_classes - 1), min_size=n, max_size=n))
    target = torch.tensor(target_values).reshape(shape)
    pred = torch.tensor(pred_values).reshape(shape)
    valid = int((target != 255).sum())

    cm = ConfusionMatrix(num_classes)
    cm.update(pred, target)
    assert int(cm.mat.sum()) == valid
    assert bool((cm.mat >= 0).all())
    miou = cm.miou()
    assert math.isnan(miou) == (valid == 0)
    if valid:
        assert 0.0 <= miou <= 100.0

    perfect = ConfusionMatrix(num_classes)
    perfect.update(torch.where(target == 255, 0, target), target)
    if valid:
        assert perfect.miou() == pytest.approx(100.0)
        assert perfect.pixel_accuracy() == pytest.approx(100.0)
    assert int(perfect.mat.sum()) == valid == int(perfect.mat.diagonal().sum())

