"""Devices: the one place a device name from the config or the command line becomes a torch device, and the
switch that keeps float32 arithmetic float32 under autocast."""
from __future__ import annotations

import contextlib

import torch

from ..errors import ConfigError
from . import dist


def resolve_device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"run.device: {name!r} is not a device name ({exc})") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"run.device: {name!r} requested but CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"run.device: {name!r} requested but only {torch.cuda.device_count()} GPU(s) exist")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"run.device: {name!r} requested but MPS is not available")
    return device


def prepare_device(name: str) -> torch.device:
    """:func:`resolve_device`, then join torchrun's process group when there is one (gloo on CPU, NCCL on
    CUDA); with several processes on CUDA each uses its own GPU (torchrun's LOCAL_RANK)."""
    device = resolve_device(name)
    dist.init_from_env(name)
    if dist.world_size() > 1 and device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def no_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast switched off on ``device``'s type (losses, distances and means stay float32 under bf16/fp16)."""
    try:
        return torch.autocast(device_type=device.type, enabled=False)
    except (RuntimeError, ValueError):  # a device type autocast does not know: nothing to switch off
        return contextlib.nullcontext()
