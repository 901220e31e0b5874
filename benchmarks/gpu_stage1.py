"""Stage-1 iterations per second and peak memory at the paper setting, fp32 against bf16 + channels_last.

The real trainer runs ``configs/gta5/stage1.yaml`` (DeepLab-v2 ResNet-101, batch 4, 896x512 weak crops,
EMA forward on the full 2048x1024 target image, strong view, prototypes) on synthetic images written at
Cityscapes resolution; the weights are a randomly initialised model's (the cost does not depend on them),
whose prototypes and soft labels are computed first, as the pipeline does for the warm-up model. The two
precisions run one after the other in one process on the same data; seconds per iteration are the
trainer's own figure over the last logged window (the first iterations, with cuDNN autotuning, excluded).

    python benchmarks/gpu_stage1.py [--iterations 30] [--device cuda] [--json FILE]

Needs a GPU for meaningful figures (``--device cpu --small`` only checks that the script runs).
Record the printed table, with the date and the device, in benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402,F401  (puts the working tree's proda first on sys.path)

import torch  # noqa: E402

VARIANTS = {
    "fp32": ["run.precision=fp32", "run.channels_last=false"],
    "bf16 + channels_last": ["run.precision=bf16", "run.channels_last=true"],
}


def _setup(root: Path, device: str, small: bool) -> list[str]:
    """Synthetic data at the paper's size, a random model's checkpoint, its prototypes and soft labels."""
    from proda.config import load_config
    from proda.data.synthetic import write_benchmark
    from proda.adapt.prototypes import prototypes_command
    from proda.engine.pseudo_label_generation import pseudo_label_command
    from proda.adapt.registry import train

    size = (256, 128) if small else (2048, 1024)
    write_benchmark(root / "data", seed=0, size=size, n_source=8, n_target=8, n_val=1, progress=False)
    data = [f"data.source_root={root / 'data' / 'gta5'}", f"data.target_root={root / 'data' / 'cityscapes'}",
            f"run.device={device}", "run.tensorboard=false", "run.panel_every=0", "data.preflight_samples=0"]
    if small:
        data += ["data.crop_size=[112,64]", "data.resize_width=275", "model.depth=18", "model.width=16",
                 "model.head_mid=64"]
    init = root / "init"
    train(load_config("gta5/source_only.yaml", [*data, f"run.out_dir={init}", "model.init=null",
                                                 "optim.iterations=1", "run.eval_every=1"]), progress=False)
    cfg = load_config("gta5/stage1.yaml", [*data, f"model.init={init / 'latest.pth'}"])
    prototypes_command(str(init / "latest.pth"), cfg, str(init / "prototypes.pth"), progress=False)
    pseudo_label_command(str(init / "latest.pth"), cfg, soft=True, out=str(init / "pseudo_soft"), progress=False)
    return [*data, f"model.init={init / 'latest.pth'}", f"stage1.soft_labels={init / 'pseudo_soft'}",
            f"stage1.prototypes={init / 'prototypes.pth'}"]


def run(quick: bool = False, device: str = "cuda", iterations: int = 30, small: bool = False) -> dict:
    from proda.config import load_config
    from proda.adapt.registry import train

    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this benchmark needs a GPU (use --device cpu --small to check it runs)")
    iterations = 6 if quick else iterations
    window = max(2, iterations // 3)
    results: dict = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "batch": 4,
                     "model": "ResNet-18 width 16 (--small)" if small else "DeepLab-v2 ResNet-101",
                     "crop": "112x64" if small else "896x512", "full_image": "256x128" if small else "2048x1024",
                     "iterations": iterations, "timed_last_iterations": window, "variants": {}}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base = _setup(root, device, small)
        for name, extra in VARIANTS.items():
            out = root / name.replace(" ", "_").replace("+", "")
            cfg = load_config("gta5/stage1.yaml", [*base, *extra, f"run.out_dir={out}", f"optim.iterations={iterations}",
                                                   f"run.log_every={window}", f"run.eval_every={iterations}",
                                                   "run.eval_max_images=1"])
            if device == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.time()
            train(cfg, progress=False)
            wall = time.time() - t0
            logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
            last = [m for m in logged if m.get("kind") == "train"][-1]
            windows = [m for m in logged if m.get("kind") == "train"]
            # the trainer logs the mean seconds/iteration since the start; difference the last two windows
            if len(windows) >= 2:
                a, b = windows[-2], windows[-1]
                sec = (b["sec_per_iter"] * b["iteration"] - a["sec_per_iter"] * a["iteration"]) / (b["iteration"] - a["iteration"])
            else:
                sec = last["sec_per_iter"]
            results["variants"][name] = {
                "sec_per_iteration": sec, "iterations_per_s": 1.0 / sec, "images_per_s": 4.0 / sec,
                "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None,
                "wall_s_including_evaluation": wall,
            }
    fp32, bf16 = (results["variants"][k]["sec_per_iteration"] for k in VARIANTS)
    results["speedup_bf16_channels_last"] = fp32 / bf16
    return results


def print_table(res: dict) -> None:
    print(f"stage 1, {res['model']}, batch {res['batch']}, crop {res['crop']}, full image {res['full_image']} "
          f"on {res['device']} (last {res['timed_last_iterations']} of {res['iterations']} iterations)")
    print(f"{'precision':24s} {'it/s':>8s} {'s/it':>8s} {'peak GiB':>9s}")
    for name, v in res["variants"].items():
        mem = f"{v['peak_memory_gib']:.1f}" if v["peak_memory_gib"] is not None else "-"
        print(f"{name:24s} {v['iterations_per_s']:8.2f} {v['sec_per_iteration']:8.3f} {mem:>9s}")
    print(f"speed-up of bf16 + channels_last: {res['speedup_bf16_channels_last']:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--small", action="store_true", help="tiny sizes and model: only checks the script runs")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json")
    args = ap.parse_args()
    res = run(args.quick, args.device, args.iterations, args.small)
    print_table(res)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
