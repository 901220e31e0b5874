"""Checkpoint layouts: the original ProDA release files, torchvision and SimCLRv2 backbones, proda's own;
strict loading with errors that name the keys; conversion to a proda checkpoint with identical outputs.

Key names and shapes are written out here from the layouts' own descriptions (docs/method.md section 7, the
torchvision ResNet, the SimCLRv2-Pytorch converter's modules), not taken from proda's model, and checked
against the full-size network once on the meta device (no memory, no forward). Values are then loaded at
a small width (8, head 32), where files are cheap.
"""
from __future__ import annotations

import re
from pathlib import Path
from unittest import mock

import pytest
import torch

from proda.adapt.prototypes import PrototypeBank
from proda.checkpoint_io import load_checkpoint
from proda.errors import CheckpointError
from proda.models.weights import (
    SIMCLR_KEY_MAP,
    detect_format,
    infer_architecture,
    initialize_model,
    load_trained_model,
    read_weights,
    simclr_to_torchvision,
)
from proda.models.convert import convert_checkpoint, convert_command
from proda.models.deeplab import DeepLabV2

from test_models import BN_SUFFIXES, torchvision_resnet_shapes

Shapes = dict[str, tuple[int, ...]]
W, MID = 8, 32  # small width and head width for files that are written and loaded


# --------------------------------------------------------------------------------------- layouts, as documented
def _bn(shapes: Shapes, prefix: str, ch: int, suffixes: tuple[str, ...] = BN_SUFFIXES) -> None:
    for s in suffixes:
        shapes[f"{prefix}.{s}"] = () if s == "num_batches_tracked" else (ch,)


def original_shapes(depth: int = 50, width: int = W, num_classes: int = 19, mid: int = MID,
                    bn_pretrain: bool = False) -> Shapes:
    """An original ``model_state``: torchvision backbone names + ``layer5`` (Classifier_Module2) + bn_pretrain."""
    shapes = {k: v for k, v in torchvision_resnet_shapes(depth, width).items() if not k.startswith("fc.")}
    c = width * 32  # layer4 channels (2048 at width 64)
    for i in range(5):
        k = 1 if i == 0 else 3
        shapes[f"layer5.conv2d_list.{i}.0.weight"] = (mid, c, k, k)
        shapes[f"layer5.conv2d_list.{i}.0.bias"] = (mid,)
        _bn(shapes, f"layer5.conv2d_list.{i}.1", mid, ("weight", "bias"))  # GroupNorm
    cat = 5 * mid
    shapes.update({"layer5.bottleneck.0.se.0.weight": (cat // 16, cat), "layer5.bottleneck.0.se.0.bias": (cat // 16,),
                   "layer5.bottleneck.0.se.2.weight": (cat, cat // 16), "layer5.bottleneck.0.se.2.bias": (cat,),
                   "layer5.bottleneck.1.weight": (mid, cat, 3, 3), "layer5.bottleneck.1.bias": (mid,)})
    _bn(shapes, "layer5.bottleneck.2", mid, ("weight", "bias"))
    shapes["layer5.head.1.weight"] = (num_classes, mid, 1, 1)
    if bn_pretrain:
        _bn(shapes, "bn_pretrain", c)
    return shapes


def simclr_converter_shapes(depth: int, width: int = W, sk: bool = False) -> tuple[Shapes, Shapes]:
    """(``resnet``, ``head``) state-dict shapes of Separius/SimCLRv2-Pytorch's ``get_resnet(depth, 1x)``.

    ``net.0`` = Stem[conv7x7, BatchNormRelu(BN, ReLU), MaxPool]; ``net.1..4`` = Blocks with ``blocks[i]`` =
    BottleneckBlock(``projection`` = Projection(shortcut conv, bn = BatchNormRelu) in block 0;
    ``net`` = [conv1x1, BNReLU, conv3x3, BNReLU, conv1x1, BN]); ``fc``; head = ContrastiveHead (3 layers).
    ``sk=True`` gives the selective-kernel variant's stem and first block (enough to be recognised).
    """
    blocks = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}[depth]
    s: Shapes = {}
    if sk:
        half = width // 2
        s.update({"net.0.0.weight": (half, 3, 3, 3), "net.0.2.weight": (half, half, 3, 3),
                  "net.0.4.weight": (width, half, 3, 3)})
        for i in (1, 3, 5):
            _bn(s, f"net.0.{i}.0", half if i < 5 else width)
        s["net.1.blocks.0.net.2.main_conv.0.weight"] = (2 * width, width, 3, 3)
        s["net.1.blocks.0.net.2.mixing_conv.0.weight"] = (32, width, 1, 1)
        s["net.1.blocks.0.projection.shortcut.2.weight"] = (4 * width, width, 1, 1)
        return s, {}
    s["net.0.0.weight"] = (width, 3, 7, 7)
    _bn(s, "net.0.1.0", width)
    cin = width
    for layer, n in enumerate(blocks, start=1):
        planes = width * 2 ** (layer - 1)
        for i in range(n):
            p = f"net.{layer}.blocks.{i}"
            if i == 0:
                s[f"{p}.projection.shortcut.weight"] = (planes * 4, cin, 1, 1)
                _bn(s, f"{p}.projection.bn.0", planes * 4)
            s[f"{p}.net.0.weight"] = (planes, cin, 1, 1)
            _bn(s, f"{p}.net.1.0", planes)
            s[f"{p}.net.2.weight"] = (planes, planes, 3, 3)
            _bn(s, f"{p}.net.3.0", planes)
            s[f"{p}.net.4.weight"] = (planes * 4, planes, 1, 1)
            _bn(s, f"{p}.net.5.0", planes * 4)
            cin = planes * 4
    s["fc.weight"], s["fc.bias"] = (1000, cin), (1000,)
    head: Shapes = {}
    for j, (i_lin, i_bn) in enumerate([(0, 1), (3, 4), (6, 7)]):
        dim = cin if j < 2 else 128
        head[f"layers.{i_lin}.weight"] = (dim, cin)
        _bn(head, f"layers.{i_bn}", dim)
    return s, head


def fabricate(shapes: Shapes, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors of the given shapes (positive running variances, step counters as int64)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, shape in shapes.items():
        if k.endswith("num_batches_tracked"):
            out[k] = torch.tensor(7)
        elif k.endswith("running_var"):
            out[k] = torch.rand(shape, generator=g) + 0.5
        else:
            out[k] = torch.randn(shape, generator=g) * 0.1
    return out


def shape_only_model(depth: int, bn_pretrain: bool = False) -> DeepLabV2:
    """The full-size network (width 64, head 256, 19 classes) on the meta device: names and shapes, no memory.

    ``normal_`` is skipped: on meta tensors it goes through torch's compiler stack (seconds to import)."""
    with torch.device("meta"), mock.patch.object(torch.nn.init, "normal_", lambda t, *a, **k: t):
        return DeepLabV2(19, depth=depth, width=64, bn_pretrain=bn_pretrain)


def on_meta(shapes: Shapes) -> dict[str, torch.Tensor]:
    return {k: torch.empty(s, device="meta") for k, s in shapes.items()}


def shapes_of(state: dict[str, torch.Tensor]) -> Shapes:
    return {k: tuple(v.shape) for k, v in state.items()}


def small(num_classes: int = 19, depth: int = 50, bn_pretrain: bool = False) -> DeepLabV2:
    return DeepLabV2(num_classes, depth=depth, width=W, head_mid=MID, bn_pretrain=bn_pretrain)


def original_file(path: Path, state: dict[str, torch.Tensor], prototypes: torch.Tensor | None = None,
                  discriminator: bool = False) -> Path:
    """A file as ProDA's ``train.py::validation`` writes it."""
    zeros = torch.zeros(19, MID)  # what every file but a stage-1 one holds
    entry = {"model_state": state, "objective_vectors": zeros if prototypes is None else prototypes,
             "optimizer_state": {}, "scheduler_state": {}}
    ckpt = {"ResNet101": entry, "iter": 1234, "best_iou": 53.7}
    if discriminator:
        ckpt["FCDiscriminator"] = {"model_state": {"conv1.weight": torch.zeros(1)}}
    torch.save(ckpt, path)
    return path


def assert_loaded(model: DeepLabV2, expected: dict[str, torch.Tensor]) -> None:
    own = model.state_dict()
    for k, v in expected.items():
        assert torch.equal(own[k], v), k


# --------------------------------------------------------------------------------------- full-size key layouts
@pytest.mark.parametrize("bn_pretrain", [False, True])
def test_original_r101_layout_equals_model_keys(bn_pretrain: bool) -> None:
    model = shape_only_model(101, bn_pretrain)
    spec = original_shapes(101, 64, 19, 256, bn_pretrain)
    assert list(model.state_dict()) == list(spec)  # same names, same order
    assert shapes_of(model.state_dict()) == spec
    assert infer_architecture(on_meta(spec)) == {"depth": 101, "width": 64, "num_classes": 19, "head": "proda",
                                                 "head_mid": 256, "bn_pretrain": bn_pretrain}


@pytest.mark.parametrize("depth", [50, 101])
def test_simclr_converter_keys_map_onto_full_backbone(depth: int) -> None:
    model = shape_only_model(depth)
    resnet, _ = simclr_converter_shapes(depth, 64)
    mapped = simclr_to_torchvision(on_meta(resnet))
    assert {k for k in mapped if not k.startswith("fc.")} == set(model.backbone_state_keys())
    own = shapes_of(model.state_dict())
    assert {k: tuple(v.shape) for k, v in mapped.items() if not k.startswith("fc.")} == \
           {k: own[k] for k in model.backbone_state_keys()}
    assert infer_architecture(mapped)["depth"] == depth
    used = {pattern for pattern, _ in SIMCLR_KEY_MAP if any(re.fullmatch(pattern, k) for k in resnet)}
    assert len(used) == len(SIMCLR_KEY_MAP)  # no rule in the table is dead


# --------------------------------------------------------------------------------------- original release files
@pytest.mark.parametrize("variant", ["stage1", "stage3", "no_num_batches_tracked", "module_prefix", "warmup"])
def test_original_file_loads_strictly(tmp_path: Path, variant: str) -> None:
    bn = variant == "stage3"
    state = fabricate(original_shapes(bn_pretrain=bn), seed=1)
    protos = torch.randn(19, MID) if variant == "stage1" else None
    if variant == "no_num_batches_tracked":
        state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    stored = {f"module.{k}": v for k, v in state.items()} if variant == "module_prefix" else state
    path = original_file(tmp_path / "from_gta5_to_cityscapes_on_deeplabv2_best_model.pkl", stored, protos,
                         discriminator=variant == "warmup")

    assert detect_format(torch.load(path, weights_only=False)) == "original"
    weights = read_weights(path)
    assert weights.fmt == "original" and weights.whole and weights.iteration == 1234
    assert set(weights.state) == set(state)
    assert infer_architecture(weights.state) == {"depth": 50, "width": W, "num_classes": 19, "head": "proda",
                                                 "head_mid": MID, "bn_pretrain": bn}
    if protos is None:
        assert weights.prototypes is None  # zeros in every file but stage 1's
    else:
        assert torch.equal(weights.prototypes, protos)
    model = small(bn_pretrain=bn)
    assert initialize_model(model, path) == "original"
    assert_loaded(model, state)


def test_original_depth_101_and_16_classes_are_inferred(tmp_path: Path) -> None:
    state = fabricate(original_shapes(depth=101, num_classes=16))
    path = original_file(tmp_path / "syn.pkl", state)
    arch = infer_architecture(read_weights(path).state)
    assert (arch["depth"], arch["num_classes"]) == (101, 16)
    model = small(16, depth=101)
    initialize_model(model, path, "original")
    assert_loaded(model, state)


# --------------------------------------------------------------------------------------- backbones
@pytest.mark.parametrize("depth", [50, 101])
def test_torchvision_backbone_loads_and_drops_fc(tmp_path: Path, depth: int) -> None:
    state = fabricate(torchvision_resnet_shapes(depth, W))
    torch.save(state, tmp_path / f"resnet{depth}.pth")
    model = small(depth=depth)
    head_before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("layer5.")}
    assert detect_format(state) == "torchvision"
    assert initialize_model(model, tmp_path / f"resnet{depth}.pth") == "torchvision"
    assert_loaded(model, {k: v for k, v in state.items() if not k.startswith("fc.")})
    assert_loaded(model, head_before)
    assert infer_architecture(read_weights(tmp_path / f"resnet{depth}.pth").state)["head"] is None


@pytest.mark.parametrize("depth", [50, 101])
def test_simclr_converter_layout_loads(tmp_path: Path, depth: int) -> None:
    resnet_shapes, head_shapes = simclr_converter_shapes(depth)
    resnet, head = fabricate(resnet_shapes, seed=2), fabricate(head_shapes, seed=3)
    path = tmp_path / f"r{depth}_1x_sk0.pth"
    torch.save({"resnet": resnet, "head": head}, path)
    assert detect_format(torch.load(path, weights_only=False)) == "simclr"
    model = small(depth=depth, bn_pretrain=True)
    assert initialize_model(model, path) == "simclr"
    mapped = simclr_to_torchvision(resnet)
    assert_loaded(model, {k: v for k, v in mapped.items() if not k.startswith("fc.")})
    # spot checks of the table on real values
    own = model.state_dict()
    assert torch.equal(own["conv1.weight"], resnet["net.0.0.weight"])
    assert torch.equal(own["layer3.1.bn2.running_var"], resnet["net.3.blocks.1.net.3.0.running_var"])
    assert torch.equal(own["layer4.0.downsample.1.bias"], resnet["net.4.blocks.0.projection.bn.0.bias"])


@pytest.mark.parametrize("layout", ["proda_state_dict", "bare"])
def test_simclr_torchvision_style_layouts_load(tmp_path: Path, layout: str) -> None:
    state = fabricate(torchvision_resnet_shapes(101, W), seed=4)
    path = tmp_path / "r101_1x_sk0.pth"
    torch.save({"state_dict": state} if layout == "proda_state_dict" else state, path)
    raw = torch.load(path, weights_only=False)
    assert detect_format(raw) == ("simclr" if layout == "proda_state_dict" else "torchvision")
    model = small(depth=101, bn_pretrain=True)
    assert initialize_model(model, path, "simclr") == "simclr"
    assert_loaded(model, {k: v for k, v in state.items() if not k.startswith("fc.")})


def test_detect_format_on_each_layout() -> None:
    tv = on_meta(torchvision_resnet_shapes(50, W))
    whole = on_meta(original_shapes())
    conv, head = simclr_converter_shapes(50)
    assert detect_format({"format": "proda", "model": whole}) == "proda"
    assert detect_format({"ResNet101": {"model_state": whole}, "iter": 1}) == "original"
    assert detect_format(whole) == "original"  # a bare model_state
    assert detect_format({"resnet": on_meta(conv), "head": on_meta(head)}) == "simclr"
    assert detect_format(on_meta(conv)) == "simclr"  # the converter's resnet dict alone
    assert detect_format({"state_dict": tv}) == "simclr"
    assert detect_format(tv) == "torchvision"
    with pytest.raises(CheckpointError, match=r"x\.pkl: unrecognised checkpoint layout.*keys foo, bar"):
        detect_format({"foo": 1, "bar": 2}, "x.pkl")
    with pytest.raises(CheckpointError, match="found a Tensor"):
        detect_format(torch.zeros(3))


# --------------------------------------------------------------------------------------- refusals
def _err(model: DeepLabV2, path: Path, fmt: str = "auto") -> str:
    with pytest.raises(CheckpointError) as exc:
        initialize_model(model, path, fmt)
    assert str(path) in str(exc.value)
    return str(exc.value)


def test_missing_extra_and_misshaped_keys_are_named(tmp_path: Path) -> None:
    state = fabricate(original_shapes())
    no_head = {k: v for k, v in state.items() if k != "layer5.head.1.weight"}
    msg = _err(small(), original_file(tmp_path / "a.pkl", no_head))
    assert "missing keys (1): layer5.head.1.weight" in msg
    extra = {**state, "layer5.head.1.bias": torch.zeros(19)}
    assert "unexpected keys (1): layer5.head.1.bias" in _err(small(), original_file(tmp_path / "b.pkl", extra))
    msg = _err(small(), original_file(tmp_path / "c.pkl", fabricate(original_shapes(num_classes=16))))
    assert "layer5.head.1.weight (16, 32, 1, 1) != (19, 32, 1, 1)" in msg and "data.num_classes=16" in msg
    msg = _err(small(), original_file(tmp_path / "d.pkl", state), "torchvision")
    assert "does not fit the backbone" in msg and "unexpected keys" in msg and "layer5." in msg


@pytest.mark.parametrize("file_bn, model_bn", [(True, False), (False, True)])
def test_bn_pretrain_mismatch_names_the_setting(tmp_path: Path, file_bn: bool, model_bn: bool) -> None:
    path = original_file(tmp_path / "stage3.pkl", fabricate(original_shapes(bn_pretrain=file_bn)))
    msg = _err(small(bn_pretrain=model_bn), path)
    assert "bn_pretrain.running_mean" in msg
    assert f"model.bn_pretrain={str(file_bn).lower()}" in msg


def test_backbone_of_another_depth_names_the_setting(tmp_path: Path) -> None:
    torch.save(fabricate(torchvision_resnet_shapes(101, W)), tmp_path / "resnet101.pth")
    msg = _err(small(depth=50), tmp_path / "resnet101.pth")
    assert "unexpected keys" in msg and "layer3.6.conv1.weight" in msg and "model.depth=101" in msg


def test_selective_kernel_simclr_is_refused(tmp_path: Path) -> None:
    resnet, _ = simclr_converter_shapes(101, sk=True)
    torch.save({"resnet": fabricate(resnet), "head": {}}, tmp_path / "r101_1x_sk1.pth")
    assert "selective-kernel (SimCLRv2 sk1)" in _err(small(depth=101), tmp_path / "r101_1x_sk1.pth")


def test_garbage_and_unknown_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "garbage.pkl").write_bytes(b"\x80\x04not a pickle at all" * 10)
    assert "not a readable checkpoint" in _err(small(), tmp_path / "garbage.pkl")
    torch.save({"optimizer": {}, "epoch": 3}, tmp_path / "other.pth")
    assert "found a dict with keys optimizer, epoch" in _err(small(), tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="unknown checkpoint format 'keras'"):
        initialize_model(small(), tmp_path / "other.pth", "keras")


# --------------------------------------------------------------------------------------- conversion
def test_convert_original_gives_identical_outputs(tmp_path: Path) -> None:
    """A stage-3-like file (bn_pretrain) that also carries stage-1 prototypes: both paths in one forward."""
    torch.manual_seed(5)
    source = small(bn_pretrain=True)
    for m in source.modules():  # non-trivial BN statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    source.eval()
    protos = torch.randn(19, MID)
    src = original_file(tmp_path / "best_model.pkl", source.state_dict(), protos)

    meta = convert_checkpoint(src, tmp_path / "converted.pth")
    model, loaded_meta = load_trained_model(tmp_path / "converted.pth")
    assert loaded_meta == meta
    assert meta["num_classes"] == 19 and meta["input"]["mean"] == [0.0, 0.0, 0.0] and meta["input"]["std"] == [1.0] * 3
    assert (meta["model"]["depth"], meta["model"]["width"], meta["model"]["head_mid"]) == (50, W, MID)
    assert meta["model"]["bn_pretrain"] is True and meta["converted_from"]["format"] == "original"
    x = torch.rand(1, 3, 25, 33)
    with torch.no_grad():
        want, got = source(x), model(x)
    assert torch.equal(want["out"], got["out"]) and torch.equal(want["feat"], got["feat"])

    ckpt = load_checkpoint(tmp_path / "converted.pth")
    assert ckpt["format"] == "proda" and ckpt["iteration"] == 1234
    bank = PrototypeBank.load(tmp_path / "converted.pth")  # stage 1 reads a converted file's prototypes
    assert torch.equal(bank.prototypes, protos) and bank.unseen_classes() == []
    assert initialize_model(small(bn_pretrain=True), tmp_path / "converted.pth") == "proda"


def test_convert_backbone_needs_classes_and_is_deterministic(tmp_path: Path) -> None:
    resnet, head = simclr_converter_shapes(50)
    src = tmp_path / "r50_1x_sk0.pth"
    torch.save({"resnet": fabricate(resnet), "head": fabricate(head)}, src)
    with pytest.raises(CheckpointError, match="no classifier"):
        convert_checkpoint(src, tmp_path / "a.pth")
    imagenet = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    meta = convert_checkpoint(src, tmp_path / "a.pth", num_classes=16, mean=imagenet[0], std=imagenet[1])
    convert_checkpoint(src, tmp_path / "b.pth", num_classes=16, mean=imagenet[0], std=imagenet[1])
    assert meta["num_classes"] == 16 and meta["input"]["mean"] == list(imagenet[0])
    assert meta["converted_from"]["format"] == "simclr" and meta["converted_from"]["fresh_head"]
    a, _ = load_trained_model(tmp_path / "a.pth")
    assert_loaded(a, load_checkpoint(tmp_path / "b.pth")["model"])  # the fresh head is seeded
    assert_loaded(a, {k: v for k, v in simclr_to_torchvision(fabricate(resnet)).items() if not k.startswith("fc.")})

    # the backbone of a proda checkpoint initialises a model with another head (proda_backbone)
    student = small(16, bn_pretrain=True)
    assert initialize_model(student, tmp_path / "a.pth", "proda_backbone") == "proda_backbone"
    assert_loaded(student, {k: v for k, v in a.state_dict().items() if not k.startswith("layer5.")})
    with pytest.raises(CheckpointError, match="already a proda checkpoint"):
        convert_checkpoint(tmp_path / "a.pth", tmp_path / "c.pth")


def test_convert_command_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = fabricate(original_shapes())
    src = original_file(tmp_path / "best_model.pkl", state)  # zero objective_vectors: not a stage-1 file
    assert convert_command(src, tmp_path / "out.pth", "auto", None) == 0
    out = capsys.readouterr().out
    for text in ("original layout, iteration 1234", f"ResNet-50 width {W}", "19 classes",
                 "prototypes: none", "bn_pretrain=false", f"wrote {tmp_path / 'out.pth'}"):
        assert text in out, text
    ckpt = load_checkpoint(tmp_path / "out.pth")
    assert "prototypes" not in ckpt
    assert all(torch.equal(ckpt["model"][k], v) for k, v in state.items())


def test_infer_architecture_of_classic_head_and_basic_blocks() -> None:
    state = DeepLabV2(13, depth=34, width=4, head="deeplabv2").state_dict()
    assert infer_architecture(state) == {"depth": 34, "width": 4, "num_classes": 13, "head": "deeplabv2",
                                         "head_mid": None, "bn_pretrain": False}
    with pytest.raises(CheckpointError, match="x.pth: no conv1.weight"):
        infer_architecture({"fc.weight": torch.zeros(2, 2)}, "x.pth")


def test_converted_stage1_prototypes_seed_stage1(tmp_path):
    """The prototypes of an original stage-1 file, once converted, load as a PrototypeBank."""
    import torch

    from proda.adapt.prototypes import PrototypeBank
    from proda.models.convert import convert_checkpoint
    from proda.models.deeplab import DeepLabV2

    model = DeepLabV2(19, depth=18, width=8, head_mid=32)
    protos = torch.randn(19, 32)
    torch.save({"ResNet101": {"model_state": model.state_dict(), "objective_vectors": protos}, "iter": 5}, tmp_path / "s1.pkl")
    convert_checkpoint(tmp_path / "s1.pkl", tmp_path / "s1.pth")
    bank = PrototypeBank.load(tmp_path / "s1.pth")
    assert torch.equal(bank.prototypes, protos)
