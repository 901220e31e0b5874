"""Class means, the prototype bank (initial running mean, moving average, files) and the EMA teacher.

Expected values are worked out by hand in the comments; class means are checked against a plain loop.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from proda.adapt.ema import EMA, ema_update, init_ema
from proda.adapt.prototypes import PrototypeBank, class_mean_features
from proda.engine.dist import all_gather_rows
from proda.errors import CheckpointError

IGNORE = 255


def close(actual: torch.Tensor, expected, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    """numpy comparison (torch.testing.assert_close costs a second of imports on first use)."""
    got = actual.detach().cpu().double().numpy()
    np.testing.assert_allclose(got, np.asarray(expected, dtype=np.float64), rtol=rtol, atol=atol)


def loop_class_means(feat: np.ndarray, assign: np.ndarray, c: int, min_pixels: int):
    """The original's per-image, per-class loop, in numpy float64."""
    b, d = feat.shape[:2]
    means, present = np.zeros((b, c, d)), np.zeros((b, c), dtype=bool)
    for i in range(b):
        for k in range(c):
            sel = assign[i] == k
            if sel.sum() >= max(min_pixels, 1):
                means[i, k] = feat[i][:, sel].mean(axis=1)
                present[i, k] = True
    return means, present


# ---------------------------------------------------------------------------------------------- class means


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(0, 6))
def test_class_means_match_loop(seed, min_pixels):
    rng = np.random.default_rng(seed)
    feat = rng.normal(size=(2, 3, 5, 6)).astype(np.float32)
    assign = rng.choice([0, 1, 2, 3, IGNORE], size=(2, 5, 6), p=[0.4, 0.3, 0.1, 0.0, 0.2])
    means, present = class_mean_features(torch.from_numpy(feat), torch.from_numpy(assign), 4, min_pixels)
    ref_means, ref_present = loop_class_means(feat, assign, 4, min_pixels)
    assert means.shape == (2, 4, 3) and means.dtype == torch.float32
    np.testing.assert_array_equal(present.numpy(), ref_present)
    np.testing.assert_allclose(means.numpy(), ref_means, atol=1e-5)
    assert not present[:, 3].any()  # class 3 never assigned


def test_class_means_min_pixels_and_ignore():
    # one image, D = 1, 20 pixels: 9 of class 0 (value 1), 10 of class 1 (values 0..9), 1 ignored (value 1000)
    values = torch.tensor([1.0] * 9 + list(range(10)) + [1000.0]).reshape(1, 1, 4, 5)
    assign = torch.tensor([0] * 9 + [1] * 10 + [IGNORE]).reshape(1, 4, 5)
    means, present = class_mean_features(values, assign, num_classes=2)
    assert present.tolist() == [[False, True]]  # 9 < 10 pixels: absent
    assert means[0, 1, 0].item() == pytest.approx(4.5)  # mean of 0..9, the ignored 1000 left out
    assert means[0, 0, 0].item() == 0.0
    means, present = class_mean_features(values, assign, num_classes=2, min_pixels=9)
    assert present.tolist() == [[True, True]] and means[0, 0, 0].item() == pytest.approx(1.0)


def test_class_means_all_ignored():
    means, present = class_mean_features(torch.randn(2, 3, 4, 4), torch.full((2, 4, 4), IGNORE), 5)
    assert not present.any() and torch.equal(means, torch.zeros(2, 5, 3))


def test_gather_is_identity_without_distributed():
    means, present = torch.randn(2, 3, 4), torch.rand(2, 3) > 0.5
    out_means, out_present = all_gather_rows(means, present)
    assert out_means is means and out_present is present


class FakeTwoRankDist:
    """torch.distributed as rank 0 of 2 sees it; rank 1 holds ``other``. all_gather fills in rank order."""

    def __init__(self, other: list[torch.Tensor]) -> None:
        self.other = list(other)

    def is_available(self) -> bool:
        return True

    def is_initialized(self) -> bool:
        return True

    def get_world_size(self) -> int:
        return 2

    def all_gather(self, out: list[torch.Tensor], tensor: torch.Tensor) -> None:
        out[0].copy_(tensor)
        out[1].copy_(self.other.pop(0))


def test_gather_concatenates_in_rank_order_like_one_big_batch(monkeypatch):
    import proda.engine.dist as module

    g = torch.Generator().manual_seed(3)
    means = torch.randn(4, 3, 2, generator=g)  # images 0,1 on rank 0; images 2,3 on rank 1
    present = torch.tensor([[1, 0, 1], [1, 1, 0], [0, 1, 1], [1, 1, 1]], dtype=torch.bool)
    monkeypatch.setattr(module, "dist", FakeTwoRankDist([means[2:], present[2:].to(torch.uint8)]))
    all_means, all_present = all_gather_rows(means[:2], present[:2])
    assert torch.equal(all_means, means) and torch.equal(all_present, present)
    split, whole = PrototypeBank(3, 2), PrototypeBank(3, 2)
    split.momentum_update(all_means, all_present, momentum=0.3)
    whole.momentum_update(means, present, momentum=0.3)
    assert torch.equal(split.prototypes, whole.prototypes)


# ---------------------------------------------------------------------------------------------- bank


def bank_1d(values) -> PrototypeBank:
    bank = PrototypeBank(len(values), 1)
    protos, seen = torch.tensor(values).reshape(-1, 1), torch.ones(len(values), dtype=torch.bool)
    bank.load_state_dict({"prototypes": protos, "initialized": seen})
    return bank


def test_momentum_update_sequential_per_image():
    # η = [0, 10, 20, 30], m = 0.5; image 0 brings class0 = 2, class2 = 4; image 1 class0 = 6, class1 = 7.
    # class 0: 0 -> ½·0 + ½·2 = 1 -> ½·1 + ½·6 = 3.5   (a batch mean would give 2)
    # class 1: 10 -> ½·10 + ½·7 = 8.5;  class 2: 20 -> 12;  class 3: never present, stays 30.
    bank = bank_1d([0.0, 10.0, 20.0, 30.0])
    means = torch.tensor([[2.0, 99.0, 4.0, 99.0], [6.0, 7.0, 99.0, 99.0]]).reshape(2, 4, 1)
    present = torch.tensor([[True, False, True, False], [True, True, False, False]])
    bank.momentum_update(means, present, momentum=0.5)
    assert bank.prototypes.flatten().tolist() == [3.5, 8.5, 12.0, 30.0]


def test_momentum_update_default_and_unseen_classes_stay_finite():
    bank = PrototypeBank(3, 2)
    means = torch.tensor([[[1.0, 2.0], [0.0, 0.0], [5.0, 5.0]]])
    bank.momentum_update(means, torch.tensor([[True, False, False]]))
    close(bank.prototypes[0], torch.tensor([1e-4, 2e-4]))  # (1-1e-4)·0 + 1e-4·v
    assert torch.equal(bank.prototypes[1:], torch.zeros(2, 2))
    assert torch.isfinite(bank.prototypes).all()
    assert bank.unseen_classes() == [1, 2]
    with pytest.raises(ValueError):
        bank.momentum_update(means, torch.tensor([[True, False, False]]), momentum=1.5)
    with pytest.raises(ValueError):
        bank.momentum_update(means[:, :2], torch.tensor([[True, False]]))


def test_accumulate_initial_running_mean():
    # class 0 sees 1, 2, 3 (one per image, two calls) -> mean 2, n = 3; class 1 sees 10 once; class 2 never.
    bank = PrototypeBank(3, 1)
    first = torch.tensor([[1.0, 10.0, 0.0], [2.0, 0.0, 0.0]]).reshape(2, 3, 1)
    bank.accumulate_initial(first, torch.tensor([[True, True, False], [True, False, False]]))
    bank.accumulate_initial(torch.tensor([[3.0, 0.0, 0.0]]).reshape(1, 3, 1), torch.tensor([[True, False, False]]))
    assert bank.prototypes.flatten().tolist() == [2.0, 10.0, 0.0]
    assert bank.counts.tolist() == [3, 1, 0]
    assert bank.initialized.tolist() == [True, True, False] and bank.unseen_classes() == [2]


def test_accumulate_initial_count_cap_3000():
    # n = 2999, η = 1: v = 3001 -> (1·2999 + 3001)/3000 = 2, n = 3000;
    # then the cap holds n at 3000: v = 3003 -> (2·3000 + 3003)/3001 = 3, n = 3000.
    bank = PrototypeBank(1, 1)
    bank.load_state_dict({"prototypes": torch.ones(1, 1), "counts": torch.tensor([2999])})
    present = torch.ones(1, 1, dtype=torch.bool)
    bank.accumulate_initial(torch.tensor([[[3001.0]]]), present)
    assert bank.prototypes.item() == 2.0 and bank.counts.tolist() == [3000]
    bank.accumulate_initial(torch.tensor([[[3003.0]]]), present)
    assert bank.prototypes.item() == 3.0 and bank.counts.tolist() == [3000]


def test_save_load_round_trip(tmp_path):
    bank = PrototypeBank(3, 4)
    bank.accumulate_initial(torch.randn(2, 3, 4), torch.tensor([[True, False, True], [True, False, False]]))
    prov = {"checkpoint": "runs/warmup/best.pth", "iteration": 1234, "dataset": "cityscapes/train"}
    path = tmp_path / "sub" / "prototypes.pth"
    bank.save(path, prov)
    loaded = PrototypeBank.load(path)
    assert torch.equal(loaded.prototypes, bank.prototypes) and torch.equal(loaded.counts, bank.counts)
    assert torch.equal(loaded.initialized, bank.initialized)
    assert (loaded.num_classes, loaded.dim) == (3, 4)
    assert {k: loaded.provenance[k] for k in prov} == prov and "date" in loaded.provenance
    assert [p.name for p in path.parent.iterdir()] == ["prototypes.pth"]  # no temporary left behind


def test_load_original_bare_tensor_and_errors(tmp_path):
    protos = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    torch.save(protos, tmp_path / "prototypes_on_cityscapes_from_deeplabv2")
    bank = PrototypeBank.load(tmp_path / "prototypes_on_cityscapes_from_deeplabv2")
    assert torch.equal(bank.prototypes, protos) and bank.unseen_classes() == [1]
    torch.save({"prototypes": torch.tensor([[math.nan, 0.0]])}, tmp_path / "nan.pth")
    (tmp_path / "torn.pth").write_bytes(b"PK\x03\x04 not really")
    for name in ("nan.pth", "torn.pth", "missing.pth"):
        with pytest.raises(CheckpointError):
            PrototypeBank.load(tmp_path / name)


# ---------------------------------------------------------------------------------------------- EMA


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(1, 1)
        self.bn = nn.BatchNorm1d(1)


class Wrapper(nn.Module):
    """Stands in for DistributedDataParallel: the real model under ``.module``."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module


def test_ema_update_by_hand():
    student = Tiny()
    with torch.no_grad():
        student.lin.weight.fill_(1.0)
        student.lin.bias.fill_(-2.0)
    ema = init_ema(Wrapper(student))
    assert isinstance(ema, Tiny) and all(not p.requires_grad for p in ema.parameters())
    with torch.no_grad():
        ema.lin.weight.fill_(0.0)
        student.bn.running_mean.fill_(5.0)
        student.bn.running_var.fill_(3.0)
        student.bn.num_batches_tracked.fill_(7)
    ema_update(ema, Wrapper(student), momentum=0.9)
    # weight: 0.9·0 + 0.1·1 = 0.1; bias: 0.9·(−2) + 0.1·(−2) = −2; bn affine 0.9·1 + 0.1·1 = 1
    assert ema.lin.weight.item() == pytest.approx(0.1)
    assert ema.lin.bias.item() == pytest.approx(-2.0)
    assert ema.bn.weight.item() == pytest.approx(1.0)
    # buffers are copied, not averaged
    assert ema.bn.running_mean.item() == 5.0 and ema.bn.running_var.item() == 3.0
    assert ema.bn.num_batches_tracked.item() == 7
    ema_update(ema, student, momentum=0.9)  # 0.9·0.1 + 0.1·1 = 0.19
    assert ema.lin.weight.item() == pytest.approx(0.19)
    assert all(p.grad is None and not p.requires_grad for p in ema.parameters())


def test_ema_has_no_grads_and_is_independent():
    student = Tiny()
    student.lin(torch.randn(4, 1)).sum().backward()  # the student has grads; its copy must not
    holder = EMA(student, momentum=0.5)
    assert all(p.grad is None for p in holder.module.parameters())
    with torch.no_grad():
        student.lin.weight.add_(2.0)
    before = holder.module.lin.weight.item()
    holder.update(student)
    assert holder.module.lin.weight.item() == pytest.approx(0.5 * before + 0.5 * (before + 2.0))
    with pytest.raises(ValueError):
        ema_update(holder.module, nn.Linear(1, 1))
