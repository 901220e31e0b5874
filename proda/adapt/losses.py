"""The losses of ProDA as small pure functions, exactly as the original code computes them.

Reference: ``docs/method.md`` sections 2.1 and 2.2 (``CustomModel.step`` and
``step_distillation`` of microsoft/ProDA). Every function here:

* computes in float32 with autocast switched off for its body, whatever the caller's precision: the
  distances go through a matrix product, which autocast would otherwise run in half precision, and the
  softmax/log terms of the self-training losses are where half precision loses the small probabilities;
* treats label value :data:`~proda.data.labels.IGNORE_INDEX` (255, where the original used 250) and
  ``valid`` masks as "no loss here", and returns an exact 0 that still has a gradient path (so a
  backward through an all-ignored batch works and DDP sees every parameter used) instead of NaN;
* keeps the original's normalisations (they set the effective loss weights): where the original
  averages over the class dimension as well, so do we, and the docstring says so.

Shapes: B images, C classes, D feature channels, H×W the loss grid (crop/4 in stage 1).
"""
from __future__ import annotations

import functools
import math
from typing import Callable, Literal, TypeVar

import torch
import torch.nn.functional as F

from ..data.labels import IGNORE_INDEX
from ..engine.device import no_autocast

__all__ = [
    "RCE_LOG_FLOOR",
    "prototype_distances",
    "rectification_weights",
    "rectified_scores",
    "rectify_pseudo_labels",
    "symmetric_cross_entropy",
    "mean_log_prob_regularizer",
    "prototype_consistency_kl",
    "distillation_kl",
]

#: ``log(1e-4)``: the original RCE clamps the one-hot label to [1e-4, 1] before the log, so every
#: wrong class contributes ``-log(1e-4)·p_k`` = 9.2103·p_k and the RCE of a pixel is ≈ 9.2103·(1 − p_y).
RCE_LOG_FLOOR = math.log(1e-4)
#: The original clamps probabilities to [1e-7, 1] inside the RCE.
RCE_PROB_FLOOR = 1e-7

_F = TypeVar("_F", bound=Callable[..., torch.Tensor])


def _float32(fn: _F) -> _F:
    """Run ``fn`` with autocast disabled on the device of its first tensor argument."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        first = next((a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), None)
        if first is None:
            return fn(*args, **kwargs)
        with no_autocast(first.device):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _pixel_mask(valid: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    """A [B,1,H,W] (or [B,C,H,W]) bool mask from a [B,H,W] / [B,C,H,W] ``valid`` argument."""
    if valid is None:
        return None
    valid = valid.to(device=like.device, dtype=torch.bool)
    if valid.dim() == like.dim() - 1:
        valid = valid.unsqueeze(1)
    if valid.dim() != like.dim():
        raise ValueError(f"valid mask of shape {tuple(valid.shape)} does not fit a tensor of shape {tuple(like.shape)}")
    return valid


def _masked_class_mean(elem: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Σ(elem·mask)/Σmask over a [B,C,H,W] tensor and a [B,1|C,H,W] mask: the original's normalisation.

    With a pixel mask this is the per-pixel sum over classes divided by C × (number of valid pixels), i.e.
    the class dimension is averaged too. No valid element -> exactly 0, still connected to the graph.
    """
    if mask is None:
        return elem.mean()
    mask = mask.expand_as(elem)
    total = torch.where(mask, elem, torch.zeros((), dtype=elem.dtype, device=elem.device)).sum()
    return total / mask.sum().clamp_min(1).to(elem.dtype)


@_float32
def prototype_distances(feat: torch.Tensor, prototypes: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Euclidean (not squared) distance of every pixel feature to every prototype: [B,D,H,W], [C,D] -> [B,C,H,W].

    The original loops over classes materialising a [B,D,H,W] difference per class; here the expansion
    ``||f||² − 2 f·η + ||η||²`` costs one matrix product and a [B,C,H,W] result. Rounding can make the
    expansion slightly negative, and sqrt has an infinite derivative at 0, so the squared distance is
    clamped to ``eps`` first: a feature sitting exactly on a prototype gets distance sqrt(eps) (1e-6) and a
    finite (zero) gradient. float32 cancellation error on the squared distance is about 1e-7·(||f||²+||η||²),
    negligible for the softmaxes these distances feed.
    """
    if feat.dim() != 4 or prototypes.dim() != 2 or feat.shape[1] != prototypes.shape[1]:
        raise ValueError(
            f"expected feat [B,D,H,W] and prototypes [C,D], got {tuple(feat.shape)} and {tuple(prototypes.shape)}"
        )
    f = feat.float()
    p = prototypes.to(device=f.device, dtype=torch.float32)
    f_sq = (f * f).sum(dim=1, keepdim=True)  # [B,1,H,W]
    p_sq = (p * p).sum(dim=1).view(1, -1, 1, 1)  # [1,C,1,1]
    cross = torch.einsum("bdhw,cd->bchw", f, p)  # [B,C,H,W]
    return (f_sq - 2.0 * cross + p_sq).clamp_min(eps).sqrt()


@_float32
def rectification_weights(distances: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """ω = softmax over classes of −(d − min_c d)·T, [B,C,H,W] -> [B,C,H,W] (``get_prototype_weight``).

    T multiplies (``--proto_temperature``, 1.0): larger T trusts the nearest prototype more. Subtracting the
    per-pixel minimum changes nothing mathematically; the original does it for numerical range.
    """
    d = distances.float()
    d = d - d.min(dim=1, keepdim=True).values
    return F.softmax(-d * temperature, dim=1)


def rectified_scores(soft: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """ω·P0 [B,C,H,W] in float32: the rectified class scores whose argmax is ProDA's denoised label. The one
    place the rectification product is written; callers that resample before the argmax use it directly."""
    return weights.float() * soft.to(device=weights.device, dtype=torch.float32)


@_float32
@torch.no_grad()
def rectify_pseudo_labels(
    soft: torch.Tensor,
    weights: torch.Tensor,
    threshold: float = 0.0,
    ignore_index: int = IGNORE_INDEX,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Denoised hard labels ŷ = argmax_c(ω_c·P0_c), [B,C,H,W] ×2 -> [B,H,W] long.

    ``soft`` is the fixed warm-up softmax P0, ``weights`` the online prototype weights ω (all ones: the
    warm-up's own labels, argmax P0). Pixels whose renormalised confidence max_c r_c, r = ω·P0/Σ(ω·P0), is
    below ``threshold`` become ``ignore_index``; the original's stage-1 threshold (``--train_thred``) is 0, so
    no pixel is ignored and denoising is purely the re-weighted argmax. Pixels where ``valid`` ([B,H,W]) is
    False (no soft label there) are ignored too, as are pixels whose ω·P0 is all zero when a positive
    threshold is set. Ties go to the lowest class index.
    """
    if soft.shape != weights.shape:
        raise ValueError(f"soft labels {tuple(soft.shape)} and weights {tuple(weights.shape)} differ in shape")
    rectified = rectified_scores(soft, weights)
    labels = rectified.argmax(dim=1)
    if threshold > 0:
        confidence = rectified.max(dim=1).values / rectified.sum(dim=1).clamp_min(torch.finfo(torch.float32).tiny)
        labels = labels.masked_fill(confidence < threshold, ignore_index)
    if valid is not None:
        labels = labels.masked_fill(~valid.to(device=labels.device, dtype=torch.bool), ignore_index)
    return labels


@_float32
def symmetric_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    alpha: float = 0.1,
    beta: float = 1.0,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """α·CE + β·RCE over the non-ignored pixels ([B,C,H,W] logits, [B,H,W] labels -> scalar).

    Symmetric cross-entropy is what makes stage 1 tolerate the remaining label noise: the reverse term
    RCE = −Σ_k clamp(p_k, 1e-7, 1)·log clamp(onehot_k, 1e-4, 1) is bounded (≈ 9.2103·(1 − p_y) per pixel,
    exactly 9.2103·Σ_{k≠y} clamp(p_k, 1e-7, 1)), so confidently wrong labels cannot dominate. Both terms are
    means over valid pixels (the original divides the RCE by ``n_valid + 1e-6``; we divide by ``n_valid``,
    a difference below float32 resolution). All pixels ignored -> 0 with a gradient path (the original
    gives NaN for the CE there).
    """
    if logits.dim() != 4 or labels.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(
            f"expected logits [B,C,H,W] and labels [B,H,W], got {tuple(logits.shape)} and {tuple(labels.shape)}"
        )
    logits = logits.float()
    labels = labels.to(device=logits.device, dtype=torch.long)
    valid = labels != ignore_index
    index = labels.masked_fill(~valid, 0).unsqueeze(1)  # [B,1,H,W], any class under ignored pixels
    n_valid = valid.sum().clamp_min(1).to(logits.dtype)
    zero = torch.zeros((), dtype=logits.dtype, device=logits.device)

    ce = -F.log_softmax(logits, dim=1).gather(1, index).squeeze(1)
    prob = F.softmax(logits, dim=1).clamp(RCE_PROB_FLOOR, 1.0)
    # log clamp(onehot) is 0 on the label's class and log(1e-4) elsewhere: sum the other classes only.
    rce = -RCE_LOG_FLOOR * prob.scatter(1, index, 0.0).sum(dim=1)

    ce_mean = torch.where(valid, ce, zero).sum() / n_valid
    rce_mean = torch.where(valid, rce, zero).sum() / n_valid
    return alpha * ce_mean + beta * rce_mean


@_float32
def mean_log_prob_regularizer(logits: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """The original's MRKLD regulariser: −(1/(B·C·H·W)) Σ log softmax(logits), [B,C,H,W] -> scalar.

    It is KL(uniform ‖ p) up to a constant, averaged over classes too (hence the small weight 0.1): it keeps
    predictions from collapsing onto the noisy pseudo labels. ``valid`` ([B,H,W]) restricts the average to
    valid pixels (dividing by C × their number); None averages over every pixel, as the original does.
    """
    logp = F.log_softmax(logits.float(), dim=1)
    return -_masked_class_mean(logp, _pixel_mask(valid, logp))


@_float32
def prototype_consistency_kl(
    teacher_distances_strong: torch.Tensor,
    valid: torch.Tensor | None,
    student_feat: torch.Tensor,
    prototypes: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Structure-learning consistency KL(q ‖ p) between prototype assignments of two views -> scalar.

    q = softmax(−d_t·T) from the EMA teacher's distances already mapped to the strong view
    ([B,C,H,W], no gradient); log p = log_softmax(−||f_s − η||·T) from the student's strong-view features
    [B,D,H,W] against the prototypes [C,D] (detached: prototypes move only by their moving average).
    Elementwise KL q·(log q − log p) is summed over classes and valid pixels and divided by
    C × (number of valid pixels): the original's Σ(KL·mask)/Σmask with a C-channel mask. ``valid`` is
    [B,H,W] (or [B,C,H,W]; None = every pixel valid); whatever lies under invalid pixels (the original's
    250 sentinel, NaN) is never read into the loss. No valid pixel -> 0 with a gradient path to
    ``student_feat``.
    """
    if teacher_distances_strong.shape[1] != prototypes.shape[0]:
        raise ValueError(
            f"teacher distances have {teacher_distances_strong.shape[1]} classes, prototypes {prototypes.shape[0]}"
        )
    d_s = prototype_distances(student_feat, prototypes.detach())
    if teacher_distances_strong.shape != d_s.shape:
        raise ValueError(
            f"teacher distances {tuple(teacher_distances_strong.shape)} vs student grid {tuple(d_s.shape)}"
        )
    mask = _pixel_mask(valid, d_s)
    with torch.no_grad():
        d_t = teacher_distances_strong.detach().to(device=d_s.device, dtype=torch.float32)
        if mask is not None:  # the sentinel (or NaN) under invalid pixels must not reach the softmax
            d_t = torch.where(mask, d_t, torch.zeros((), device=d_t.device))
        q = F.softmax(-d_t * temperature, dim=1)
    log_p = F.log_softmax(-d_s * temperature, dim=1)
    kl = F.kl_div(log_p, q, reduction="none")  # q·(log q − log p), 0 where q underflows to 0
    return _masked_class_mean(kl, mask)


@_float32
def distillation_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    form: Literal["kl", "original"] = "kl",
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Self-distillation loss of stages 2/3 towards the previous-stage teacher ([B,C,H,W] ×2 -> scalar).

    * ``form='kl'`` (the intent): KL(softmax(t) ‖ softmax(s)) = Σ_c t_c·(log t_c − log_softmax(s)_c).
    * ``form='original'`` (the released numbers, issues #20/#43): ``F.kl_div(softmax(s), softmax(t))`` =
      Σ_c t_c·(log t_c − p_s,c), the student passed as probabilities where log-probabilities were meant.

    Normalisation, both forms: the elementwise terms are averaged over all B·C·H·W elements, like the
    original's mean (its ``teacher != 250`` mask is always all ones), i.e. per-pixel KL divided by C. With
    ``valid`` ([B,H,W]) the average runs over valid pixels only (divided by C × their number). The teacher
    gets no gradient.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student {tuple(student_logits.shape)} and teacher {tuple(teacher_logits.shape)} logits differ"
        )
    s = student_logits.float()
    with torch.no_grad():
        t = F.softmax(teacher_logits.detach().to(device=s.device, dtype=torch.float32), dim=1)
    if form == "kl":
        elem = F.kl_div(F.log_softmax(s, dim=1), t, reduction="none")
    elif form == "original":
        elem = F.kl_div(F.softmax(s, dim=1), t, reduction="none")
    else:
        raise ValueError(f"distillation form must be 'kl' or 'original', got {form!r}")
    return _masked_class_mean(elem, _pixel_mask(valid, elem))
