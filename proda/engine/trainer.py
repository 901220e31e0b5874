"""The one training loop every stage runs through.

It owns what is common to all stages: devices and precision, the deterministic data streams, the poly
learning-rate schedule, gradient accumulation, non-finite loss handling, periodic evaluation, complete
atomic checkpoints, automatic resume and metrics. What is learned, and how, is the stage's business
(``proda.adapt``, whose registry the caller hands in as the stage factory): the loop only sums the loss
terms a stage's ``step`` returns.
"""
from __future__ import annotations

import contextlib
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm import tqdm

from ..checkpoint_io import load_checkpoint
from ..config import Config, dump_yaml
from ..data.readers import run_classes
from ..errors import ProdaError
from ..io import atomic_write, write_json
from ..models.meta import model_meta
from . import dist
from .data import training_loader
from .device import prepare_device
from .inference import evaluate_model
from .logger import MetricsWriter, read_metrics
from .metrics import summarize
from .run_checkpoints import remove_stale_run_temp_files, save_run_checkpoint


@dataclass
class TrainResult:
    run_dir: Path
    iteration: int
    final: dict[str, Any]  # summarize() of the last evaluation
    best_miou: float
    wall_s: float  # training time of this invocation plus the recorded time of earlier ones


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def poly_factor(iteration: int, horizon: int, power: float) -> float:
    return max(0.0, 1.0 - iteration / horizon) ** power


def set_learning_rates(optimizers: dict[str, torch.optim.Optimizer], factor: float) -> dict[str, float]:
    lrs = {}
    for name, opt in optimizers.items():
        for i, group in enumerate(opt.param_groups):
            group.setdefault("base_lr", group["lr"])
            group["lr"] = group["base_lr"] * factor
            lrs[f"lr/{name}/{group.get('name', i)}"] = group["lr"]
    return lrs


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_device(batch: dict[str, Any], device: torch.device, image_keys: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The batch's tensors on ``device``; those named by ``image_keys`` ([B,3,H,W]) in channels_last format."""
    out = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
    if image_keys:
        for k in image_keys & out.keys():
            if torch.is_tensor(out[k]) and out[k].dim() == 4:
                out[k] = out[k].contiguous(memory_format=torch.channels_last)
    return out


def _stream_seed(seed: int, name: str) -> int:
    return (seed * 1000003 + sum(ord(c) * 31**i for i, c in enumerate(name))) % 2**62


class Trainer:
    def __init__(self, cfg: Config, stage_factory: Callable[..., Any], progress: bool = True):
        """``stage_factory(cfg, device, progress=...)`` builds the stage (``proda.adapt.registry.build_stage``)."""
        self.cfg = cfg
        self.progress = progress
        self.device = prepare_device(cfg.run.device)
        self.run_dir = Path(cfg.run.out_dir)
        if cfg.run.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        seed_everything(cfg.run.seed)  # identical initial weights on every process
        self.stage = stage_factory(cfg, self.device, progress=progress)
        self.stage.progress = progress
        self.prepare_modules()
        self.val_reader = None

    def prepare_modules(self) -> None:
        """SyncBatchNorm (``run.sync_bn``) and channels_last (``run.channels_last``) for every module of the
        stage, then, with several processes, the stage's DistributedDataParallel wrappers. Conversions keep
        parameter objects and state-dict keys, so optimizers, EMA updates and checkpoints are unaffected."""
        r, stage = self.cfg.run, self.stage
        distributed = dist.world_size() > 1
        for name, module in list(stage.modules.items()):
            if r.sync_bn and distributed:
                module = dist.convert_sync_batchnorm(module)
            if r.channels_last:
                module = module.to(memory_format=torch.channels_last)
            stage.modules[name] = module
        if distributed:
            stage.wrap_distributed(self.device)

    # ------------------------------------------------------------------------------------------ state
    def state_dict(self, iteration: int, best_miou: float, final: dict[str, Any], wall_s: float) -> dict[str, Any]:
        s = self.stage
        model = s.modules["model"]  # the bare module: the same keys with or without DDP
        return {
            "format": "proda",
            "stage": self.cfg.stage,
            "iteration": iteration,
            "model": model.state_dict(),
            "optimizer": s.optimizers["model"].state_dict() if "model" in s.optimizers else None,
            "modules": {k: m.state_dict() for k, m in s.modules.items() if k != "model"},
            "optimizers": {k: o.state_dict() for k, o in s.optimizers.items()},
            "stage_state": s.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": rng_state(),
            "best_miou": best_miou,
            "last_eval": final,
            "wall_s": wall_s,
            "config": self.cfg.to_dict(),
            "meta": model_meta(self.cfg),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        s = self.stage
        s.modules["model"].load_state_dict(state["model"])
        for k, sd in state.get("modules", {}).items():
            s.modules[k].load_state_dict(sd)
        for k, sd in state.get("optimizers", {}).items():
            s.optimizers[k].load_state_dict(sd)
        s.load_state_dict(state.get("stage_state", {}))
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])

    # ------------------------------------------------------------------------------------------ loop
    def fit(self, stop_after: int | None = None) -> TrainResult:
        """Train to ``optim.iterations`` (or pause after ``stop_after``, checkpointed, for tests and tools)."""
        cfg, stage = self.cfg, self.stage
        o, r = cfg.optim, cfg.run
        self.scaler = torch.amp.GradScaler(self.device.type) if r.precision == "fp16" else None
        autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(r.precision)

        start_iter, best_miou, final, wall_before = 0, -math.inf, {}, 0.0
        latest = self.run_dir / "latest.pth"
        if r.resume and latest.is_file():
            state = load_checkpoint(latest, map_location=self.device)
            if state.get("stage") != cfg.stage:
                raise ProdaError(f"{latest}: holds a {state.get('stage')!r} run, not {cfg.stage!r}; use another run.out_dir")
            self.load_state(state)
            start_iter, best_miou = state["iteration"], state["best_miou"]
            final, wall_before = state.get("last_eval", {}), state.get("wall_s", 0.0)
        if dist.is_main():
            self.run_dir.mkdir(parents=True, exist_ok=True)
            remove_stale_run_temp_files(self.run_dir)  # what a killed earlier invocation left mid-write
            with atomic_write(self.run_dir / "config.yaml", "w") as f:
                f.write(dump_yaml(cfg))
            _truncate_metrics(self.run_dir, start_iter)
        if start_iter >= o.iterations:
            result_file = self.run_dir / "result.json"
            if result_file.is_file():  # includes what the stage measured at its end
                final = json.loads(result_file.read_text())["final"]
            return TrainResult(self.run_dir, start_iter, final, best_miou, wall_before)
        self.preflight()

        writer = MetricsWriter(self.run_dir, tensorboard=r.tensorboard)
        from .panels import PanelWriter  # image panels (run.panel_every); imported here: it pulls matplotlib

        panels = PanelWriter(self)
        ws, bs, accum = dist.world_size(), cfg.data.batch_size, o.grad_accum
        loaders = {
            name: training_loader(ds, bs, _stream_seed(r.seed, name), start_step=start_iter * accum,
                                  num_workers=cfg.data.num_workers, rank=dist.rank(), world_size=ws,
                                  pin_memory=self.device.type == "cuda")
            for name, ds in stage.streams.items()
        }
        horizon = o.lr_horizon or o.iterations
        header = {
            "stage": cfg.stage, "world_size": ws, "batch_per_device": bs, "grad_accum": accum,
            "effective_batch": ws * bs * accum, "device": str(self.device), "precision": r.precision,
            "iterations": o.iterations, "start_iteration": start_iter, "lr_horizon": horizon,
            **set_learning_rates(stage.optimizers, poly_factor(start_iter, horizon, o.poly_power)),
        }
        if dist.is_main():
            tqdm.write("  ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in header.items()))

        t0 = time.time()
        nonfinite_run = 0
        bar = tqdm(total=o.iterations, initial=start_iter, desc=cfg.stage, dynamic_ncols=True,
                   disable=not (self.progress and dist.is_main()))
        sums: dict[str, float] = {}
        count = 0
        end = o.iterations if stop_after is None else min(o.iterations, stop_after)
        image_keys = frozenset(stage.image_keys) if r.channels_last else frozenset()
        for it in range(start_iter, end):
            lrs = set_learning_rates(stage.optimizers, poly_factor(it, horizon, o.poly_power))
            stage.train_mode()
            step_losses: dict[str, float] = {}
            finite = True
            batch = {}
            for micro in range(accum):
                batch = {name: _to_device(next(loader), self.device, image_keys) for name, loader in loaders.items()}
                with contextlib.ExitStack() as no_sync:
                    if micro < accum - 1:  # DDP: average gradients once, in the last micro-batch's backward
                        for wrapper in stage.ddp.values():
                            no_sync.enter_context(wrapper.no_sync())
                    with torch.autocast(self.device.type, dtype=autocast_dtype or torch.float32,
                                        enabled=autocast_dtype is not None):
                        losses = stage.step(batch, it)
                    total = sum(losses.values())
                    bad = [k for k, v in losses.items() if not torch.isfinite(v.detach()).all()]
                    if dist.any_rank(bool(bad), self.device):  # every process skips the step, or none
                        finite = False
                        step_losses = {f"nonfinite/{k}": 1.0 for k in bad or ["other_process"]}
                        break
                    scaled = total / accum
                    (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
                for k, v in losses.items():
                    step_losses[k] = step_losses.get(k, 0.0) + float(v.detach()) / accum
            if finite:
                nonfinite_run = 0
                for opt in stage.optimizers.values():
                    if self.scaler is not None:
                        self.scaler.step(opt)
                    else:
                        opt.step()
                if self.scaler is not None:
                    self.scaler.update()
                extra = stage.after_step(batch, it)
            else:
                nonfinite_run += 1
                extra = {}
                terms = ", ".join(k.split("/", 1)[1] for k in step_losses)
                if dist.is_main():
                    tqdm.write(f"iteration {it + 1}: non-finite loss in {terms}; step skipped")
                writer.write(it + 1, step_losses, kind="nonfinite")
                if nonfinite_run >= r.max_nonfinite_steps:
                    raise ProdaError(
                        f"{nonfinite_run} consecutive non-finite losses (last in: {terms}); stopping. "
                        f"Lower optim.lr or check the data; the last good checkpoint is {latest}"
                    )
            for opt in stage.optimizers.values():
                opt.zero_grad(set_to_none=True)

            iteration = it + 1
            for k, v in {**step_losses, **extra}.items():
                sums[k] = sums.get(k, 0.0) + v
            count += 1
            bar.update(1)
            if iteration % r.log_every == 0 or iteration == o.iterations:
                means = dist.mean_over_ranks({k: v / count for k, v in sums.items()})
                bar.set_postfix({k: f"{v:.3f}" for k, v in list(means.items())[:4]})
                writer.write(iteration, {**means, **lrs, "sec_per_iter": (time.time() - t0) / (iteration - start_iter)})
                sums, count = {}, 0

            evaluate_now = stage.evaluates and (iteration % r.eval_every == 0 or iteration == o.iterations)
            if evaluate_now:
                final = self.evaluate()
                scalars = {k: v for k, v in final.items() if isinstance(v, float)}
                per_class = {f"iou/{k}": v for k, v in final["per_class_iou"].items() if v is not None}
                writer.write(iteration, {**scalars, **per_class}, kind="val")
                if dist.is_main():
                    tqdm.write(f"iteration {iteration}: target val mIoU {final['miou']:.2f}")
            panels.maybe_write(iteration, evaluate_now, writer)
            is_best = evaluate_now and final["miou"] > best_miou
            if is_best:
                best_miou = final["miou"]
            if evaluate_now or iteration % r.checkpoint_every == 0 or iteration == end:
                if dist.is_main():
                    wall = wall_before + time.time() - t0
                    save_run_checkpoint(self.run_dir, self.state_dict(iteration, best_miou, final, wall),
                                        iteration, r.keep_last, is_best)
                dist.barrier()
        bar.close()
        writer.close()
        wall = wall_before + time.time() - t0
        if end < o.iterations:
            return TrainResult(self.run_dir, end, final, best_miou, wall)
        final = {**final, **stage.final_metrics()}
        if dist.is_main():
            write_json(self.run_dir / "result.json", {"iteration": o.iterations, "final": final,
                                                      "best_miou": best_miou, "wall_s": wall})
        return TrainResult(self.run_dir, o.iterations, final, best_miou, wall)

    def preflight(self) -> None:
        """Decode a sample of every dataset the run reads before spending hours on it."""
        n = self.cfg.data.preflight_samples
        if n <= 0 or not dist.is_main():
            return
        from ..data.check import preflight

        for name, stream in self.stage.streams.items():
            preflight(stream.reader, n, f"{name} training data", getattr(stream.view, "cropper", None))
        if self.stage.evaluates:
            preflight(self._val_reader(), n, "target validation data")

    def _val_reader(self):
        if self.val_reader is None:
            from ..data.readers import target_reader

            self.val_reader = target_reader(self.cfg, split=self.cfg.data.val_split, with_labels=True, size=None)
        return self.val_reader

    def evaluate(self) -> dict[str, Any]:
        cfg = self.cfg
        cm = evaluate_model(self.stage.modules["model"], self._val_reader(), self.device, cfg.data.num_classes,
                            input_size=cfg.data.val_size, mean=cfg.model.mean, std=cfg.model.std,
                            max_images=cfg.run.eval_max_images, progress=self.progress)
        return {**summarize(cm, run_classes(cfg)), **self.stage.eval_metrics()}


def _truncate_metrics(run_dir: Path, iteration: int) -> None:
    """After a resume, drop metric rows newer than the checkpoint so the file tells one history."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return
    rows = [row for row in read_metrics(run_dir) if row.get("iteration", 0) <= iteration]
    with atomic_write(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def train(cfg: Config, stage_factory: Callable[..., Any], progress: bool = True) -> TrainResult:
    return Trainer(cfg, stage_factory, progress=progress).fit()
