"""Data-parallel training on CPU: 2 gloo processes with batch b each against 1 process with batch 2b.

Setting: supervised source-only training (``configs/synthetic/source_only.yaml``: DeepLabV2 ResNet-18 width
16, ProDA head, crop 128x64) on a small synthetic benchmark written into a temporary folder
(``proda.data.synthetic.write_benchmark``, 192x96 images). Every run is the real command line, launched as a
user would: ``python -m proda train CONFIG ...`` for one process, ``torchrun --nproc_per_node=2 -m proda
train CONFIG ...`` (``python -m torch.distributed.run``) for two, each process with one torch thread.

1. Correctness: the 2-process run (batch b each, ``run.sync_bn=true``) must end with the parameters of the
   1-process run with batch 2b: ``||Δ2 − Δ1|| / ||Δ1||`` of the change from the (seeded, common) initial
   weights over all parameters and buffers (and the worst single tensor), after 3 iterations at lr 1e-3;
   below 1e-4 passes (measured: ~1e-5). Two references: the same training in 1 process with 2 threads (only
   the float summation order differs: the noise floor) and 2 processes without SyncBatchNorm (per-process
   statistics: a different training). Short and at a low rate because this small network trained from
   scratch amplifies float rounding quickly: at the config's lr 0.01 (head 0.1) the 1- and 2-thread runs of
   one process already differ by ~2e-3 after 8 iterations, their losses in the 3rd decimal. A worst tensor
   far above the global figure is a gradient computed with heavy cancellation (``conv1`` before BatchNorm),
   equally far apart between the 1- and 2-thread runs.
2. Throughput: training images per second (global batch x iterations / seconds), from the run's own
   ``metrics.jsonl`` timings between the end of iteration 2 and the last iteration, so start-up, the first
   iterations and the final evaluation are excluded. Rows: 1 process 1 thread (batch 2b), 1 process 2
   threads (the other way to use both cores), 2 processes with and without SyncBatchNorm; ratio to the
   first row.

``python benchmarks/distributed.py [--quick] [--json FILE]``; ``run(quick) -> dict`` for ``benchmarks/run.py``.
The machine is small and shared: absolute figures move with its load, the ratios are what to read.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402  (puts the repository root on sys.path)

import torch  # noqa: E402

CONFIG = _common.ROOT / "configs" / "synthetic" / "source_only.yaml"
BATCH = 4  # per process in the 2-process runs; the 1-process runs use 2 * BATCH
SKIP = 2  # iterations excluded from the throughput (start-up, allocator warm-up)
PASS_RTOL = 1e-4
CHECK_ITERATIONS, CHECK_LR = 3, 0.001


def _overrides(data: Path, out: Path, batch: int, iterations: int, sync_bn: bool) -> list[str]:
    return [
        f"data.source_root={data / 'gta5'}", f"data.target_root={data / 'cityscapes'}", f"run.out_dir={out}",
        f"data.batch_size={batch}", f"optim.iterations={iterations}", "data.preflight_samples=0",
        "data.num_workers=0", "model.dropout=0", f"run.sync_bn={'true' if sync_bn else 'false'}",
        "run.eval_every=100000", "run.checkpoint_every=100000", "run.eval_max_images=2", "run.log_every=1",
        "run.tensorboard=false", *_optional_overrides(),
    ]


def _optional_overrides() -> list[str]:
    """Switch off the per-evaluation image panels where this proda has them (they only cost time here)."""
    import dataclasses

    from proda.config import RunConfig

    return ["run.panel_every=0"] if "panel_every" in {f.name for f in dataclasses.fields(RunConfig)} else []


def _train(overrides: list[str], nproc: int, threads: int) -> float:
    """Run one training from the command line; returns its wall time (start-up included)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join([str(_common.ROOT), os.environ.get("PYTHONPATH", "")])}
    if nproc == 1:
        cmd = [sys.executable, "-m", "proda", "train", str(CONFIG), *overrides, "--no-progress"]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "proda", "train", str(CONFIG), *overrides, "--no-progress"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=_common.ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])} ... failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def _images_per_s(run_dir: Path, global_batch: int) -> tuple[float, float]:
    """(images/s, s/iteration) between the end of iteration SKIP and the last one, from metrics.jsonl
    (``sec_per_iter`` of iteration i is the mean over iterations 1..i, so i * sec_per_iter is the time
    from the start of the loop to the end of iteration i)."""
    from proda.engine.logger import read_metrics

    rows = {r["iteration"]: r["sec_per_iter"] for r in read_metrics(run_dir, kind="train")}
    last = max(rows)
    seconds = last * rows[last] - SKIP * rows[SKIP]
    return (last - SKIP) * global_batch / seconds, seconds / (last - SKIP)


def _final_model(run_dir: Path) -> dict[str, torch.Tensor]:
    from proda.checkpoint_io import load_checkpoint

    return load_checkpoint(run_dir / "latest.pth")["model"]


def _initial_model(data: Path, out: Path) -> dict[str, torch.Tensor]:
    """The seeded initial weights every run starts from (built exactly as the trainer builds them)."""
    from proda.config import load_config
    from proda.adapt.registry import build_stage
    from proda.engine.trainer import Trainer

    trainer = Trainer(load_config(CONFIG, _overrides(data, out, 2 * BATCH, 1, False)), build_stage, progress=False)
    return {k: v.detach().clone() for k, v in trainer.stage.modules["model"].state_dict().items()}


def update_difference(after: dict, reference: dict, before: dict) -> dict:
    """||Δ − Δref|| / ||Δref|| over every floating tensor together ("global"), and the worst single tensor's
    ||Δ − Δref|| / max(||Δref||, 1e-3 ||Δref of all||); integer tensors (step counters) must be equal."""
    deltas = {k: ((after[k] - b).double(), (reference[k] - b).double()) for k, b in before.items() if b.is_floating_point()}
    ref_norm = float(torch.stack([dref.norm() for _, dref in deltas.values()]).norm())
    diff_norm = float(torch.stack([(d - dref).norm() for d, dref in deltas.values()]).norm())
    worst, name = 0.0, ""
    for k, (d, dref) in deltas.items():
        err = float((d - dref).norm()) / max(float(dref.norm()), 1e-3 * ref_norm, 1e-30)
        if err > worst:
            worst, name = err, k
    counters_equal = all(torch.equal(after[k], reference[k]) for k, b in before.items() if not b.is_floating_point())
    return {"global": diff_norm / max(ref_norm, 1e-30), "worst_tensor": worst, "worst_tensor_name": name,
            "counters_equal": counters_equal}


def run(quick: bool = False) -> dict:
    _common.single_thread()
    from proda.data.synthetic import write_benchmark

    iterations = 8 if quick else 24
    variants = {  # name -> (processes, threads each, batch each, sync_bn)
        "1 process, 1 thread": (1, 1, 2 * BATCH, True),
        "1 process, 2 threads": (1, 2, 2 * BATCH, True),
        "2 processes (gloo), SyncBN": (2, 1, BATCH, True),
        "2 processes (gloo), per-process BN": (2, 1, BATCH, False),
    }
    with tempfile.TemporaryDirectory(prefix="proda-dist-bench-") as tmp:
        tmp = Path(tmp)
        data = tmp / "data"
        write_benchmark(data, seed=0, size=(192, 96), n_source=64, n_target=8, n_val=2, progress=False, workers=1)

        # 1. correctness: short runs at a low rate, every variant against the first
        finals = {}
        for i, (name, (nproc, threads, batch, sync_bn)) in enumerate(variants.items()):
            out = tmp / f"check{i}"
            _train(_overrides(data, out, batch, CHECK_ITERATIONS, sync_bn) + [f"optim.lr={CHECK_LR}"], nproc, threads)
            finals[name] = _final_model(out)
        before = _initial_model(data, tmp / "init")
        reference = finals.pop("1 process, 1 thread")
        correctness = {name: update_difference(final, reference, before) for name, final in finals.items()}
        check = correctness["2 processes (gloo), SyncBN"]
        ok = check["global"] < PASS_RTOL and check["counters_equal"]
        _common.table(
            f"Correctness after {CHECK_ITERATIONS} iterations (lr {CHECK_LR:g}): parameters and buffers vs "
            f"1 process, 1 thread, batch {2 * BATCH}",
            ["run", "relative update difference", "worst tensor", "(which)"],
            [[name, f"{c['global']:.2e}", f"{c['worst_tensor']:.2e}", c["worst_tensor_name"]]
             for name, c in correctness.items()],
            [f"2 processes x batch {BATCH} with SyncBatchNorm must match (< {PASS_RTOL:g}): {'PASS' if ok else 'FAIL'}",
             "1 process, 2 threads: the float-rounding floor; per-process BN: statistics of 4 images, not 8"],
        )

        # 2. throughput
        runs: dict[str, dict] = {}
        for i, (name, (nproc, threads, batch, sync_bn)) in enumerate(variants.items()):
            out = tmp / f"run{i}"
            wall = _train(_overrides(data, out, batch, iterations, sync_bn), nproc, threads)
            ips, spi = _images_per_s(out, nproc * batch)
            runs[name] = {"processes": nproc, "threads_per_process": threads, "batch_per_process": batch,
                          "global_batch": nproc * batch, "sync_bn": sync_bn, "images_per_s": ips,
                          "s_per_iteration": spi, "wall_s_with_startup": wall}
    base = runs["1 process, 1 thread"]["images_per_s"]
    _common.table(
        f"Training throughput (supervised, crop 128x64, global batch {2 * BATCH}, iterations {SKIP + 1}-{iterations})",
        ["run", "images/s", "s/iteration", "ratio", "wall s (incl. start-up)"],
        [[name, f"{r['images_per_s']:.1f}", f"{r['s_per_iteration']:.3f}", f"{r['images_per_s'] / base:.2f}",
          f"{r['wall_s_with_startup']:.1f}"] for name, r in runs.items()],
        [f"{os.cpu_count()} CPU cores, shared: absolute figures move with the load, read the ratios"],
    )
    return {"iterations": iterations, "skipped_iterations": SKIP, "batch_per_process_2proc": BATCH,
            "correctness": {**correctness, "pass": ok, "threshold": PASS_RTOL, "iterations": CHECK_ITERATIONS,
                            "lr": CHECK_LR},
            "throughput": runs,
            "speedup_2proc_syncbn": runs["2 processes (gloo), SyncBN"]["images_per_s"] / base,
            "speedup_2proc_no_syncbn": runs["2 processes (gloo), per-process BN"]["images_per_s"] / base,
            "speedup_1proc_2threads": runs["1 process, 2 threads"]["images_per_s"] / base}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer iterations")
    ap.add_argument("--json", help="write the figures to this JSON file")
    args = ap.parse_args(argv)
    result = run(args.quick)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
        print(f"figures written to {args.json}")
    return 0 if result["correctness"]["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
