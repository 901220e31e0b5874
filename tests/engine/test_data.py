"""proda.engine.data: the training streams, with and without class-aware sampling weights.

A stream must be a function of the position alone: the same samples again, the same after a resume at any
step, the same whether W processes with batch B or one with W*B read it; weights change which images the
positions hold, never these properties.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from proda.engine.data import AugmentedDataset, training_loader


class Indices:
    """A reader whose sample i is just i (no files)."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return {"index": i}


def view(sample: dict, rng: np.random.Generator) -> dict:
    return {"index": sample["index"], "draw": int(rng.integers(0, 2**31))}  # the augmentation seed shows too


def dataset(n: int = 10, weights=None) -> AugmentedDataset:
    return AugmentedDataset(Indices(n), view, weights)


def take(ds: AugmentedDataset, steps: int, batch: int = 4, seed: int = 3, start: int = 0, rank: int = 0,
         world: int = 1, workers: int = 0) -> list[tuple[int, int]]:
    """(index, draw) of each sample of ``steps`` micro-batches."""
    out = []
    for b in itertools.islice(training_loader(ds, batch, seed, start_step=start, num_workers=workers, rank=rank,
                                              world_size=world), steps):
        out += list(zip(b["index"].tolist(), b["draw"].tolist()))
    return out


WEIGHTS = np.array([0.05, 0.3, 0.0, 0.15, 0.1, 0.0, 0.2, 0.05, 0.1, 0.05])


def test_weighted_stream_is_deterministic_and_uses_the_weights():
    a, b = take(dataset(weights=WEIGHTS), 8), take(dataset(weights=WEIGHTS), 8)
    assert a == b
    assert a != take(dataset(weights=WEIGHTS), 8, seed=4)
    assert a != take(dataset(), 8)  # not the permutation stream
    assert not {i for i, _ in a} & {2, 5}  # weight 0: never drawn


def test_weighted_stream_resumes_at_any_step():
    ds = dataset(weights=WEIGHTS)
    full = take(ds, 10, batch=3)
    for start in (1, 4, 7):
        assert take(ds, 10 - start, batch=3, start=start) == full[start * 3:]


def test_weighted_stream_world_size_equivalence():
    ds = dataset(weights=WEIGHTS)
    one = take(ds, 6, batch=4)  # one process, batch W*B = 4
    ranks = [take(ds, 6, batch=2, rank=r, world=2) for r in range(2)]
    interleaved = [s for step in range(6) for r in range(2) for s in ranks[r][2 * step:2 * step + 2]]
    assert interleaved == one


def test_weighted_stream_does_not_depend_on_workers():
    ds = dataset(weights=WEIGHTS)
    assert take(ds, 4, workers=2) == take(ds, 4, workers=0)


def test_empirical_frequencies_match_the_weights():
    weights = np.array([0.7, 0.2, 0.1, 0.0])
    ds = dataset(4, weights)
    drawn = np.array([i for i, _ in take(ds, 250, batch=16)])  # 4000 positions
    freq = np.bincount(drawn, minlength=4) / drawn.size
    assert freq[3] == 0
    np.testing.assert_allclose(freq, weights, atol=0.03)  # 3 sigma of the 0.7 share is ~0.022


def test_weights_are_normalised_and_checked():
    ds = dataset(4, [2.0, 1.0, 1.0, 0.0])
    np.testing.assert_allclose(ds.weights, [0.5, 0.25, 0.25, 0.0])
    assert ds.weights.dtype == np.float64
    for bad in ([1.0, 1.0], [1.0, -1.0, 1.0, 1.0], [0.0] * 4, [np.nan, 1.0, 1.0, 1.0]):
        with pytest.raises(ValueError, match="sampling weights"):
            dataset(4, bad)


def test_no_weights_is_the_permutation_stream():
    """weights=None keeps today's stream exactly: each epoch a permutation seeded by (seed, epoch)."""
    ds = dataset(7)
    assert ds.weights is None
    got = take(ds, 6, batch=4, seed=11)  # 24 positions: 3 full epochs and 3 samples of the 4th
    perms = [np.random.default_rng([11, e, 0x5EED]).permutation(7) for e in range(4)]
    expected_index = [int(perms[p // 7][p % 7]) for p in range(24)]
    assert [i for i, _ in got] == expected_index
    expected_draw = [int(np.random.default_rng(np.random.default_rng([11, p, 0xA06]).integers(0, 2**63 - 1))
                         .integers(0, 2**31)) for p in range(24)]
    assert [d for _, d in got] == expected_draw
    for epoch in range(3):  # every image exactly once per epoch
        assert sorted(expected_index[7 * epoch:7 * epoch + 7]) == list(range(7))
