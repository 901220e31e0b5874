"""torch.distributed helpers: a process knows its rank; only rank 0 logs and saves.

Besides rank bookkeeping this holds what data-parallel training needs beyond torch's own pieces:

* :func:`wrap_ddp`: DistributedDataParallel on CPU (gloo) or one GPU per process (NCCL);
* :func:`convert_sync_batchnorm`: BatchNorm -> torch's SyncBatchNorm on GPU and, on CPU (gloo), where
  torch's refuses to run, :class:`SyncBatchNorm`: the same statistics from one differentiable all-gather
  per layer, so ``run.sync_bn`` also works (and is tested) on CPU;
* :func:`all_gather_with_grad`: an all-gather that back-propagates to each process's own rows;
* :func:`all_gather_rows`: every process's rows in rank order (per-image class means for the prototypes);
* :func:`any_rank` / :func:`mean_over_ranks`: agreeing on a decision, averaging logged scalars.
"""
from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def init_from_env(device: str) -> bool:
    """Join the process group torchrun describes (RANK/WORLD_SIZE set); gloo on CPU, NCCL on CUDA."""
    if is_initialized() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return is_initialized()
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if device.startswith("cuda"):
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return True


def all_gather_rows(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Each tensor [B,...] of every process, concatenated in rank order along dim 0: [world*B,...].

    Identity with one process. Every process must pass the same shapes (equal per-rank batches, as the
    trainer's streams give). Bool tensors travel as uint8 (not every backend gathers bool). Used to move
    ProDA's prototypes with every process's per-image class means in batch order, as one process would.
    """
    if not is_initialized() or world_size() == 1:
        return tensors
    out = []
    for t in tensors:
        wire = t.to(torch.uint8).contiguous() if t.dtype == torch.bool else t.contiguous()
        parts = [torch.empty_like(wire) for _ in range(world_size())]
        dist.all_gather(parts, wire)
        joined = torch.cat(parts, 0)
        out.append(joined.bool() if t.dtype == torch.bool else joined)
    return tuple(out)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def any_rank(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True on every process when ``flag`` is True on any (e.g. a non-finite loss: all must skip the step)."""
    if not is_initialized() or world_size() == 1:
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """Each key's mean over the processes that have it (logged losses: rank 0 then writes the global mean)."""
    if not is_initialized() or world_size() == 1:
        return values
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, dict(values))
    out: dict[str, float] = {}
    for key in values:
        have = [g[key] for g in gathered if key in g]
        out[key] = sum(have) / len(have)
    return out


class _AllGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        tensor = tensor.contiguous()
        parts = [torch.empty_like(tensor) for _ in range(world_size())]
        dist.all_gather(parts, tensor)
        ctx.rows, ctx.rank = tensor.shape[0], rank()
        return torch.cat(parts, 0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)  # every rank's loss depends on every rank's rows
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """[B,...] on each process -> [world*B,...] in rank order, back-propagating to each process's own rows
    (every process must pass the same B). Identity without a process group."""
    if not is_initialized() or world_size() == 1:
        return tensor
    return _AllGather.apply(tensor)


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the batches of every process, on CPU (gloo), where torch's SyncBatchNorm refuses to run
    (and DistributedDataParallel refuses torch's on CPU modules).

    In a distributed training forward each process computes its batch's per-channel count, mean and sum of
    squared deviations; one differentiable all-gather (one all-reduce in backward, as torch's) brings every
    process's triple, combined into the global mean and biased variance with the parallel-variance formula
    (numerically as stable as two passes over one batch). Forward and backward therefore equal BatchNorm
    over the concatenated batch; running statistics are updated as BatchNorm does (unbiased variance of the
    global batch). Otherwise (eval mode, one process) it is plain BatchNorm. Any input with a channel
    dimension (BatchNorm1d/2d/3d) is accepted.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if not (self.training and is_initialized() and world_size() > 1):
            return super().forward(input)
        self._check_input_dim(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)
        c = input.shape[1]
        dims = [0, *range(2, input.dim())]
        shape = [1, c] + [1] * (input.dim() - 2)
        x = input.float()
        count = torch.full((1,), x.numel() // c, dtype=torch.float32, device=x.device)
        local_mean = x.mean(dims)
        local_m2 = (x - local_mean.view(shape)).square().sum(dims)
        stats = all_gather_with_grad(torch.cat([local_mean, local_m2, count])[None])  # [world, 2C+1]
        means, m2s, counts = stats[:, :c], stats[:, c:2 * c], stats[:, 2 * c:]
        n = counts.sum()
        mean = (counts * means).sum(0) / n
        var = (m2s + counts * (means - mean).square()).sum(0) / n
        centered = x - mean.view(shape)
        y = centered * torch.rsqrt(var + self.eps).view(shape)
        if self.weight is not None:
            y = y * self.weight.float().view(shape) + self.bias.float().view(shape)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                unbiased = var.detach() * (n / (n - 1).clamp_min(1))
                self.running_mean.mul_(1 - factor).add_(mean.detach().to(self.running_mean.dtype), alpha=factor)
                self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)
        return y.to(input.dtype)


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Every BatchNorm*d of ``module`` -> a synchronised BatchNorm sharing its parameters and buffers (the
    optimizer's references and state-dict keys stay valid): torch's SyncBatchNorm on accelerators, proda's
    :class:`SyncBatchNorm` on CPU. Returns the converted module (the same object unless it is a BatchNorm)."""
    first = next(iter(module.parameters()), None)
    if first is not None and first.device.type != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, (SyncBatchNorm, nn.SyncBatchNorm)):
        out = SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        if module.affine:
            out.weight, out.bias = module.weight, module.bias
        out.running_mean, out.running_var = module.running_mean, module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, convert_sync_batchnorm(child))
    return out


def wrap_ddp(module: nn.Module, device: torch.device, find_unused_parameters: bool = False) -> nn.Module:
    """``module`` in DistributedDataParallel: gradients averaged over processes during ``backward``."""
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=find_unused_parameters)
