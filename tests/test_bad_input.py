"""Bad input, one case per fault: every one ends in a clear, one-line error that names the file or key and
the problem, a non-zero exit (2 for errors, 1 for `proda data check` finding problems) and no traceback.

Data faults are found twice: by the sampled pre-flight check when `proda train` starts (before any
training: no checkpoint is written) and by `proda data check` (every file). The CLI is run in-process
(``proda.cli.main``, as tests/test_cli.py does); two cases also run as real ``python -m proda`` processes.
"""
from __future__ import annotations

import collections
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fixtures import (
    cityscapes_paths,
    truncate,
    write_cityscapes,
    write_cityscapes_label,
    write_gta5,
    write_gta5_label,
    write_image,
    write_synthia,
    write_synthia_label,
)
from proda.cli import main

REPO = Path(__file__).parents[1]
CONFIG = REPO / "proda" / "configs" / "synthetic" / "source_only.yaml"
IDS = [7, 8, 11, 21, 23, 26, 0]
SIZE = (48, 24)
TINY = ["data.crop_size=[32,16]", "data.batch_size=2", "model.width=8", "model.head_mid=16",
        "optim.iterations=1", "run.eval_every=1", "run.tensorboard=false"]


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    """Tiny GTA5, SYNTHIA and Cityscapes folders and a 1-iteration checkpoint (19 classes, depth 18, width 8)."""
    root = tmp_path_factory.mktemp("clean")
    write_gta5(root / "gta5", n=4, size=SIZE, ids=IDS)
    write_synthia(root / "synthia", n=3, size=SIZE)
    write_cityscapes(root / "cityscapes", per_city=1, size=SIZE, ids=IDS)
    assert main(["train", str(CONFIG), *roots(root), f"run.out_dir={root / 'run'}", *TINY, "--no-progress"]) == 0
    return root


@pytest.fixture
def data(clean, tmp_path) -> Path:
    """A private copy of the clean data, free to break."""
    shutil.copytree(clean, tmp_path / "data", ignore=shutil.ignore_patterns("run"))
    return tmp_path / "data"


def roots(data: Path, source: str = "gta5") -> list[str]:
    extra = ["data.source=synthia", "data.num_classes=16"] if source == "synthia" else []
    return [f"data.source_root={data / source}", f"data.target_root={data / 'cityscapes'}", *extra]


def cli(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error(code: int, err: str, *patterns: str) -> None:
    """Exit 2, one 'proda ...: error:' message, no traceback, and every pattern in it."""
    assert code == 2, err
    assert "Traceback" not in err
    assert len(re.findall(r"^proda [\w-]+: error: ", err, re.M)) == 1, err
    for pattern in patterns:
        assert re.search(pattern, err), f"{pattern!r} not in {err!r}"


def train(data: Path, tmp_path: Path, capsys, *extra: str, source: str = "gta5") -> tuple[int, str]:
    run = tmp_path / "run"
    code, _, err = cli(["train", str(CONFIG), *roots(data, source), f"run.out_dir={run}", *TINY, *extra,
                        "--no-progress"], capsys)
    assert not (run / "latest.pth").exists(), "nothing may be trained on bad input"
    return code, err


# ----------------------------------------------------------------------------------------------- data
def _rgb_label(path: Path) -> None:
    with Image.open(path) as image:
        image.convert("RGB").save(path)


def _grey_label(path: Path) -> None:
    with Image.open(path) as image:
        image.convert("L").save(path)


def _set_value(dataset: str, value: int):
    def corrupt(data: Path) -> Path:
        if dataset == "gta5":
            path = data / "gta5" / "labels" / "00002.png"
            with Image.open(path) as image:
                raw = np.array(image)
            raw[0, :3] = value
            write_gta5_label(path, raw)
        elif dataset == "synthia":
            path = data / "synthia" / "GT" / "LABELS" / "0000001.png"
            raw = np.full((SIZE[1], SIZE[0]), 3, np.uint8)
            raw[0, :3] = value
            write_synthia_label(path, raw)
        else:
            path = _val_label(data)
            raw = np.array(Image.open(path))
            raw[0, :3] = value
            write_cityscapes_label(path, raw)
        return path
    return corrupt


def _val_label(data: Path) -> Path:
    return cityscapes_paths(data / "cityscapes", "val", "frankfurt_000000_000019_leftImg8bit")[1]


def _val_image(data: Path) -> Path:
    return cityscapes_paths(data / "cityscapes", "val", "frankfurt_000000_000019_leftImg8bit")[0]


def _do(fn, path_of):
    def corrupt(data: Path) -> Path:
        path = path_of(data)
        fn(path)
        return path
    return corrupt


def _empty_gta5(data: Path) -> Path:
    for sub in ("images", "labels"):
        for path in (data / "gta5" / sub).iterdir():
            path.unlink()
    return data / "gta5"


def _empty_val(data: Path) -> Path:
    for sub in ("leftImg8bit", "gtFine"):
        shutil.rmtree(data / "cityscapes" / sub / "val")
        (data / "cityscapes" / sub / "val").mkdir()
    return data / "cityscapes"


def _size_mismatch(data: Path) -> Path:
    path = data / "gta5" / "labels" / "00003.png"
    with Image.open(path) as image:
        raw = np.array(image)
    write_gta5_label(path, raw[:, :20])
    return path


def _synthia_8bit(data: Path) -> Path:
    path = data / "synthia" / "GT" / "LABELS" / "0000002.png"
    write_image(path, np.full((SIZE[1], SIZE[0], 3), 3, np.uint8))  # the same ids, saved as 8-bit RGB
    return path


def _cityscapes_16bit(data: Path) -> Path:
    path = _val_label(data)
    write_image(path, np.array(Image.open(path)).astype(np.uint16))
    return path


def _rm(path: Path) -> None:
    path.unlink()


def _zero_bytes(path: Path) -> None:
    path.write_bytes(b"")


def _garbage(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())


G_IMG = lambda n: lambda d: d / "gta5" / "images" / f"{n:05d}.png"  # noqa: E731
G_LAB = lambda n: lambda d: d / "gta5" / "labels" / f"{n:05d}.png"  # noqa: E731

# id, corruption (returns the path the message must name), source, (dataset, split) that `data check`
# runs on, message pattern
DATA_FAULTS = [
    ("missing dataset folder", lambda d: (shutil.rmtree(d / "gta5"), d / "gta5")[1], "gta5", ("gta5", None),
     r"GTA5 root folder not found"),
    ("missing labels folder", lambda d: (shutil.rmtree(d / "gta5" / "labels"), d / "gta5" / "labels")[1], "gta5",
     ("gta5", None), r"GTA5 labels folder not found"),
    ("empty dataset folder", _empty_gta5, "gta5", ("gta5", None),
     r"no GTA5 samples found \(expected images/\*\.png with labels/\*\.png\)"),
    ("empty cityscapes split", _empty_val, "gta5", ("cityscapes", "val"),
     r"no Cityscapes samples found \(expected leftImg8bit/val/"),
    ("image without label", _do(_rm, G_LAB(2)), "gta5", ("gta5", None), r"images/00002\.png: no label"),
    ("label without image", _do(_rm, G_IMG(3)), "gta5", ("gta5", None), r"label without an image"),
    ("truncated image", _do(truncate, G_IMG(1)), "gta5", ("gta5", None), r"not a readable image \(corrupt or truncated\?\)"),
    ("truncated label", _do(truncate, G_LAB(4)), "gta5", ("gta5", None), r"not a readable label image"),
    ("empty image file", _do(_zero_bytes, G_IMG(2)), "gta5", ("gta5", None), r"file is empty"),
    ("garbage label file", _do(_garbage, G_LAB(1)), "gta5", ("gta5", None), r"not a readable label image"),
    ("truncated val image", _do(truncate, _val_image), "gta5", ("cityscapes", "val"), r"not a readable image"),
    ("truncated val label", _do(truncate, _val_label), "gta5", ("cityscapes", "val"), r"not a readable label image"),
    ("gta5 label as RGB", _do(_rgb_label, G_LAB(2)), "gta5", ("gta5", None),
     r"\(mode L or P\), got mode RGB \(an RGB-converted label\? its class ids are lost\)"),
    # a luminance-converted palette label: grey (mode L) labels are read, so its values, not ids, are refused
    ("gta5 label as grey", _do(_grey_label, G_LAB(3)), "gta5", ("gta5", None),
     r"labels/00003\.png: unknown label values \[[\d, ]+\] \(\d+ pixels\); valid raw values are 0\.\.34 \(a label converted to grey"),
    ("synthia label as 8-bit", _synthia_8bit, "synthia", ("synthia", None),
     r"SYNTHIA labels are 16-bit PNGs, got uint8 \(converted to 8-bit\?\)"),
    ("cityscapes label as 16-bit", _cityscapes_16bit, "gta5", ("cityscapes", "val"),
     r"8-bit single-channel PNG \(mode L or P\), got mode I;16"),
    ("cityscapes label as RGB", _do(_rgb_label, _val_label), "gta5", ("cityscapes", "val"), r"got mode RGB"),
    ("gta5 label value 40", _set_value("gta5", 40), "gta5", ("gta5", None),
     r"unknown label values \[40\] \(3 pixels\); valid raw values are 0\.\.34"),
    ("cityscapes label value 34", _set_value("cityscapes", 34), "gta5", ("cityscapes", "val"),
     r"unknown label values \[34\] \(3 pixels\); valid raw values are 0\.\.33"),
    ("synthia label value 23", _set_value("synthia", 23), "synthia", ("synthia", None),
     r"unknown label values \[23\] \(3 pixels\); valid raw values are 0\.\.22"),
    ("image/label size mismatch", _size_mismatch, "gta5", ("gta5", None),
     r"size mismatch: image \S+/images/00003\.png is 48x24, label \S+/labels/00003\.png is 20x24"),
]


@pytest.mark.parametrize("corrupt, source, checked, message", [f[1:] for f in DATA_FAULTS],
                         ids=[f[0] for f in DATA_FAULTS])
def test_data_fault_stops_train_at_start_and_data_check_reports_it(data, tmp_path, capsys, corrupt, source, checked,
                                                                   message):
    path = corrupt(data)
    code, err = train(data, tmp_path, capsys, source=source)
    assert_one_error(code, err, re.escape(str(path)), message)

    name, split = checked
    root = data / ("cityscapes" if name == "cityscapes" else source)
    argv = ["data", "check", "--dataset", name, str(root)] + (["--split", split] if split else [])
    code, out, err = cli(argv, capsys)
    assert code == 1 and "Traceback" not in err
    assert re.search(re.escape(str(path)) + r".*" + message, out) or (
        str(path) in out and re.search(message, out)), out


def test_preflight_says_how_many_files_it_sampled(data, tmp_path, capsys):
    truncate(data / "gta5" / "images" / "00001.png")
    code, err = train(data, tmp_path, capsys, "data.preflight_samples=3")
    assert_one_error(code, err, r"source training data: 1 problem\(s\) in 3 sampled files \(run `proda data check`")


def test_sampled_preflight_can_miss_a_file_that_data_check_finds(data, tmp_path, capsys):
    """The pre-flight check is a sample (evenly spaced); `proda data check` reads everything."""
    from proda.data.check import preflight
    from proda.data.registry import build_dataset

    truncate(data / "gta5" / "images" / "00002.png")
    preflight(build_dataset("gta5", data / "gta5"), 2, "source training data")  # samples 00001 and 00004 only
    code, out, err = cli(["data", "check", "--dataset", "gta5", str(data / "gta5")], capsys)
    assert code == 1 and "00002.png: not a readable image" in out


# --------------------------------------------------------------------------------------------- config
CONFIG_FAULTS = [
    ("unknown section", ["tarin.iterations=5"], r"unknown key tarin; valid keys in config: "),
    ("mistyped key", ["data.crop_szie=[32,16]"], r"unknown key data\.crop_szie; .*did you mean data\.crop_size\?"),
    ("key in the wrong section", ["optim.batch_size=2"], r"unknown key optim\.batch_size; .*did you mean data\.batch_size\?"),
    ("mistyped value", ["data.batch_size=two"], r"data\.batch_size: expected an integer, got 'two'"),
    ("batch 0", ["data.batch_size=0"], r"data\.batch_size: must be at least 1, got 0"),
    ("distill threshold above 1", ["distill.threshold=1.5"], r"distill\.threshold: must be in \[0, 1\], got 1\.5"),
    ("stage1 threshold below 0", ["stage1.pseudo_threshold=-0.1"],
     r"stage1\.pseudo_threshold: must be in \[0, 1\], got -0\.1"),
    ("crop larger than the configured image size", ["data.source_size=[48,24]", "data.crop_size=[96,48]"],
     r"data\.crop_size: \[96, 48\] is larger than the smallest rescaled source image \(36x18 at scale 0\.75\)"),
    ("crop larger than the images on disk", ["data.crop_size=[96,48]"],
     r"data\.crop_size: \[96, 48\] is larger than the smallest rescaled image of the source training data "
     r"\(36x18 at scale 0\.75; \S+/gta5/images/00001\.png is 48x24\)"),
    ("crop larger than the rescaled images", ["data.crop_size=[40,16]", "data.resize_width=50"],
     r"data\.crop_size: \[40, 16\] is larger than .*\(37x18 at scale 0\.75"),
]


@pytest.mark.parametrize("overrides, message", [f[1:] for f in CONFIG_FAULTS], ids=[f[0] for f in CONFIG_FAULTS])
def test_config_fault_is_named(clean, tmp_path, capsys, overrides, message):
    code, err = train(clean, tmp_path, capsys, *overrides)
    assert_one_error(code, err, message)


def test_unknown_key_in_a_config_file(clean, tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(f"_base_: {CONFIG}\noptim:\n  lrr: 0.1\n")
    code, _, err = cli(["train", str(cfg), *roots(clean), *TINY], capsys)
    assert_one_error(code, err, r"unknown key optim\.lrr; valid keys in optim: .*did you mean optim\.lr\?")
    code, _, err = cli(["train", str(tmp_path / "missing.yaml")], capsys)
    assert_one_error(code, err, r"missing\.yaml: config file not found")
    cfg.write_text("optim: [unclosed\n")
    code, _, err = cli(["train", str(cfg)], capsys)
    assert_one_error(code, err, r"bad\.yaml: not valid YAML")


def test_cuda_on_a_cpu_machine(clean, tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, err = train(clean, tmp_path, capsys, "run.device=cuda")
    assert_one_error(code, err, r"run\.device: 'cuda' requested but CUDA is not available on this machine")
    code, _, err = cli(["evaluate", "--checkpoint", str(clean / "run" / "latest.pth"), "--dataset", "cityscapes",
                        str(clean / "cityscapes"), "--device", "cuda"], capsys)
    assert_one_error(code, err, r"'cuda' requested but CUDA is not available")


# ----------------------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("override, hint", [
    ("model.width=16", r"shape mismatches .*conv1\.weight \(8, 3, 7, 7\) != \(16, 3, 7, 7\).*set model\.width=8"),
    ("model.depth=34", r"missing keys .*set model\.depth=18"),
    ("data.num_classes=16", r"layer5\.head\.1\.weight \(19, 16, 1, 1\) != \(16, 16, 1, 1\).*set data\.num_classes=19"),
    ("model.head_mid=32", r"set model\.head_mid=16"),
], ids=["width", "depth", "classes", "head_mid"])
def test_model_init_of_another_architecture(clean, tmp_path, capsys, override, hint):
    ckpt = clean / "run" / "latest.pth"
    code, err = train(clean, tmp_path, capsys, f"model.init={ckpt}", override)
    assert_one_error(code, err, re.escape(str(ckpt)) + r": does not fit the model: ", hint)


def test_model_init_missing_or_torn(clean, tmp_path, capsys):
    code, err = train(clean, tmp_path, capsys, f"model.init={tmp_path / 'nope.pth'}")
    assert_one_error(code, err, r"nope\.pth: checkpoint not found")
    torn = tmp_path / "torn.pth"
    torn.write_bytes((clean / "run" / "latest.pth").read_bytes()[:5000])
    code, err = train(clean, tmp_path, capsys, f"model.init={torn}")
    assert_one_error(code, err, r"torn\.pth: checkpoint is corrupt or truncated \(checksum mismatch\)")


def test_evaluate_with_another_class_count_or_a_foreign_file(clean, tmp_path, capsys):
    import torch

    ckpt = clean / "run" / "latest.pth"
    base = ["--dataset", "cityscapes", str(clean / "cityscapes"), "--split", "val"]
    code, _, err = cli(["evaluate", "--checkpoint", str(ckpt), *base, "--num-classes", "16"], capsys)
    assert_one_error(code, err, re.escape(str(ckpt)) + r": a 19-class model cannot be scored as 16 classes")
    foreign = tmp_path / "resnet.pth"  # a bare backbone state dict, as torchvision saves it
    torch.save({"conv1.weight": torch.zeros(8, 3, 7, 7)}, foreign)
    code, _, err = cli(["evaluate", "--checkpoint", str(foreign), *base], capsys)
    assert_one_error(code, err, r"resnet\.pth: not a proda checkpoint .*proda convert")
    torn = tmp_path / "torn.pth"
    torn.write_bytes(ckpt.read_bytes()[:-10])
    code, _, err = cli(["evaluate", "--checkpoint", str(torn), *base], capsys)
    assert_one_error(code, err, r"torn\.pth: checkpoint is corrupt or truncated")


def test_pseudo_labels_with_another_class_count(clean, tmp_path, capsys):
    ckpt = clean / "run" / "latest.pth"
    code, _, err = cli(["pseudo-label", "--checkpoint", str(ckpt), "--config", str(CONFIG), *roots(clean),
                        "data.num_classes=16", "--out", str(tmp_path / "pl"), "--no-progress"], capsys)
    assert_one_error(code, err, re.escape(str(ckpt)) + r": a 19-class model, but the config says data\.num_classes=16")


# ------------------------------------------------------------------------------------------ disk space
def test_pseudo_labels_refuse_to_start_without_disk_space(clean, tmp_path, capsys, monkeypatch):
    import proda.engine.pseudo_label_generation as pl

    usage = collections.namedtuple("usage", "total used free")
    seen = {}

    def disk_usage(path):
        seen["path"] = Path(path)
        return usage(10**9, 10**9 - 1500, 1500)

    monkeypatch.setattr(pl.shutil, "disk_usage", disk_usage)
    out = tmp_path / "pseudo"
    code, _, err = cli(["pseudo-label", "--soft", "--checkpoint", str(clean / "run" / "latest.pth"),
                        "--config", str(CONFIG), *roots(clean), "--out", str(out), "--no-progress"], capsys)
    assert_one_error(code, err, re.escape(str(out)) + r": pseudo labels need about \d+(\.\d)? (KiB|MiB), "
                     r"only 1\.5 KiB free on that disk")
    assert seen["path"] == out
    assert sorted(p.name for p in out.iterdir()) == ["meta.json"]  # no pseudo label generated
    assert pl.format_bytes(0) == "0 B" and pl.format_bytes(1536) == "1.5 KiB" and pl.format_bytes(3 * 2**40) == "3.0 TiB"


# ------------------------------------------------------------------------------- real processes
@pytest.mark.parametrize("fault", ["truncated image", "unknown key"])
def test_real_process_prints_one_line_and_exits_2(data, tmp_path, fault):
    extra = []
    if fault == "truncated image":
        truncate(data / "gta5" / "images" / "00001.png")
    else:
        extra = ["optim.lrr=1"]
    cmd = [sys.executable, "-m", "proda", "train", str(CONFIG), *roots(data), f"run.out_dir={tmp_path / 'run'}",
           *TINY, *extra, "--no-progress"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("proda train: error:")]
    assert len(lines) == 1, proc.stderr
    assert ("00001.png" in proc.stderr) if fault == "truncated image" else ("optim.lrr" in lines[0])
