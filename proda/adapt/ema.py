"""The EMA teacher of stage 1 (docs/method.md 2.1.12): parameters averaged, buffers copied.

The original updates, after every optimizer step, ``θ_ema ← 0.999·θ_ema + 0.001·θ`` for every parameter and
**copies** every buffer (BN running statistics, ``num_batches_tracked``) from the student, so the teacher's
normalisation statistics are the student's, not an average of them. The EMA starts as an exact copy of the
student (the warm-up weights).

The original never puts its EMA network in eval mode (it runs in train mode: batch-statistics BN and active
dropout); that is the caller's choice, made explicit in the stage, not here: :func:`init_ema` keeps the
student's mode.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

__all__ = ["unwrap", "init_ema", "ema_update", "EMA"]


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel/DataParallel wrapper (anything with ``.module``)."""
    while isinstance(getattr(model, "module", None), nn.Module):
        model = model.module
    return model


def init_ema(model: nn.Module) -> nn.Module:
    """An independent copy of (the unwrapped) ``model`` with ``requires_grad=False`` and no ``.grad``."""
    ema = copy.deepcopy(unwrap(model))
    for p in ema.parameters():
        p.requires_grad_(False)
        p.grad = None
    return ema


@torch.no_grad()
def ema_update(ema_model: nn.Module, model: nn.Module, momentum: float = 0.999) -> None:
    """In place: every parameter ``θ_ema ← m·θ_ema + (1−m)·θ``, every buffer copied from ``model``.

    Parameters and buffers are matched by name (a mismatch is a bug and raises), so a wrapped model, a
    frozen parameter or a reordered registration cannot silently blend the wrong tensors. Non-floating
    parameters, if any, are copied.
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"EMA momentum must be in [0, 1], got {momentum}")
    ema_model, model = unwrap(ema_model), unwrap(model)
    ema_params, params = dict(ema_model.named_parameters()), dict(model.named_parameters())
    ema_buffers, buffers = dict(ema_model.named_buffers()), dict(model.named_buffers())
    if ema_params.keys() != params.keys() or ema_buffers.keys() != buffers.keys():
        missing = (params.keys() ^ ema_params.keys()) | (buffers.keys() ^ ema_buffers.keys())
        raise ValueError(f"EMA and student models differ in parameters/buffers: {sorted(missing)[:5]}")
    for name, p_ema in ema_params.items():
        p = params[name].detach()
        if p_ema.is_floating_point():
            p_ema.mul_(momentum).add_(p.to(p_ema.dtype), alpha=1.0 - momentum)
        else:
            p_ema.copy_(p)
    for name, b_ema in ema_buffers.items():
        b_ema.copy_(buffers[name])


class EMA:
    """Holds the EMA copy of a model: ``EMA(student)``, then ``ema.update(student)`` after each step."""

    def __init__(self, model: nn.Module, momentum: float = 0.999) -> None:
        self.module = init_ema(model)
        self.momentum = momentum

    def update(self, model: nn.Module) -> None:
        ema_update(self.module, model, self.momentum)

    def state_dict(self) -> dict[str, Any]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state)
