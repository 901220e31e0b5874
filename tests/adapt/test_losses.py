"""ProDA's losses against numbers worked out by hand (and cross-checked with plain numpy once).

The expected literals were computed independently of proda (formula in the comment next to each); the
tests never compare the production code with itself.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from proda.adapt.losses import (
    distillation_kl,
    mean_log_prob_regularizer,
    prototype_consistency_kl,
    prototype_distances,
    rectification_weights,
    rectify_pseudo_labels,
    symmetric_cross_entropy,
)

IGNORE = 255


def close(actual: torch.Tensor, expected, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    """numpy comparison (torch.testing.assert_close costs a second of imports on first use)."""
    got = actual.detach().cpu().double().numpy()
    np.testing.assert_allclose(got, np.asarray(expected, dtype=np.float64), rtol=rtol, atol=atol)
FAST = settings(max_examples=25, deadline=None)


def grid(values, shape) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).reshape(shape)


# ---------------------------------------------------------------------------------------------- distances


def test_distances_toy_three_classes():
    # feat [1,0]; prototypes [0,0], [3,4], [1,0] -> d = 1, sqrt((1-3)²+4²) = sqrt(20), 0
    feat = grid([1.0, 0.0], (1, 2, 1, 1))
    protos = torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 0.0]])
    d = prototype_distances(feat, protos)
    assert d.shape == (1, 3, 1, 1) and d.dtype == torch.float32
    close(d.flatten(), torch.tensor([1.0, 4.472135955, 0.0]), atol=1e-5, rtol=0)


def test_distances_match_direct_norm_and_batch_layout():
    g = torch.Generator().manual_seed(0)
    feat = torch.randn(2, 5, 3, 4, generator=g) * 3
    protos = torch.randn(4, 5, generator=g)
    direct = np.linalg.norm(feat.numpy()[:, None] - protos.numpy()[None, :, :, None, None], axis=2)
    np.testing.assert_allclose(prototype_distances(feat, protos).numpy(), direct, rtol=1e-5, atol=1e-5)


def test_distance_gradient_finite_at_zero_distance():
    feat = grid([1.0, 0.0], (1, 2, 1, 1)).requires_grad_()
    protos = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    prototype_distances(feat, protos).sum().backward()
    assert torch.isfinite(feat.grad).all()
    # only the distance to [0,1] contributes: d/df ||f - (0,1)|| = (f - p)/d = (1,-1)/sqrt(2)
    close(feat.grad.flatten(), torch.tensor([1.0, -1.0]) / math.sqrt(2))


def test_distances_float32_under_autocast():
    feat = torch.randn(1, 8, 2, 2)
    protos = torch.randn(3, 8)
    ref = prototype_distances(feat, protos)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = prototype_distances(feat.bfloat16(), protos)
    assert out.dtype == torch.float32
    close(out, prototype_distances(feat.bfloat16().float(), protos))
    assert (out - ref).abs().max() < 0.1  # only the bf16 rounding of the input remains


# ---------------------------------------------------------------------------------------------- weights/labels


def test_rectification_weights_toy():
    # d = [1, sqrt(20)]: ω = softmax(-(d - 1)) = [1, e^{-(sqrt20-1)}] / (1 + e^{-(sqrt20-1)})
    d = grid([1.0, math.sqrt(20.0)], (1, 2, 1, 1))
    close(rectification_weights(d).flatten(), torch.tensor([0.9698844694, 0.0301155306]))
    # three classes, d = [1, sqrt20, 0]
    d3 = grid([1.0, math.sqrt(20.0), 0.0], (1, 3, 1, 1))
    close(
        rectification_weights(d3).flatten(), torch.tensor([0.2667141442, 0.0082816441, 0.7250042117])
    )
    # T multiplies: T = 2 -> softmax(-2·(d - min)) = [1, e^{-2·3.4721}]/(1 + e^{-6.9443})
    w = rectification_weights(d, temperature=2.0).flatten()
    close(w[1], torch.tensor(math.exp(-6.94427191) / (1 + math.exp(-6.94427191))))


def test_rectification_fixes_a_wrong_pseudo_label():
    # P0 = [0.6, 0.4] says class 0, but the feature sits next to prototype 1 (d = [3, 0.5]):
    # ω = softmax([-2.5, 0]) = [0.0758582, 0.9241418]; ω·P0 = [0.0455149, 0.3696567] -> class 1.
    soft = grid([0.6, 0.4], (1, 2, 1, 1))
    w = rectification_weights(grid([3.0, 0.5], (1, 2, 1, 1)))
    close(w.flatten(), torch.tensor([0.07585818, 0.92414182]))
    assert soft.argmax(1).item() == 0
    assert rectify_pseudo_labels(soft, w).item() == 1
    # r = [0.1096, 0.8904]: a 0.9 threshold drops it, 0.85 keeps it
    assert rectify_pseudo_labels(soft, w, threshold=0.9).item() == IGNORE
    assert rectify_pseudo_labels(soft, w, threshold=0.85).item() == 1


def test_rectification_keeps_a_confident_pseudo_label():
    # P0 = [0.99, 0.01] while the feature is slightly nearer prototype 1 (d = [1, 0.5]):
    # ω = [0.37754, 0.62246]; ω·P0 = [0.37377, 0.0062246] -> stays class 0, r_max = 0.983619
    soft = grid([0.99, 0.01], (1, 2, 1, 1))
    w = rectification_weights(grid([1.0, 0.5], (1, 2, 1, 1)))
    assert rectify_pseudo_labels(soft, w).item() == 0
    assert rectify_pseudo_labels(soft, w, threshold=0.983).item() == 0
    assert rectify_pseudo_labels(soft, w, threshold=0.984).item() == IGNORE


def test_rectify_threshold_zero_ignores_nothing_and_valid_mask():
    g = torch.Generator().manual_seed(1)
    soft = torch.rand(2, 4, 3, 3, generator=g).softmax(1)
    w = torch.rand(2, 4, 3, 3, generator=g).softmax(1)
    labels = rectify_pseudo_labels(soft, w)
    assert labels.dtype == torch.long and labels.shape == (2, 3, 3)
    assert (labels != IGNORE).all()
    np.testing.assert_array_equal(labels.numpy(), (soft * w).numpy().argmax(1))
    valid = torch.ones(2, 3, 3, dtype=torch.bool)
    valid[1, 0, 2] = False
    masked = rectify_pseudo_labels(soft, w, valid=valid)
    assert masked[1, 0, 2] == IGNORE and (masked[valid] == labels[valid]).all()


# ---------------------------------------------------------------------------------------------- SCE


def _two_pixel_example():
    # pixel 1: logits [2,1,0], label 0; pixel 2: logits [0,0,0], label 2.
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 0.0]]).T.reshape(1, 3, 1, 2)
    labels = torch.tensor([[[0, 2]]])
    return logits, labels


def test_sce_by_hand():
    logits, labels = _two_pixel_example()
    # p1 = [e²,e,1]/(e²+e+1) = [0.665241, 0.244728, 0.090031]; p2 = 1/3 each
    # CE  = (-log 0.665241 + log 3)/2 = 0.7531091
    # RCE = 9.2103404·((0.244728 + 0.090031) + 2/3)/2 = 4.6117358
    close(symmetric_cross_entropy(logits, labels, 1.0, 0.0), torch.tensor(0.7531091266))
    close(symmetric_cross_entropy(logits, labels, 0.0, 1.0), torch.tensor(4.6117358273))
    close(symmetric_cross_entropy(logits, labels), torch.tensor(4.6870467399))  # 0.1·CE + RCE


def test_sce_ignores_pixels():
    logits, labels = _two_pixel_example()
    extra = torch.cat([logits, torch.tensor([50.0, -3.0, 7.0]).reshape(1, 3, 1, 1)], dim=3)
    extra_labels = torch.cat([labels, torch.tensor([[[IGNORE]]])], dim=2)
    close(symmetric_cross_entropy(extra, extra_labels), torch.tensor(4.6870467399))


def test_sce_all_ignored_is_zero_with_gradient_path():
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    loss = symmetric_cross_entropy(logits, torch.full((2, 4, 4), IGNORE))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


@FAST
@given(
    arrays(np.float32, (6, 5), elements=st.floats(-30, 30, width=32)),
    st.lists(st.integers(0, 5), min_size=5, max_size=5),
)
def test_rce_is_9_21_times_one_minus_p_y(raw, labels):
    """Per pixel RCE = 9.2103·Σ_{k≠y} clamp(p_k,1e-7,1) ∈ 9.2103·[(1-p_y), (1-p_y) + (C-1)·1e-7]."""
    c = raw.shape[0]
    labels = [min(y, c - 1) for y in labels]
    logits = torch.from_numpy(raw).reshape(1, c, 1, 5)
    y = torch.tensor(labels).reshape(1, 1, 5)
    rce = symmetric_cross_entropy(logits, y, alpha=0.0, beta=1.0).item()
    p = np.exp(raw.astype(np.float64) - raw.max(0))
    p /= p.sum(0)
    p_y = p[labels, np.arange(5)]
    expected = 9.210340371976182 * np.mean(1 - p_y)
    assert expected - 1e-5 <= rce <= expected + 9.2104 * (c - 1) * 1e-7 + 1e-5


@FAST
@given(st.floats(1e3, 1e8), st.integers(1, 4))
def test_sce_and_regularizer_finite_on_huge_logits(scale, classes):
    logits = torch.tensor([1.0, -1.0, 0.5, -0.25])[:classes].reshape(1, classes, 1, 1) * scale
    labels = torch.zeros(1, 1, 1, dtype=torch.long)
    assert math.isfinite(symmetric_cross_entropy(logits, labels).item())
    assert math.isfinite(mean_log_prob_regularizer(logits).item())
    assert math.isfinite(distillation_kl(logits, -logits).item())
    assert math.isfinite(distillation_kl(logits, -logits, form="original").item())


def test_sce_one_class_only():
    logits = torch.randn(1, 1, 2, 2, requires_grad=True)
    loss = symmetric_cross_entropy(logits, torch.zeros(1, 2, 2, dtype=torch.long))
    assert loss.item() == 0.0  # p_y = 1: CE = 0 and no other class for the RCE
    loss.backward()


# ---------------------------------------------------------------------------------------------- regulariser


def test_regularizer_by_hand():
    # pixel 1 logits [0,0]: log p = [-log2, -log2]; pixel 2 logits [log3, 0]: log p = [log .75, log .25]
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]]).reshape(1, 2, 1, 2)
    # -(−2·log2 + log .75 + log .25)/(B·C·H·W = 4) = 0.7650677
    close(mean_log_prob_regularizer(logits), torch.tensor(0.7650676987))
    # only pixel 2 valid: -(log .75 + log .25)/(C·1 = 2) = 0.8369882
    valid = torch.tensor([[[False, True]]])
    close(mean_log_prob_regularizer(logits, valid), torch.tensor(0.8369882168))


# ---------------------------------------------------------------------------------------------- consistency


def _consistency_example(invalid_teacher: float, invalid_feat: float):
    # 2 classes, D = 1, prototypes 0 and 1. Pixel 1 (valid): teacher d = [0, 1] -> q = softmax([0,-1]);
    # student f = 0.25 -> d = [0.25, 0.75] -> p = softmax([-0.25, -0.75]). Pixel 2 is invalid.
    teacher = torch.tensor([[0.0, invalid_teacher], [1.0, invalid_teacher]]).reshape(1, 2, 1, 2)
    feat = torch.tensor([0.25, invalid_feat]).reshape(1, 1, 1, 2)
    valid = torch.tensor([[[True, False]]])
    protos = torch.tensor([[0.0], [1.0]])
    return teacher, valid, feat, protos


@pytest.mark.parametrize("junk", [(250.0, 0.7), (float("nan"), -40.0), (0.0, 3.0)])
def test_consistency_kl_by_hand_and_masked(junk):
    teacher, valid, feat, protos = _consistency_example(*junk)
    teacher.requires_grad_()
    feat.requires_grad_()
    protos.requires_grad_()
    loss = prototype_consistency_kl(teacher, valid, feat, protos)
    # KL(q‖p) = Σ q log(q/p) = 0.0263446; divided by C × valid pixels = 2 -> 0.0131723
    close(loss, torch.tensor(0.0131722930))
    loss.backward()
    # dL/df = ½[(q0 − p0)·∂d0/∂f + (q1 − p1)·∂d1/∂f] with ∂d0/∂f = +1, ∂d1/∂f = −1 -> 0.1085992
    close(feat.grad.flatten(), torch.tensor([0.1085992474, 0.0]))
    assert protos.grad is None and teacher.grad is None


def test_consistency_kl_no_valid_pixel():
    teacher, _, feat, protos = _consistency_example(250.0, 0.5)
    feat.requires_grad_()
    loss = prototype_consistency_kl(teacher, torch.zeros(1, 1, 2, dtype=torch.bool), feat, protos)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(feat.grad, torch.zeros_like(feat))


def test_consistency_kl_temperature_and_identical_views():
    feat = torch.randn(2, 4, 3, 3)
    protos = torch.randn(5, 4)
    d = prototype_distances(feat, protos)
    valid = torch.ones(2, 3, 3, dtype=torch.bool)
    assert abs(prototype_consistency_kl(d, valid, feat, protos, temperature=3.0).item()) < 1e-6
    other = torch.randn(2, 4, 3, 3)
    with_mask = prototype_consistency_kl(d, valid, other, protos)
    close(prototype_consistency_kl(d, None, other, protos), with_mask.item())  # None = every pixel valid
    assert with_mask.item() > 0


# ---------------------------------------------------------------------------------------------- distillation


def test_distillation_by_hand():
    # student logits [0,0] -> p_s = [.5,.5]; teacher logits [log3, 0] -> t = [.75,.25]
    student = torch.zeros(1, 2, 1, 1, requires_grad=True)
    teacher = torch.tensor([math.log(3.0), 0.0]).reshape(1, 2, 1, 1).requires_grad_()
    # 'kl': (.75·log 1.5 + .25·log .5)/(B·C·H·W = 2) = 0.0654060
    kl = distillation_kl(student, teacher)
    close(kl, torch.tensor(0.0654060180))
    # 'original': (.75·(log .75 − .5) + .25·(log .25 − .5))/2 = −0.5311676
    orig = distillation_kl(student, teacher, form="original")
    close(orig, torch.tensor(-0.5311675723))
    (kl + orig).backward()
    assert teacher.grad is None and student.grad is not None
    # d'kl'/ds = (p_s − t)/2 = [-.125, .125]
    # d'original'/ds = −½·J_softmax·t = −½·p·(t − Σ p t) = [-1/16, 1/16]
    close(student.grad.flatten(), torch.tensor([-0.1875, 0.1875]))


def test_distillation_valid_mask_and_bad_form():
    student = torch.zeros(1, 2, 1, 2)
    teacher = torch.tensor([[math.log(3.0), 9.0], [0.0, -9.0]]).reshape(1, 2, 1, 2)
    valid = torch.tensor([[[True, False]]])
    close(distillation_kl(student, teacher, valid=valid), torch.tensor(0.0654060180))
    with pytest.raises(ValueError):
        distillation_kl(student, teacher, form="kld")  # type: ignore[arg-type]


def test_nt_xent_by_hand():
    """Two pairs of 2-d embeddings at right angles: every similarity is 0 or ±1/T, so the loss is a
    closed form. z1 = [e1, e2], z2 = [e1, -e2] (the second pair disagrees completely)."""
    from proda.adapt.ssl import nt_xent

    t = 0.5
    z1 = torch.tensor([[2.0, 0.0], [0.0, 3.0]])  # norms differ: the loss normalises
    z2 = torch.tensor([[1.0, 0.0], [0.0, -1.0]])
    # anchor e1 (row 0): candidates e2 (0), e1 (+1/T, positive), -e2 (0)
    pair1 = -math.log(math.exp(1 / t) / (math.exp(1 / t) + 2.0))
    # anchor e2 (row 1): candidates e1 (0), e1 (0), -e2 (-1/T, positive)
    pair2 = -math.log(math.exp(-1 / t) / (2.0 + math.exp(-1 / t)))
    expected = (2 * pair1 + 2 * pair2) / 4  # each pair appears once from each side
    assert nt_xent(z1, z2, t).item() == pytest.approx(expected, rel=1e-6)
    # perfectly matched, well separated pairs give a smaller loss than mismatched ones
    assert nt_xent(z1, z1.clone(), t) < nt_xent(z1, z2, t)


def test_nt_xent_gradient_pulls_partners_together():
    from proda.adapt.ssl import nt_xent

    torch.manual_seed(0)
    z1 = torch.randn(4, 8, requires_grad=True)
    z2 = torch.randn(4, 8)
    nt_xent(z1, z2, 0.2).backward()
    with torch.no_grad():
        before = torch.nn.functional.cosine_similarity(z1, z2).sum()
        after = torch.nn.functional.cosine_similarity(z1 - 0.1 * z1.grad, z2).sum()
    assert after > before
