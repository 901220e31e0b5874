"""Deterministic, resumable, distributed-aware training streams.

Every training sample is addressed by its position in an endless stream: position p belongs to epoch
p // n, whose order is a permutation seeded by (seed, epoch), and its augmentation is seeded by
(seed, p). A dataset with sampling ``weights`` (class-aware sampling, :mod:`proda.data.readers`) draws
position p's index with those probabilities instead, from a generator seeded by (seed, p): still a function
of the position alone. Iteration i of a run with world size W, per-process batch B and k accumulation steps
consumes positions [i*W*B*k, (i+1)*W*B*k); process r takes its own B-slice of each micro-batch. Hence:

* resuming at iteration i only needs i (no sampler or worker state): the stream restarts at the same place;
* the result does not depend on the number of DataLoader workers;
* W processes with batch B see exactly the samples one process sees with batch W*B, and k micro-batches
  of B exactly those of one batch of k*B.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset


def stream_positions(start_step: int, batch_size: int, rank: int = 0, world_size: int = 1) -> Iterator[list[int]]:
    """Stream positions of each micro-batch of this process, from micro-step ``start_step`` on."""
    step = start_step
    while True:
        base = (step * world_size + rank) * batch_size
        yield list(range(base, base + batch_size))
        step += 1


class _EpochPermutations:
    """Maps a stream position to a dataset index; permutations are cached per epoch."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed = n, seed
        self._cache: dict[int, np.ndarray] = {}

    def index(self, position: int) -> int:
        epoch, offset = divmod(position, self.n)
        perm = self._cache.get(epoch)
        if perm is None:
            if len(self._cache) > 4:
                self._cache.clear()
            perm = np.random.default_rng([self.seed, epoch, 0x5EED]).permutation(self.n)
            self._cache[epoch] = perm
        return int(perm[offset])


class _WeightedDraws:
    """Maps a stream position to a dataset index drawn with probabilities ``weights`` (with replacement):
    inverse CDF of one uniform number from a generator seeded by (seed, position), so a function of the
    position alone, like :class:`_EpochPermutations`. An index of weight 0 is never drawn."""

    def __init__(self, weights: np.ndarray, seed: int):
        cdf = np.cumsum(np.asarray(weights, dtype=np.float64))
        self.cdf = cdf / cdf[-1]  # the last value is exactly 1.0, so a draw in [0, 1) always finds an index
        self.seed = seed

    def index(self, position: int) -> int:
        u = np.random.default_rng([self.seed, position, 0xC1A55]).random()
        return int(np.searchsorted(self.cdf, u, side="right"))  # first i with cdf[i] > u: weight_i > 0


class _StreamBatches(torch.utils.data.Sampler):
    def __init__(self, n: int, seed: int, batch_size: int, start_step: int, rank: int, world_size: int,
                 weights: np.ndarray | None = None):
        self.perms = _EpochPermutations(n, seed) if weights is None else _WeightedDraws(weights, seed)
        self.seed, self.batch_size, self.start_step = seed, batch_size, start_step
        self.rank, self.world_size = rank, world_size

    def __iter__(self):
        for positions in stream_positions(self.start_step, self.batch_size, self.rank, self.world_size):
            yield [(self.perms.index(p), sample_seed(self.seed, p)) for p in positions]

    def __len__(self) -> int:  # endless; DataLoader only needs it for len(loader)
        return 2**62


def sample_seed(seed: int, position: int) -> int:
    return int(np.random.default_rng([seed, position, 0xA06]).integers(0, 2**63 - 1))


class AugmentedDataset(Dataset):
    """Wraps a reader and a view function ``view(sample, rng) -> dict``; indexed by (index, seed).

    ``weights``: None (every image once per epoch of the stream), or float64 [N] sampling probabilities
    (non-negative, normalised here to sum to 1) that the stream of :func:`training_loader` draws images with.
    """

    def __init__(self, reader: Dataset, view: Callable[[dict[str, Any], np.random.Generator], dict[str, Any]],
                 weights: np.ndarray | None = None):
        self.reader, self.view = reader, view
        self.weights = None if weights is None else _check_weights(weights, len(reader))

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        index, seed = key
        return self.view(self.reader[index], np.random.default_rng(seed))


def _check_weights(weights, n: int) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n,):
        raise ValueError(f"sampling weights must have one value per sample ({n}), got shape {w.shape}")
    if not (np.isfinite(w).all() and (w >= 0).all() and w.sum() > 0):
        raise ValueError("sampling weights must be finite, non-negative and not all zero")
    return w / w.sum()


def training_loader(
    dataset: AugmentedDataset,
    batch_size: int,
    seed: int,
    start_step: int = 0,
    num_workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
    pin_memory: bool = False,
) -> Iterator[dict[str, Any]]:
    """Endless iterator of collated micro-batches starting at micro-step ``start_step``; images are drawn by
    ``dataset.weights`` when it has them."""
    sampler = _StreamBatches(len(dataset), seed, batch_size, start_step, rank, world_size,
                             getattr(dataset, "weights", None))
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=False,
        prefetch_factor=2 if num_workers > 0 else None,
        worker_init_fn=_worker_init,
        # its own generator: creating the iterator must not draw from the global RNG (dropout's), or a
        # resumed run would diverge from an uninterrupted one
        generator=torch.Generator().manual_seed(seed),
    )
    return iter(loader)


def _worker_init(worker_id: int) -> None:
    torch.set_num_threads(1)  # workers decode and resize; the main process owns the cores for compute
