"""The training loop: determinism, exact resume, checkpoints, metrics files, non-finite losses."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fixtures import write_cityscapes, write_gta5
from proda.config import load_config
from proda.checkpoint_io import load_checkpoint
from proda.adapt.registry import train
from proda.engine.trainer import Trainer
from proda.adapt.registry import build_stage
from proda.errors import ProdaError

CONFIG = Path(__file__).parents[2] / "proda" / "configs" / "synthetic" / "source_only.yaml"


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    write_gta5(root / "gta5", n=6, size=(48, 24), ids=[7, 8, 11, 21, 23, 26, 0])
    write_cityscapes(root / "cityscapes", per_city=2, size=(48, 24), ids=[7, 8, 11, 21, 23, 26, 0])
    return root


def tiny_config(data: Path, out: Path, *extra: str):
    return load_config(CONFIG, [
        f"data.source_root={data / 'gta5'}", f"data.target_root={data / 'cityscapes'}",
        f"run.out_dir={out}", "data.crop_size=[32,16]", "data.batch_size=2", "model.width=8",
        "model.head_mid=16", "optim.iterations=6", "run.eval_every=3", "run.checkpoint_every=2",
        "run.tensorboard=false", "run.log_every=1", *extra,
    ])


def params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_resume_continues_exactly(tiny_data, tmp_path):
    straight = Trainer(tiny_config(tiny_data, tmp_path / "a"), build_stage, progress=False)
    straight.fit()
    first = Trainer(tiny_config(tiny_data, tmp_path / "b"), build_stage, progress=False)
    assert first.fit(stop_after=3).iteration == 3
    second = Trainer(tiny_config(tiny_data, tmp_path / "b"), build_stage, progress=False)  # a new process would do this
    assert second.fit().iteration == 6
    a, b = params(straight.stage.model), params(second.stage.model)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    opt_a = straight.stage.optimizers["model"].state_dict()["state"]
    opt_b = second.stage.optimizers["model"].state_dict()["state"]
    for k in opt_a:
        assert torch.equal(opt_a[k]["momentum_buffer"], opt_b[k]["momentum_buffer"])
    # the metrics file tells one history: every training iteration once
    rows = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]


def test_same_seed_same_result_and_seed_matters(tiny_data, tmp_path):
    a = Trainer(tiny_config(tiny_data, tmp_path / "a", "optim.iterations=2"), build_stage, progress=False)
    a.fit()
    b = Trainer(tiny_config(tiny_data, tmp_path / "b", "optim.iterations=2"), build_stage, progress=False)
    b.fit()
    c = Trainer(tiny_config(tiny_data, tmp_path / "c", "optim.iterations=2", "run.seed=7"), build_stage, progress=False)
    c.fit()
    pa, pb, pc = params(a.stage.model), params(b.stage.model), params(c.stage.model)
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert not all(torch.equal(pa[k], pc[k]) for k in pa)


def test_run_folder_contents(tiny_data, tmp_path):
    result = train(tiny_config(tiny_data, tmp_path / "run"), progress=False)
    run = tmp_path / "run"
    assert {"latest.pth", "best.pth", "config.yaml", "metrics.jsonl", "result.json"} <= {p.name for p in run.iterdir()}
    assert sorted(p.name for p in run.glob("iter_*.pth")) == ["iter_0000006.pth"]  # keep_last: 1
    ckpt = load_checkpoint(run / "latest.pth")
    assert {"model", "optimizer", "iteration", "rng", "config", "meta"} <= set(ckpt)
    assert ckpt["iteration"] == 6
    assert ckpt["meta"]["class_names"][10] == "sky"
    assert load_config(run / "config.yaml").optim.iterations == 6  # the resolved config reloads
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    vals = [r for r in rows if r["kind"] == "val"]
    assert [r["iteration"] for r in vals] == [3, 6]
    assert vals[-1]["miou"] == pytest.approx(result.final["miou"])
    # a finished run started again does nothing and reports the same result
    again = train(tiny_config(tiny_data, tmp_path / "run"), progress=False)
    assert again.iteration == 6 and again.final == result.final


def test_corrupt_latest_checkpoint_is_named(tiny_data, tmp_path):
    train(tiny_config(tiny_data, tmp_path / "run", "optim.iterations=2"), progress=False)
    latest = tmp_path / "run" / "latest.pth"
    data = latest.read_bytes()
    latest.write_bytes(data[: len(data) // 2])
    with pytest.raises(ProdaError, match="latest.pth.*corrupt or truncated"):
        train(tiny_config(tiny_data, tmp_path / "run", "optim.iterations=4"), progress=False)


def test_nonfinite_losses_skip_steps_then_stop(tiny_data, tmp_path):
    cfg = tiny_config(tiny_data, tmp_path / "run", "run.max_nonfinite_steps=2")
    trainer = Trainer(cfg, build_stage, progress=False)
    before = params(trainer.stage.model)

    def nan_step(batch, iteration):
        return {"source_ce": torch.tensor(float("nan"), requires_grad=True)}

    trainer.stage.step = nan_step
    with pytest.raises(ProdaError, match="2 consecutive non-finite losses.*source_ce"):
        trainer.fit()
    after = params(trainer.stage.model)
    assert all(torch.equal(before[k], after[k]) for k in before)  # skipped steps changed nothing


def test_preflight_names_a_broken_file_before_training(tiny_data, tmp_path):
    import shutil

    from fixtures import truncate

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    truncate(data / "gta5" / "labels" / "00001.png")
    # the preflight names it, or (class-aware sampling on, as in the synthetic configs) counting the class
    # statistics does, when the stage is built: either way before any training, naming the file
    with pytest.raises(ProdaError, match=r"(?s)(source training data: 1 problem.*)?00001\.png.*"):
        train(tiny_config(data, tmp_path / "run"), progress=False)
    assert not (tmp_path / "run" / "latest.pth").exists()


def test_content_digest_of_checkpoints_and_other_files(tmp_path):
    """The digest a proda checkpoint records in its header (no loading), the file's SHA-256 otherwise."""
    import hashlib
    import shutil

    from proda.checkpoint_io import content_digest, save_checkpoint

    save_checkpoint(tmp_path / "a.pth", {"w": torch.arange(4)})
    payload = (tmp_path / "a.pth").read_bytes().split(b"\n", 2)[2]
    assert content_digest(tmp_path / "a.pth") == hashlib.sha256(payload).hexdigest()
    shutil.copyfile(tmp_path / "a.pth", tmp_path / "b.pth")
    assert content_digest(tmp_path / "b.pth") == content_digest(tmp_path / "a.pth")
    save_checkpoint(tmp_path / "a.pth", {"w": torch.arange(5)})
    assert content_digest(tmp_path / "a.pth") != content_digest(tmp_path / "b.pth")
    (tmp_path / "meta.json").write_bytes(b"x" * (3 << 20))
    assert content_digest(tmp_path / "meta.json") == hashlib.sha256(b"x" * (3 << 20)).hexdigest()
