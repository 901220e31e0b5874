"""Data-parallel training (2 gloo processes on CPU), gradient accumulation, bf16 autocast and channels_last.

The central claim: W processes with batch B each train exactly as one process with batch W*B (to float
rounding). What makes it hold, and what the tests therefore set:

* the data streams (proda.engine.data) give rank r the r-th B-slice of each global micro-batch, so the
  processes together see the single process's samples, in the same order;
* DDP averages gradients, and every loss is a mean over equally many elements per process: the labels hold
  no ignored class and stage 1's strong view is a flip only (``strong_ops=0``, no cutout), so no pixel is
  masked out and the mean of the per-process means is the mean over the combined batch;
* BatchNorm normalises with batch statistics, which differ between a batch of B and one of W*B unless they
  are synchronised: the equivalence runs use ``run.sync_bn=true`` (proda's SyncBatchNorm, which also runs on
  CPU); a control run without it shows the difference is real and large, so the comparisons can see it;
* no dropout (``model.dropout=0``): each process draws its own masks;
* stage 1's moving prototypes: each process computes per-image class means, all-gathers them in rank order
  and applies the same sequential per-image updates as one process would in batch order: identical banks.

The two-process runs happen once per module (one spawn; every run in it shares the process group) and the
tests compare each with its one-process counterpart run here.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from fixtures import write_cityscapes, write_gta5
from proda.adapt.registry import build_stage
from proda.config import RunConfig, load_config
from proda.checkpoint_io import load_checkpoint
from proda.engine.inference import evaluate_model
from proda.engine.logger import read_metrics
from proda.engine.trainer import Trainer
from proda.errors import ConfigError

CONFIGS = Path(__file__).parents[2] / "proda" / "configs" / "synthetic"
IDS = [7, 8, 11, 21, 23, 26]  # Cityscapes label ids of valid classes only: no ignored pixel anywhere
WORLD = 2
TIMEOUT_S = 150
# image panels at each evaluation cost a matplotlib import and drawing time these tests do not need
NO_PANELS = ["run.panel_every=0"] if "panel_every" in {f.name for f in dataclasses.fields(RunConfig)} else []


# ------------------------------------------------------------------------------------------------ configs
def make_cfg(name: str, data: Path, out: Path, *extra: str):
    return load_config(CONFIGS / f"{name}.yaml", [
        f"data.source_root={data / 'gta5'}", f"data.target_root={data / 'cityscapes'}", f"run.out_dir={out}",
        "data.crop_size=[32,16]", "data.preflight_samples=0", "model.width=8", "model.head_mid=16",
        "model.dropout=0", "model.init=null", "optim.iterations=2", "optim.lr=0.01", "run.eval_every=2",
        "run.checkpoint_every=2", "run.tensorboard=false", "run.log_every=1", "warmup.disc_width=4",
        "ssl.proj_hidden=16", "ssl.proj_dim=8", *NO_PANELS, *extra,
    ])


def stage1_extra(data: Path) -> list[str]:
    art = data / "stage1_inputs"
    return [f"stage1.soft_labels={art / 'pseudo_soft'}", f"stage1.prototypes={art / 'prototypes.pth'}",
            "stage1.strong_ops=0", "stage1.cutout=false", "stage1.ema_momentum=0.5",
            "stage1.prototype_momentum=0.5", "stage1.consistency_weight=1.0",
            "stage1.sce_alpha=0.1", "stage1.sce_beta=1.0", "stage1.regular_weight=0.1"]  # every loss term on


def jobs(data: Path, runs: Path, world: int) -> dict[str, tuple[str, list[str]]]:
    """name -> (config, overrides) of each comparison; per-process batch sizes for ``world`` processes,
    so that world * batch is the same whatever ``world`` is."""
    b = lambda n: f"data.batch_size={n * WORLD // world}"  # noqa: E731
    spec = {
        "supervised": ("source_only", [b(2), "run.sync_bn=true"]),
        "supervised_no_sync_bn": ("source_only", [b(2)]),
        "supervised_accum": ("source_only", [b(1), "optim.grad_accum=2", "run.sync_bn=true"]),
        "warmup": ("warmup", [b(1), "run.sync_bn=true"]),
        "stage1": ("stage1", [b(1), "run.sync_bn=true", *stage1_extra(data)]),
        # the EMA in train mode normalises with batch statistics too: its BatchNorms are synchronised
        "stage1_ema_train": ("stage1", [b(1), "run.sync_bn=true", "stage1.ema_train_mode=true", *stage1_extra(data)]),
        "ssl": ("ssl", [b(2), "run.sync_bn=true"]),
    }
    return {name: (config, [*extra, f"run.out_dir={run_dir(runs, world, name)}"]) for name, (config, extra) in spec.items()}


def run_dir(runs: Path, world: int, name: str) -> Path:
    return runs / f"w{world}" / name


def write_pseudo_labels(data: Path, runs: Path, world: int) -> None:
    """Soft and hard pseudo labels of the 2-process supervised run's checkpoint (same in every process),
    generated by ``world`` processes into run_dir(runs, world, 'pseudo_*')."""
    from proda.engine.pseudo_label_generation import pseudo_label_command

    cfg = make_cfg("source_only", data, data / "unused")
    checkpoint = str(run_dir(runs, WORLD, "supervised") / "latest.pth")
    for soft in (True, False):
        out = run_dir(runs, world, "pseudo_soft" if soft else "pseudo_hard")
        pseudo_label_command(checkpoint, cfg, soft=soft, out=str(out), progress=False)


def class_thresholds(data: Path, runs: Path, world: int, collective: bool):
    """distill.class_keep's per-class thresholds over the hard labels of ``world`` processes; collective:
    each process reads every 2nd image and the confidence histograms are all-reduced."""
    from proda.data.readers import target_reader
    from proda.data.pseudo_labels import PseudoLabelStore
    from proda.engine.pseudo_label_generation import selection_thresholds

    store = PseudoLabelStore.open(run_dir(runs, world, "pseudo_hard"), kind="hard")
    names = [s.name for s in target_reader(make_cfg("source_only", data, data / "unused"), with_labels=False).samples]
    return selection_thresholds(store, names, 0.95, 0.3, collective=collective, progress=False)


def state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def summary(trainer: Trainer, initial_cm: torch.Tensor) -> dict:
    stage = trainer.stage
    out = {"modules": {k: state(m) for k, m in stage.modules.items()}, "initial_cm": initial_cm,
           "wrapped": sorted(stage.ddp)}
    if hasattr(stage, "bank"):
        out["prototypes"] = stage.bank.prototypes.clone()
    return out


def run_job(cfg) -> tuple[Trainer, dict, dict]:
    """Train ``cfg``; returns the trainer, its initial state and the summary of the end state."""
    trainer = Trainer(cfg, build_stage, progress=False)
    initial = {k: state(m) for k, m in trainer.stage.modules.items()}
    if hasattr(trainer.stage, "bank"):
        initial["prototypes"] = trainer.stage.bank.prototypes.clone()
    cm = None
    if trainer.stage.evaluates:  # the evaluation of identical weights: the reduction alone is compared
        cm = evaluate_model(trainer.stage.modules["model"], trainer._val_reader(), trainer.device,
                            cfg.data.num_classes, progress=False).mat.clone()
    trainer.fit()
    return trainer, initial, summary(trainer, cm)


# ------------------------------------------------------------------------------------------------ worker
def _worker(rank: int, port: int, data: str, runs: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD))
    torch.set_num_threads(1)
    import torch.distributed as dist

    from proda.engine import dist as pdist

    pdist.init_from_env("cpu")  # what the Trainer would do; torchrun sets the same variables
    results = {"syncbn": _syncbn_case(rank)}
    for name, (config, extra) in jobs(Path(data), Path(runs), WORLD).items():
        _, _, results[name] = run_job(make_cfg(config, Path(data), Path(runs), *extra))
    write_pseudo_labels(Path(data), Path(runs), WORLD)
    results["class_thresholds"] = class_thresholds(Path(data), Path(runs), WORLD, collective=True)
    torch.save(results, Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


def _syncbn_input() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.randn(6, 5, 4, 3, generator=g) * 3 + 1, torch.randn(6, 5, 4, 3, generator=g)


def _syncbn_case(rank: int) -> dict:
    """proda's SyncBatchNorm on this rank's half of a batch: output, input/weight gradients, running stats."""
    from proda.engine.dist import convert_sync_batchnorm

    x, w = _syncbn_input()
    bn = convert_sync_batchnorm(torch.nn.Sequential(torch.nn.BatchNorm2d(5)))[0]
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(4))
    half = slice(rank * 3, rank * 3 + 3)
    xr = x[half].clone().requires_grad_(True)
    y = bn(xr)
    (y * w[half]).sum().backward()
    return {"type": type(bn).__name__, "y": y.detach(), "grad_x": xr.grad, "grad_w": bn.weight.grad,
            "running_mean": bn.running_mean.clone(), "running_var": bn.running_var.clone()}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Tiny source/target data, and stage 1's inputs (soft labels, prototypes) from a fresh model."""
    from proda.data.readers import target_reader
    from proda.data.pseudo_labels import PseudoLabelStore
    from proda.adapt.prototypes import compute_prototypes
    from proda.engine.pseudo_label_generation import generate_pseudo_labels, output_size
    from proda.models.build import build_model

    root = tmp_path_factory.mktemp("dist")
    write_gta5(root / "gta5", n=8, size=(48, 24), ids=IDS)
    write_cityscapes(root / "cityscapes", per_city=2, size=(48, 24), ids=IDS)
    cfg = make_cfg("source_only", root, root / "unused")
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.data.num_classes).eval()
    reader = target_reader(cfg, with_labels=False)
    art = root / "stage1_inputs"
    compute_prototypes(model, reader, torch.device("cpu"), 19, progress=False).save(art / "prototypes.pth")
    store = PseudoLabelStore.create(art / "pseudo_soft", "soft", 19, output_size(model, (48, 24), torch.device("cpu")))
    generate_pseudo_labels(model, reader, store, torch.device("cpu"), soft=True, progress=False)
    return root


@pytest.fixture(scope="module")
def two_processes(data) -> list[dict]:
    """Every job of :func:`jobs` trained by 2 gloo processes; each rank's summaries."""
    runs, out = data / "runs", data / "results"
    out.mkdir()
    ctx = mp.start_processes(_worker, args=(_free_port(), str(data), str(runs), str(out)), nprocs=WORLD,
                             join=False, start_method="spawn")
    deadline = time.monotonic() + TIMEOUT_S
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"2-process run did not finish within {TIMEOUT_S} s (deadlock?)")
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.fixture(scope="module")
def one_process(data) -> dict[str, tuple[dict, dict]]:
    """Every job of :func:`jobs` trained by one process with the combined batch: (initial state, summary)."""
    done = {}
    for name, (config, extra) in jobs(data, data / "runs", 1).items():
        _, initial, result = run_job(make_cfg(config, data, data / "runs", *extra))
        done[name] = (initial, result)
    return done


# ------------------------------------------------------------------------------------------------ helpers
def update_error(after: dict, reference: dict, before: dict) -> dict[str, float]:
    """Per tensor, ||Δ - Δref|| / max(||Δref||, 1e-3 ||Δref of all tensors||) of the change from ``before``.

    The floor keeps tensors whose gradient is mathematically zero (a bias followed by BatchNorm moves by
    weight decay and float noise only) from comparing noise with noise. Integer tensors must be equal."""
    deltas = {k: ((after[k] - b).double(), (reference[k] - b).double()) for k, b in before.items() if b.is_floating_point()}
    floor = 1e-3 * float(torch.stack([dref.norm() for _, dref in deltas.values()]).norm()) if deltas else 0.0
    errors = {k: 0.0 if torch.equal(after[k], reference[k]) else float("inf")
              for k, b in before.items() if not b.is_floating_point()}
    for k, (d, dref) in deltas.items():
        num, den = float((d - dref).norm()), max(float(dref.norm()), floor)
        errors[k] = 0.0 if num == 0 else num / den if den > 0 else float("inf")
    return errors


def assert_same_update(after: dict, reference: dict, before: dict, rtol: float = 5e-4) -> None:
    errors = update_error(after, reference, before)
    worst = max(errors, key=errors.get)
    assert errors[worst] <= rtol, f"{worst}: relative difference of the updates {errors[worst]:.2e}"
    moved = [k for k, b in before.items() if b.is_floating_point() and not torch.equal(reference[k], b)]
    assert moved, "nothing was trained: the comparison would be vacuous"


def train_losses(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if not k.startswith(("lr/", "sec_")) and k != "kind"}
            for row in read_metrics(run_dir, kind="train")]


# ------------------------------------------------------------------------------------------------ tests
def test_sync_batchnorm_on_cpu_equals_batchnorm_on_the_whole_batch(two_processes):
    """The CPU SyncBatchNorm: forward, input and weight gradients, running statistics of the full batch."""
    x, w = _syncbn_input()
    bn = torch.nn.BatchNorm2d(5)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(4))
    x = x.clone().requires_grad_(True)
    y = bn(x)
    (y * w).sum().backward()
    for rank, res in enumerate(two_processes):
        r = res["syncbn"]
        assert r["type"] == "SyncBatchNorm"
        half = slice(rank * 3, rank * 3 + 3)
        torch.testing.assert_close(r["y"], y[half].detach(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(r["grad_x"], x.grad[half], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(r["running_mean"], bn.running_mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(r["running_var"], bn.running_var, rtol=1e-5, atol=1e-6)
    # each rank's weight gradient is its own share; DDP sums (averages) them into the full-batch gradient
    total = sum(res["syncbn"]["grad_w"] for res in two_processes)
    torch.testing.assert_close(total, bn.weight.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["supervised", "supervised_accum", "warmup", "ssl", "stage1_ema_train"])
def test_two_processes_train_as_one_with_the_combined_batch(name, two_processes, one_process, data):
    """Parameters and buffers after 2 iterations (SGD with momentum: the gradients of both steps), with
    SyncBatchNorm; ``supervised_accum`` also accumulates 2 micro-batches (DDP's no_sync path); the warm-up
    checks DDP on the discriminator next to its functional call; SSL gathers embeddings across processes;
    stage 1 with its EMA in train mode (synchronised batch statistics in the teacher too)."""
    initial, reference = one_process[name]
    for res in two_processes:
        for module, before in initial.items():
            if module == "prototypes":
                assert_same_update({"p": res[name]["prototypes"]}, {"p": reference["prototypes"]}, {"p": before})
            else:
                assert_same_update(res[name]["modules"][module], reference["modules"][module], before)
        if reference["initial_cm"] is not None:
            assert torch.equal(res[name]["initial_cm"], reference["initial_cm"])
    # the processes hold bit-identical weights, and everything trained went through DDP
    a, b = (res[name]["modules"] for res in two_processes)
    assert all(torch.equal(a[m][k], b[m][k]) for m in a for k in a[m])
    expected = {"warmup": ["discriminator", "model"], "ssl": ["contrastive"]}.get(name, ["model"])
    assert two_processes[0][name]["wrapped"] == expected and reference["wrapped"] == []
    # rank 0 logged the mean over processes of each loss: what the single process logged
    w2, w1 = (train_losses(run_dir(data / "runs", w, name)) for w in (2, 1))
    assert len(w2) == len(w1) == 2
    for r2, r1 in zip(w2, w1):
        assert r2.keys() == r1.keys()
        for k in r1:
            assert r2[k] == pytest.approx(r1[k], rel=1e-4, abs=1e-6), k


def test_without_sync_bn_the_difference_is_visible(two_processes, one_process):
    """Control: with per-process BatchNorm statistics the updates differ far beyond the tolerance used
    above, so those comparisons are able to fail."""
    initial, reference = one_process["supervised_no_sync_bn"]
    errors = update_error(two_processes[0]["supervised_no_sync_bn"]["modules"]["model"],
                          reference["modules"]["model"], initial["model"])
    assert max(errors.values()) > 0.05


def test_stage1_two_processes_equal_one(two_processes, one_process, data):
    """Stage 1 (three forwards of the student per step, EMA teacher, moving prototypes, pseudo-label
    quality): student, EMA and prototype updates, the evaluation's confusion matrix, logged losses and the
    checkpoint of rank 0 match one process with the combined batch."""
    initial, reference = one_process["stage1"]
    for res in two_processes:
        r = res["stage1"]
        assert_same_update(r["modules"]["model"], reference["modules"]["model"], initial["model"])
        assert_same_update(r["modules"]["ema"], reference["modules"]["ema"], initial["ema"])
        assert_same_update({"p": r["prototypes"]}, {"p": reference["prototypes"]}, {"p": initial["prototypes"]})
        # evaluation: each process takes every 2nd image and the confusion matrices are summed
        assert r["initial_cm"].sum() > 0 and torch.equal(r["initial_cm"], reference["initial_cm"])
    assert torch.equal(two_processes[0]["stage1"]["prototypes"], two_processes[1]["stage1"]["prototypes"])
    # the checkpoint holds the bare module: the same keys as a one-process run, the trained values
    run2, run1 = (run_dir(data / "runs", w, "stage1") for w in (2, 1))
    ck2, ck1 = load_checkpoint(run2 / "latest.pth"), load_checkpoint(run1 / "latest.pth")
    assert list(ck2["model"]) == list(ck1["model"]) and not any(k.startswith("module.") for k in ck2["model"])
    assert list(ck2["modules"]["ema"]) == list(ck1["modules"]["ema"])
    for k, v in ck2["model"].items():
        assert torch.equal(v, two_processes[0]["stage1"]["modules"]["model"][k])
    res2, res1 = (json.loads((run / "result.json").read_text())["final"] for run in (run2, run1))
    assert res2["miou"] == pytest.approx(res1["miou"], abs=1e-6)
    for k in ("raw", "rectified"):
        assert res2["pseudo_label_miou"][k] == pytest.approx(res1["pseudo_label_miou"][k], abs=1e-6)
    losses2, losses1 = train_losses(run2), train_losses(run1)
    assert {"source_ce", "target_sce", "regular", "consistency"} <= losses1[0].keys()
    for r2, r1 in zip(losses2, losses1):
        for k in r1:
            assert r2[k] == pytest.approx(r1[k], rel=1e-4, abs=1e-6), k


def test_gradient_accumulation_equals_one_big_batch(data, tmp_path):
    """k=2 micro-batches of 2 == one batch of 4 (one process). BatchNorm is frozen (eval mode: running
    statistics, no affine gradient) in both runs, because batch statistics of 2 images are not those of 4;
    with per-sample normalisation every image's loss and gradient are the same in both, and the
    accumulated mean of the two micro-batch means is the mean over the 4 images (no ignored pixel)."""

    def frozen_bn(cfg, device, progress=True):
        stage = build_stage(cfg, device, progress)
        stage.modules["model"].freeze_bn(True)
        return stage

    runs = {}
    for name, extra in {"accum": ["data.batch_size=2", "optim.grad_accum=2"], "big": ["data.batch_size=4"]}.items():
        cfg = make_cfg("source_only", data, tmp_path / name, *extra)
        trainer = Trainer(cfg, stage_factory=frozen_bn, progress=False)
        before = state(trainer.stage.modules["model"])
        trainer.fit(stop_after=1)
        runs[name] = state(trainer.stage.modules["model"])
    assert_same_update(runs["accum"], runs["big"], before, rtol=1e-4)


def test_bf16_autocast_stage1_step(data, tmp_path):
    """bf16 autocast on CPU: the network runs in bf16, the losses and prototype distances are float32 and
    finite, the prototypes stay float32; a short run under run.precision=bf16 completes."""
    import proda.adapt.stage1 as stage1_module

    cfg = make_cfg("stage1", data, tmp_path / "bf16", "data.batch_size=2", "run.precision=bf16", *stage1_extra(data))
    trainer = Trainer(cfg, build_stage, progress=False)
    stage = trainer.stage
    from proda.engine.data import training_loader
    from proda.engine.trainer import _to_device

    batch = {name: _to_device(next(training_loader(ds, 2, 0)), trainer.device) for name, ds in stage.streams.items()}
    seen = []
    original = stage1_module.prototype_distances

    def recording(feat, protos, *a, **k):
        out = original(feat, protos, *a, **k)
        seen.append((feat.dtype, out.dtype))
        return out

    stage1_module.prototype_distances = recording
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert stage.model(torch.rand(1, 3, 16, 32))["out"].dtype == torch.bfloat16  # autocast is on
            losses = stage.step(batch, 0)
    finally:
        stage1_module.prototype_distances = original
    assert seen and all(out == torch.float32 for _, out in seen)
    assert {"source_ce", "target_sce", "regular", "consistency"} <= losses.keys()
    for k, v in losses.items():
        assert v.dtype == torch.float32 and torch.isfinite(v), k
    sum(losses.values()).backward()
    stage.after_step(batch, 0)
    assert stage.bank.prototypes.dtype == torch.float32 and torch.isfinite(stage.bank.prototypes).all()
    for opt in stage.optimizers.values():
        opt.zero_grad(set_to_none=True)

    result = Trainer(cfg, build_stage, progress=False).fit()
    assert result.iteration == 2
    rows = train_losses(tmp_path / "bf16")
    assert len(rows) == 2 and all(v == v and abs(v) < float("inf") for r in rows for v in r.values()
                                  if isinstance(v, float))


def test_channels_last_matches_contiguous(data, tmp_path):
    """run.channels_last: the network and the input images in channels_last; the same outputs (train and
    eval mode) and, over 2 iterations, the same training as the contiguous default, to float tolerance."""
    from proda.models.build import build_model

    cfg = make_cfg("source_only", data, tmp_path / "x")
    torch.manual_seed(0)
    net = build_model(cfg.model, 19)
    net_cl = copy.deepcopy(net).to(memory_format=torch.channels_last)
    assert net_cl.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.rand(2, 3, 24, 48)
    for mode in (True, False):
        net.train(mode), net_cl.train(mode)
        a, b = net(x), net_cl(x.contiguous(memory_format=torch.channels_last))
        for k in ("feat", "out"):
            torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5)

    runs = {}
    for name, extra in {"cl": ["run.channels_last=true"], "plain": []}.items():
        trainer = Trainer(make_cfg("source_only", data, tmp_path / name, "data.batch_size=2", *extra), build_stage, progress=False)
        model = trainer.stage.modules["model"]
        assert model.conv1.weight.is_contiguous(memory_format=torch.channels_last) == (name == "cl")
        before = state(model)
        trainer.fit()
        runs[name] = state(model)
    assert_same_update(runs["cl"], runs["plain"], before, rtol=1e-3)
    ckpt = load_checkpoint(tmp_path / "cl" / "latest.pth")
    assert list(ckpt["model"]) == list(runs["plain"])


def test_run_options_are_typed_and_default_off(data):
    cfg = make_cfg("source_only", data, data / "unused")
    assert cfg.run.sync_bn is False and cfg.run.channels_last is False
    for key in ("run.sync_bn", "run.channels_last"):
        with pytest.raises(ConfigError, match=rf"{key}: expected true or false"):
            make_cfg("source_only", data, data / "unused", f"{key}=maybe")


def test_pseudo_labels_of_two_processes_are_those_of_one(two_processes, data):
    """Each process writes every 2nd image's labels: together exactly the files one process writes."""
    runs = data / "runs"
    write_pseudo_labels(data, runs, 1)
    for kind in ("pseudo_soft", "pseudo_hard"):
        two, one = run_dir(runs, 2, kind), run_dir(runs, 1, kind)
        names = sorted(p.name for p in one.iterdir() if not p.name.startswith(".") and p.name != "meta.json")
        assert len(names) == 4  # the target training split
        assert names == sorted(p.name for p in two.iterdir() if not p.name.startswith(".") and p.name != "meta.json")
        for name in names:
            assert (two / name).read_bytes() == (one / name).read_bytes(), name


def test_class_balanced_thresholds_of_two_processes_are_those_of_one(two_processes, data):
    """Each process counts the confidences of its share of the images; the all-reduced histogram gives
    every process the thresholds one process computes over all images."""
    import numpy as np

    one = class_thresholds(data, data / "runs", WORLD, collective=False)
    assert np.ndim(one) == 1 and len(one) == 19 and (one < 0.95).any()  # some class kept by its share
    for rank in range(WORLD):
        np.testing.assert_array_equal(two_processes[rank]["class_thresholds"], one)
