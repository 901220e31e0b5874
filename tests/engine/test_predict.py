"""`proda predict` and the inference modes behind it: formats, naming, scoring round trip, TTA geometry, errors."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from proda.config import load_config
from proda.data import labels
from proda.data.transforms import image_to_tensor
from proda.checkpoint_io import save_checkpoint
from proda.engine.score_predictions import score_prediction_folder
from proda.engine.inference import (evaluate_model, infer_probabilities, predict_logits, resolve_sizes,
                                    window_starts)
from proda.engine.predict import output_name, predict_command, predict_paths
from proda.models.meta import model_meta
from proda.errors import ConfigError, DataError
from proda.io import read_label_ids, read_rgb, write_png
from proda.models.deeplab import DeepLabV2

FRAMES = [("frankfurt", "000000", "000294"), ("frankfurt", "000001", "000538"), ("lindau", "000002", "000019")]
PALETTE = {tuple(c) for c in labels.palette(19).tolist()}
SKY = (70, 130, 180)


def tiny_net(seed: int = 0) -> DeepLabV2:
    """The smallest real network, with head weights scaled up so argmax varies over the image."""
    torch.manual_seed(seed)
    net = DeepLabV2(19, depth=18, width=8, head_mid=16)
    with torch.no_grad():
        net.layer5.head[1].weight.normal_(0.0, 1.0)
    return net.eval()


def write_ckpt(path: Path, net: DeepLabV2) -> Path:
    cfg = load_config(None, ["data.source_root=x", "data.target_root=y", "model.depth=18", "model.width=8",
                             "model.head_mid=16"])
    save_checkpoint(path, {"format": "proda", "stage": "supervised", "iteration": 0,
                           "model": net.state_dict(), "meta": model_meta(cfg)})
    return path


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny convolutions are ~100x slower with 2 intra-op threads on shared, busy cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return write_ckpt(tmp_path_factory.mktemp("ckpt") / "tiny.pth", tiny_net())


def image(seed: int, size=(40, 24)) -> np.ndarray:
    """HxWx3 uint8 with structure (gradients + noise), so a random net does not predict one class."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) * 127 // (w + h)], -1)
    return np.clip(base + rng.integers(-40, 40, (h, w, 3)), 0, 255).astype(np.uint8)


def write_cityscapes_images(root: Path) -> list[Path]:
    """leftImg8bit/val/<city>/<city>_<seq>_<frame>_leftImg8bit.png; the last one has another size."""
    paths = []
    for i, (city, seq, frame) in enumerate(FRAMES):
        path = root / "leftImg8bit" / "val" / city / f"{city}_{seq}_{frame}_leftImg8bit.png"
        write_png(path, image(i, (40, 24) if i < 2 else (32, 16)))
        paths.append(path)
    return paths


# --------------------------------------------------------------------------- predict: outputs and naming


def test_every_format_folder_layout_and_round_trip(ckpt: Path, tmp_path: Path) -> None:
    images = write_cityscapes_images(tmp_path / "cs")
    out = tmp_path / "out"
    written = predict_paths(ckpt, [tmp_path / "cs" / "leftImg8bit" / "val"], out,
                            formats=("color", "overlay", "trainid", "labelid"), progress=False)
    assert len(written) == 4 * len(images) and all(p.is_file() for p in written)
    lut = labels.cityscapes_lut(19)
    colors_seen = set()
    for (city, seq, frame), src in zip(FRAMES, images):
        stem = src.stem
        # both id formats requested: one subfolder per format, the city folder kept below it
        files = {f: out / f / city / output_name(stem, f) for f in ("color", "overlay", "trainid", "labelid")}
        assert files["labelid"].name == f"{city}_{seq}_{frame}_pred_labelIds.png"
        assert files["trainid"].name == f"{stem}_trainid.png"
        with Image.open(files["labelid"]) as im:
            assert im.mode == "L"  # single-channel 8-bit, as the test server expects
        train = read_label_ids(files["trainid"])
        label_ids = read_label_ids(files["labelid"])
        rgb = read_rgb(src)
        assert train.shape == label_ids.shape == rgb.shape[:2]
        assert train.max() < 19
        np.testing.assert_array_equal(lut[label_ids], train)  # label ids map back to the same trainIds
        color = read_rgb(files["color"])
        np.testing.assert_array_equal(color, labels.colorize(train, 19))
        colors_seen |= {tuple(c) for c in color.reshape(-1, 3).tolist()}
        overlay = read_rgb(files["overlay"])
        assert overlay.shape == rgb.shape
        np.testing.assert_array_equal(overlay, ((rgb.astype(int) + color + 1) // 2).astype(np.uint8))
    assert colors_seen <= PALETTE and len(colors_seen) > 1


def test_sky_model_writes_official_colour_and_label_id(tmp_path: Path) -> None:
    net = tiny_net()
    with torch.no_grad():  # constant features (GN weight 0, bias 1) and a classifier that only sees sky
        net.layer5.bottleneck[2].weight.zero_()
        net.layer5.bottleneck[2].bias.fill_(1.0)
        net.layer5.head[1].weight.zero_()
        net.layer5.head[1].weight[10] = 1.0
    ckpt = write_ckpt(tmp_path / "sky.pth", net)
    (tmp_path / "in" / "sub").mkdir(parents=True)
    (tmp_path / "in" / "sub" / "street.jpg").write_bytes(cv2.imencode(".jpg", image(0))[1].tobytes())
    out = tmp_path / "out"
    paths = predict_paths(ckpt, [str(tmp_path / "in" / "**" / "*.jpg")], out, formats=("color", "labelid"),
                          progress=False)
    assert paths == [out / "street_color.png", out / "street_labelIds.png"]  # a glob match is written flat
    assert {tuple(c) for c in read_rgb(paths[0]).reshape(-1, 3).tolist()} == {SKY}
    assert set(np.unique(read_label_ids(paths[1])).tolist()) == {23}  # Cityscapes label id of sky


def test_labelid_folder_scores_100_with_visualisations_beside(ckpt: Path, tmp_path: Path) -> None:
    write_cityscapes_images(tmp_path / "cs")
    out = tmp_path / "pred"
    predict_paths(ckpt, [tmp_path / "cs" / "leftImg8bit" / "val"], out, formats=("labelid", "color", "overlay"),
                  progress=False)
    for city, seq, frame in FRAMES:  # ground truth = the predictions themselves
        pred = read_label_ids(out / city / f"{city}_{seq}_{frame}_pred_labelIds.png")
        write_png(tmp_path / "cs" / "gtFine" / "val" / city / f"{city}_{seq}_{frame}_gtFine_labelIds.png", pred)
    result = score_prediction_folder(out, tmp_path / "cs", "val", 19, progress=False, pred_format="labelid")
    assert result["num_images"] == len(FRAMES)
    assert result["miou"] == pytest.approx(100.0)
    auto = score_prediction_folder(out, tmp_path / "cs", "val", 19, progress=False)
    assert auto["pred_format"] == "labelid" and auto["miou"] == pytest.approx(100.0)


def test_batches_mixed_sizes_like_single_images(ckpt: Path, tmp_path: Path) -> None:
    write_cityscapes_images(tmp_path / "cs")
    src = tmp_path / "cs" / "leftImg8bit"
    one = predict_paths(ckpt, [src], tmp_path / "b1", formats=("trainid",), progress=False)
    three = predict_paths(ckpt, [src], tmp_path / "b3", formats=("trainid",), batch_size=3, progress=False)
    assert [p.relative_to(tmp_path / "b1") for p in one] == [p.relative_to(tmp_path / "b3") for p in three]
    for a, b in zip(one, three):
        np.testing.assert_array_equal(read_label_ids(a), read_label_ids(b))


def test_predict_command_parses_options(ckpt: Path, tmp_path: Path, capsys) -> None:
    write_png(tmp_path / "a.png", image(3, (24, 16)))
    status = predict_command(str(ckpt), [str(tmp_path / "a.png")], str(tmp_path / "o"), formats="color,trainid",
                             scales="0.75,1", flip=True, input_size=(32, 24), progress=False)
    assert status == 0
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["a_color.png", "a_trainid.png"]
    assert read_label_ids(tmp_path / "o" / "a_trainid.png").shape == (16, 24)  # the image's size, not input's
    assert "wrote 2 files" in capsys.readouterr().err
    status = predict_command(str(ckpt), [str(tmp_path / "a.png")], str(tmp_path / "s"), formats="trainid",
                             mode="slide", crop_size=(16, 16), progress=False)
    assert status == 0 and (tmp_path / "s" / "a_trainid.png").is_file()


# --------------------------------------------------------------------------- predict: errors


def test_errors_name_the_file_or_pattern(ckpt: Path, tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    write_png(folder / "good.png", image(0))
    (folder / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError, match="broken.png"):
        predict_paths(ckpt, [folder], tmp_path / "o1", progress=False)
    with pytest.raises(DataError, match=r"nothing/\*\.png"):
        predict_paths(ckpt, [str(folder / "good.png"), str(tmp_path / "nothing" / "*.png")], tmp_path / "o2",
                      progress=False)
    (tmp_path / "other").mkdir()
    write_png(tmp_path / "other" / "good.png", image(1))
    with pytest.raises(DataError, match="would both be written"):
        predict_paths(ckpt, [str(folder / "good.png"), str(tmp_path / "other" / "good.png")], tmp_path / "o3",
                      progress=False)
    with pytest.raises(ConfigError, match="formats"):
        predict_paths(ckpt, [str(folder / "good.png")], tmp_path / "o4", formats=("colour",), progress=False)
    with pytest.raises(ConfigError, match="window size"):  # slide without crop size; checkpoint has no size
        predict_paths(ckpt, [str(folder / "good.png")], tmp_path / "o5", mode="slide", progress=False)
    with pytest.raises(ConfigError, match="scales"):
        predict_command(str(ckpt), [str(folder / "good.png")], str(tmp_path / "o6"), scales="1,big")
    with pytest.raises(ConfigError, match="scales"):
        predict_paths(ckpt, [str(folder / "good.png")], tmp_path / "o7", scales=(1.0, 0.0), progress=False)
    with pytest.raises(ConfigError, match="mode"):
        predict_paths(ckpt, [str(folder / "good.png")], tmp_path / "o8", mode="tiles", progress=False)
    assert not any((tmp_path / f"o{i}").exists() for i in range(2, 9))  # nothing written before failing


def test_output_folder_inside_input_folder_is_not_searched(ckpt: Path, tmp_path: Path) -> None:
    write_png(tmp_path / "a.png", image(0, (16, 16)))
    predict_paths(ckpt, [tmp_path], tmp_path / "out", progress=False)
    again = predict_paths(ckpt, [tmp_path], tmp_path / "out", progress=False)
    assert [p.name for p in again] == ["a_color.png"]


# --------------------------------------------------------------------------- inference modes


class PixelModel(torch.nn.Module):
    """Output depends on each pixel only (1x1 conv at stride 1): every window sees everything it needs."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv = torch.nn.Conv2d(3, 5, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"feat": x, "out": self.conv(x) * 4.0}


def test_slide_equals_whole_when_windows_see_everything() -> None:
    x = torch.rand(2, 3, 13, 20)
    model = PixelModel()
    whole = infer_probabilities(model, x, (13, 20))
    for crop, stride in (((8, 6), None), ((7, 5), (3, 2)), ((32, 32), None)):  # overlaps; padding (window > image)
        slide = infer_probabilities(model, x, (13, 20), mode="slide", crop_size=crop, stride=stride)
        torch.testing.assert_close(slide, whole, rtol=0, atol=1e-6)
    net = tiny_net()
    img = torch.rand(1, 3, 24, 32)
    torch.testing.assert_close(infer_probabilities(net, img, (24, 32), mode="slide", crop_size=(32, 24)),
                               infer_probabilities(net, img, (24, 32)), rtol=0, atol=0)


def test_window_starts_cover_and_stay_inside() -> None:
    for size, window, stride in ((20, 8, 5), (21, 7, 7), (5, 8, 3), (100, 33, 22)):
        starts = window_starts(size, window, stride)
        covered = np.zeros(max(size, window), bool)
        for s in starts:
            assert 0 <= s and s + window <= max(size, window)
            covered[s:s + window] = True
        assert covered[:size].all() and starts == sorted(set(starts))


def test_flip_tta_is_mirror_symmetric() -> None:
    net = tiny_net()
    x = torch.rand(1, 3, 24, 40)
    p = infer_probabilities(net, x, (24, 40), flip=True)
    p_mirror = infer_probabilities(net, x.flip(-1), (24, 40), flip=True)
    torch.testing.assert_close(p_mirror, p.flip(-1), rtol=0, atol=1e-6)
    torch.testing.assert_close(p.sum(1), torch.ones(1, 24, 40))
    plain = infer_probabilities(net, x, (24, 40))
    assert not torch.allclose(infer_probabilities(net, x.flip(-1), (24, 40)), plain.flip(-1), atol=1e-6)


def test_scale_one_is_single_scale_and_evaluation_unchanged() -> None:
    net = tiny_net()
    x = torch.rand(2, 3, 24, 40)
    single = infer_probabilities(net, x, (24, 40))
    assert torch.equal(infer_probabilities(net, x, (24, 40), scales=(1.0,)), single)
    assert torch.equal(single, predict_logits(net, x, (24, 40)).softmax(1))
    multi = infer_probabilities(net, x, (24, 40), scales=(0.5, 1.0, 1.5))
    assert multi.shape == single.shape and not torch.allclose(multi, single)
    torch.testing.assert_close(multi.sum(1), torch.ones(2, 24, 40))

    rng = np.random.default_rng(0)
    data = [{"image": image(i), "label": rng.integers(0, 19, (24, 40)).astype(np.uint8)} for i in range(2)]
    ref = np.zeros((19, 19), np.int64)
    for s in data:
        pred = predict_logits(net, image_to_tensor(s["image"])[None], (24, 40)).argmax(1)[0].numpy()
        np.add.at(ref, (s["label"].astype(int), pred), 1)
    cm = evaluate_model(net, data, torch.device("cpu"), 19, progress=False)
    np.testing.assert_array_equal(cm.mat.numpy(), ref)
    slide = evaluate_model(net, data, torch.device("cpu"), 19, progress=False, mode="slide", crop_size=(40, 24))
    np.testing.assert_array_equal(slide.mat.numpy(), ref)


def test_resolve_sizes() -> None:
    assert resolve_sizes("whole", None, None, [64, 32]) == ((64, 32), None)
    assert resolve_sizes("whole", (10, 8), None, [64, 32]) == ((10, 8), None)
    assert resolve_sizes("slide", None, None, [64, 32]) == (None, (64, 32))
    assert resolve_sizes("slide", (128, 64), (32, 32), [64, 32]) == ((128, 64), (32, 32))
    with pytest.raises(ConfigError):
        resolve_sizes("slide", None, None, None)
    with pytest.raises(ConfigError, match="mode"):
        infer_probabilities(PixelModel(), torch.rand(1, 3, 4, 4), (4, 4), mode="tiles")
