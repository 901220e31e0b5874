"""Model package: geometry, original checkpoint key layout, torchvision compatibility, helpers."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from proda.errors import ConfigError
from proda.models.deeplab import DeepLabV2, freeze_bn, is_backbone_key
from proda.models.discriminator import FCDiscriminator
from proda.models.heads import DeepLabV2Head, ProDAHead, group_norm_groups
from proda.models.resnet import ResNet, output_size

BN_SUFFIXES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def torchvision_resnet_shapes(depth: int, width: int = 64) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a torchvision ``resnet{depth}`` state dict, written out from the paper
    architecture independently of ``proda.models.resnet`` (``width`` scales channels)."""
    bottleneck = depth >= 50
    blocks = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}[depth]
    expansion = 4 if bottleneck else 1
    shapes: dict[str, tuple[int, ...]] = {"conv1.weight": (width, 3, 7, 7)}

    def bn(prefix: str, ch: int) -> None:
        for s in BN_SUFFIXES:
            shapes[f"{prefix}.{s}"] = () if s == "num_batches_tracked" else (ch,)

    bn("bn1", width)
    inplanes = width
    for li, n in enumerate(blocks, start=1):
        planes = width * 2 ** (li - 1)
        for i in range(n):
            p = f"layer{li}.{i}"
            if bottleneck:
                convs = [(planes, inplanes, 1), (planes, planes, 3), (planes * 4, planes, 1)]
            else:
                convs = [(planes, inplanes, 3), (planes, planes, 3)]
            for c, (o, ci, k) in enumerate(convs, start=1):
                shapes[f"{p}.conv{c}.weight"] = (o, ci, k, k)
                bn(f"{p}.bn{c}", o)
            if i == 0 and (li > 1 or inplanes != planes * expansion):  # torchvision's rule
                shapes[f"{p}.downsample.0.weight"] = (planes * expansion, inplanes, 1, 1)
                bn(f"{p}.downsample.1", planes * expansion)
            inplanes = planes * expansion
    shapes["fc.weight"] = (1000, inplanes)
    shapes["fc.bias"] = (1000,)
    return shapes


def shapes_of(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def r101() -> DeepLabV2:
    """Full-size ProDA model; only inspected, never run (about 1 s to build on CPU)."""
    return DeepLabV2(19, depth=101, width=64)


# --------------------------------------------------------------------------- geometry
@pytest.mark.parametrize("depth", [101, 18])
def test_output_stride_8_geometry(depth: int) -> None:
    torch.manual_seed(0)
    model = DeepLabV2(19, depth=depth, width=8, head_mid=32).eval()
    for (h, w), (oh, ow) in [((1024, 2048), (129, 257)), ((512, 896), (65, 113))]:
        with torch.no_grad():
            out = model(torch.randn(1, 3, h, w))
        assert set(out) == {"feat", "out"}
        assert out["out"].shape == (1, 19, oh, ow)
        assert out["feat"].shape == (1, 32, oh, ow)
        assert (output_size(h), output_size(w)) == (oh, ow)


def test_output_stride_4_decoder_doubles_the_grid_and_keeps_stride_8_keys() -> None:
    torch.manual_seed(0)
    plain = DeepLabV2(19, depth=18, width=8, head_mid=32)
    fine = DeepLabV2(19, depth=18, width=8, head_mid=32, output_stride=4).eval()
    # the stride-8 model has exactly the original's keys; the decoder adds only layer5.decoder* keys
    extra = set(fine.state_dict()) - set(plain.state_dict())
    assert set(plain.state_dict()) <= set(fine.state_dict())
    assert extra and all(k.startswith(("layer5.decoder.", "layer5.decoder_low.")) for k in extra)
    assert not any("decoder" in k for k in plain.state_dict())
    with torch.no_grad():
        out = fine(torch.randn(2, 3, 96, 192))
    # stride 4: the layer1 grid (conv1 s2 + ceil-mode max-pool s2)
    assert out["out"].shape == (2, 19, 25, 49) and out["feat"].shape == (2, 32, 25, 49)
    low = fine.maxpool(fine.relu(fine.bn1(fine.conv1(torch.zeros(1, 3, 96, 192)))))
    assert tuple(low.shape[-2:]) == (25, 49)
    # the decoder is head: trained at the head's rate, and every parameter gets a gradient
    fine.train()
    out = fine(torch.randn(2, 3, 48, 48))
    (out["out"].square().mean() + out["feat"].mean()).backward()
    assert [n for n, p in fine.named_parameters() if p.grad is None] == []
    head_ids = {id(p) for p in fine.param_groups(1e-3)[1]["params"]}
    assert {id(p) for p in fine.layer5.decoder.parameters()} <= head_ids


def test_output_stride_4_decoder_uses_the_low_level_map() -> None:
    torch.manual_seed(0)
    model = DeepLabV2(19, depth=18, width=8, head_mid=32, output_stride=4).eval()
    image = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        low, high = model.low_and_high_features(image)
        assert torch.equal(high, model.features(image))
        out = model(image)["out"]
        # the same stride-8 map with another layer1 map gives other logits: detail reaches the output
        other = model.layer5(high, torch.rand_like(low))["out"]
    assert not torch.allclose(out, other)
    with pytest.raises(ValueError, match="layer1"):
        model.layer5(high)


@pytest.mark.parametrize("size", [33, 64, 97, 100, 129])
def test_output_size_formula_matches_network(size: int) -> None:
    backbone = ResNet(depth=50, width=4).eval()
    with torch.no_grad():
        f = backbone(torch.zeros(1, 3, size, size + 3))
    assert f.shape == (1, backbone.out_channels, output_size(size), output_size(size + 3))


def test_out_channels() -> None:
    assert ResNet(depth=18, width=64).out_channels == 512
    assert ResNet(depth=50, width=16).out_channels == 512
    assert DeepLabV2(19, depth=101, width=8).out_channels == 256


# --------------------------------------------------------------------------- key layout
def test_state_dict_matches_original_proda_layout(r101: DeepLabV2) -> None:
    s = shapes_of(r101)
    expected = {
        "conv1.weight": (64, 3, 7, 7),
        "bn1.running_var": (64,),
        "layer3.22.conv3.weight": (1024, 256, 1, 1),
        "layer4.0.downsample.0.weight": (2048, 1024, 1, 1),
        "layer4.0.downsample.1.weight": (2048,),
        "layer5.conv2d_list.0.0.weight": (256, 2048, 1, 1),
        "layer5.conv2d_list.0.0.bias": (256,),
        "layer5.conv2d_list.0.1.weight": (256,),
        "layer5.conv2d_list.1.0.weight": (256, 2048, 3, 3),
        "layer5.conv2d_list.4.0.bias": (256,),
        "layer5.conv2d_list.4.1.bias": (256,),
        "layer5.bottleneck.0.se.0.weight": (80, 1280),
        "layer5.bottleneck.0.se.0.bias": (80,),
        "layer5.bottleneck.0.se.2.weight": (1280, 80),
        "layer5.bottleneck.0.se.2.bias": (1280,),
        "layer5.bottleneck.1.weight": (256, 1280, 3, 3),
        "layer5.bottleneck.1.bias": (256,),
        "layer5.bottleneck.2.weight": (256,),
        "layer5.bottleneck.2.bias": (256,),
        "layer5.head.1.weight": (19, 256, 1, 1),
    }
    for key, shape in expected.items():
        assert s[key] == shape, key
    assert "layer5.head.1.bias" not in s
    assert "layer3.23.conv1.weight" not in s
    assert not any(k.startswith(("bn_pretrain.", "backbone.", "fc.")) for k in s)
    head_keys = {k for k in s if k.startswith("layer5.")}
    assert len(head_keys) == 5 * 4 + 4 + 4 + 1  # branches, SE, bottleneck conv+GN, classifier
    gn = r101.layer5.bottleneck[2]
    assert isinstance(gn, nn.GroupNorm) and gn.num_groups == 32


@pytest.mark.parametrize("depth", [101, 50, 34, 18])
def test_backbone_keys_equal_torchvision(depth: int, r101: DeepLabV2) -> None:
    model = r101 if depth == 101 else DeepLabV2(19, depth=depth, width=64)
    tv = {k: v for k, v in torchvision_resnet_shapes(depth).items() if not k.startswith("fc.")}
    ours = shapes_of(model)
    assert set(model.backbone_state_keys()) == set(tv)
    assert {k: ours[k] for k in tv} == tv
    assert set(model.head_state_keys()) == {k for k in ours if k.startswith("layer5.")}


def test_torchvision_style_weights_load_by_name() -> None:
    model = DeepLabV2(19, depth=101, width=8, head_mid=32)
    fake = {k: torch.full(s, 0.5) for k, s in torchvision_resnet_shapes(101, width=8).items()}
    result = model.load_state_dict(fake, strict=False)
    assert set(result.unexpected_keys) == {"fc.weight", "fc.bias"}
    assert set(result.missing_keys) == set(model.head_state_keys())
    assert torch.all(model.layer3[22].conv2.weight == 0.5)


def test_bn_pretrain_present_only_when_enabled() -> None:
    without = DeepLabV2(19, depth=18, width=8, head_mid=32)
    with_bn = DeepLabV2(19, depth=18, width=8, head_mid=32, bn_pretrain=True)
    extra = set(with_bn.state_dict()) - set(without.state_dict())
    assert extra == {f"bn_pretrain.{s}" for s in BN_SUFFIXES}
    assert with_bn.state_dict()["bn_pretrain.weight"].shape == (with_bn.out_channels,)
    assert not is_backbone_key("bn_pretrain.weight")
    assert without.bn_pretrain is None
    with_bn.eval()
    with_bn.bn_pretrain.running_mean.fill_(0.5)
    seen: list[torch.Tensor] = []
    with_bn.layer5.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    with torch.no_grad():
        x = torch.randn(1, 3, 64, 64)
        with_bn(x)
        assert torch.equal(seen[0], with_bn.bn_pretrain(with_bn.features(x)))


def test_strides_dilations_and_pooling(r101: DeepLabV2) -> None:
    m = r101
    assert m.maxpool.ceil_mode and m.maxpool.kernel_size == 3 and m.maxpool.stride == 2
    assert m.conv1.stride == (2, 2) and m.conv1.padding == (3, 3) and m.conv1.bias is None
    assert m.layer2[0].conv1.stride == (2, 2) and m.layer2[0].conv2.stride == (1, 1)
    assert m.layer2[0].downsample[0].stride == (2, 2)
    for layer, d in [(m.layer1, 1), (m.layer2, 1), (m.layer3, 2), (m.layer4, 4)]:
        for block in layer:  # the first block of a dilated layer is dilated too
            assert block.conv2.dilation == (d, d) and block.conv2.padding == (d, d)
            assert block.conv1.kernel_size == (1, 1)
    for layer in (m.layer3, m.layer4):
        assert all(block.conv1.stride == (1, 1) for block in layer)
        assert layer[0].downsample[0].stride == (1, 1)
    for i, d in enumerate((6, 12, 18, 24), start=1):
        conv = m.layer5.conv2d_list[i][0]
        assert conv.dilation == (d, d) and conv.padding == (d, d)
    basic = ResNet(depth=18, width=8)
    assert basic.layer2[0].conv1.stride == (2, 2) and basic.layer1[0].downsample is None
    assert basic.layer3[0].conv1.dilation == (2, 2) and basic.layer4[1].conv2.dilation == (4, 4)


def test_init_matches_original(r101: DeepLabV2) -> None:
    for name in ("layer3.5.conv2.weight", "layer5.conv2d_list.1.0.weight", "layer5.head.1.weight"):
        std = r101.state_dict()[name].std().item()
        assert abs(std - 0.01) < 0.002, name
    assert torch.all(r101.layer5.bottleneck[1].bias == 0)
    assert torch.all(r101.layer2[1].bn2.weight == 1) and torch.all(r101.bn1.bias == 0)
    assert torch.all(r101.layer5.conv2d_list[2][1].weight == 1)
    assert r101.layer5.conv2d_list[1][0].bias.abs().sum() > 0  # branch biases keep defaults


# --------------------------------------------------------------------------- heads
def test_group_norm_and_se_widths_scale_with_mid() -> None:
    assert group_norm_groups(256) == 32
    for mid in (8, 16, 24, 32, 48, 64, 96, 128, 256, 512):
        assert mid % group_norm_groups(mid) == 0
    head = ProDAHead(64, 5, mid=32)
    assert head.bottleneck[0].se[0].weight.shape == (32 * 5 // 16, 160)
    assert head.feat_channels == 32


def test_feat_is_taken_after_dropout() -> None:
    torch.manual_seed(0)
    head = ProDAHead(16, 3, mid=16, dropout=0.5)
    pre: list[torch.Tensor] = []
    head.bottleneck.register_forward_hook(lambda _m, _i, o: pre.append(o.detach().clone()))
    x = torch.randn(2, 16, 9, 9)
    with torch.no_grad():
        out = head.eval()(x)
        assert torch.equal(out["feat"], pre[-1])  # eval: dropout is the identity
        out = head.train()(x)
    dropped = out["feat"] == 0
    assert dropped.any() and not (pre[-1] == 0).any()
    assert torch.allclose(out["feat"][~dropped], pre[-1][~dropped] * 2)
    assert torch.allclose(out["out"], F.conv2d(out["feat"], head.head[1].weight), atol=1e-6)


def test_deeplabv2_head_sums_all_branches_and_returns_input_as_feat() -> None:
    head = DeepLabV2Head(8, 4, mid=256)
    x = torch.randn(1, 8, 30, 30)
    with torch.no_grad():
        out = head(x)
        expected = sum(conv(x) for conv in head.conv2d_list)
    assert out["feat"] is x and head.feat_channels == 8
    assert torch.allclose(out["out"], expected, atol=1e-6)
    model = DeepLabV2(6, depth=18, width=8, head="deeplabv2").eval()
    keys = {k for k in model.state_dict() if k.startswith("layer5.")}
    assert keys == {f"layer5.conv2d_list.{i}.{p}" for i in range(4) for p in ("weight", "bias")}
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert out["feat"].shape[1] == model.out_channels == model.feat_channels
    assert out["out"].shape == (1, 6, 9, 9)


def test_bad_arguments_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        ResNet(depth=42)
    with pytest.raises(ConfigError):
        DeepLabV2(19, depth=18, width=8, head="aspp")
    with pytest.raises(ConfigError, match="output_stride"):
        DeepLabV2(19, depth=18, width=8, output_stride=16)
    with pytest.raises(ConfigError, match="head 'proda'"):
        DeepLabV2(19, depth=18, width=8, head="deeplabv2", output_stride=4)


# --------------------------------------------------------------------------- helpers
@pytest.mark.parametrize("bn_pretrain", [False, True])
def test_param_groups_cover_every_parameter_once(bn_pretrain: bool) -> None:
    model = DeepLabV2(19, depth=18, width=8, head_mid=32, bn_pretrain=bn_pretrain)
    groups = model.param_groups(2.5e-4)
    assert [g["name"] for g in groups] == ["backbone", "head"]
    assert [g["lr_mult"] for g in groups] == [1.0, 10.0]
    assert groups[0]["lr"] == 2.5e-4 and groups[1]["lr"] == pytest.approx(2.5e-3)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    head_ids = {id(p) for p in groups[1]["params"]}
    assert {id(p) for p in model.layer5.parameters()} <= head_ids
    if bn_pretrain:
        assert {id(p) for p in model.bn_pretrain.parameters()} <= head_ids
    torch.optim.SGD(groups, lr=2.5e-4, momentum=0.9, weight_decay=2e-4)


def test_freeze_bn_is_sticky_across_train() -> None:
    torch.manual_seed(0)
    model = DeepLabV2(19, depth=18, width=8, head_mid=32, bn_pretrain=True)
    model.freeze_bn()
    model.train()  # must not undo the freeze
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    before = copy.deepcopy({k: v for k, v in model.state_dict().items() if "running" in k})
    out = model(torch.randn(2, 3, 64, 64))
    out["out"].mean().backward()
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(not m.training for m in bns)
    assert model.layer5.head[0].training  # dropout still in train mode
    assert all(p.grad is None and not p.requires_grad for m in bns for p in m.parameters())
    assert model.conv1.weight.grad is not None
    assert copy.deepcopy(model).train().bn1.training is False

    model.freeze_bn(False)
    assert all(m.training for m in bns) and all(p.requires_grad for p in model.parameters())
    model(torch.randn(2, 3, 64, 64))
    assert not torch.equal(before["bn1.running_mean"], model.state_dict()["bn1.running_mean"])


def test_freeze_bn_function_is_one_shot() -> None:
    model = DeepLabV2(19, depth=18, width=8, head_mid=32).train()
    freeze_bn(model)
    assert not model.bn1.training and not model.bn1.weight.requires_grad
    model.train()
    assert model.bn1.training  # like the original: re-apply after every train()


def test_backward_reaches_every_parameter() -> None:
    torch.manual_seed(0)
    model = DeepLabV2(19, depth=50, width=4, head_mid=16, bn_pretrain=True).train()
    out = model(torch.randn(2, 3, 48, 48))
    (out["out"].square().mean() + out["feat"].mean()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert missing == []


# --------------------------------------------------------------------------- discriminator
def test_discriminator_shape_and_names() -> None:
    d = FCDiscriminator(19)
    out = d(torch.softmax(torch.randn(2, 19, 64, 128), dim=1))
    assert out.shape == (2, 1, 4, 8)
    assert set(shapes_of(d)) == {
        f"{n}.{p}"
        for n in ("conv1", "conv2", "conv3", "conv4", "classifier")
        for p in ("weight", "bias")
    }
    assert d.conv4.weight.shape == (512, 256, 3, 3) and d.classifier.weight.shape == (1, 512, 1, 1)
    small = FCDiscriminator(5, ndf=8)
    assert small(torch.randn(1, 5, 33, 33)).shape == (1, 1, 3, 3)
    assert small.classifier.weight.shape == (1, 64, 1, 1)


def test_kaiming_weight_init_option():
    """model.weight_init=kaiming re-initialises convs for from-scratch training; the classifier stays small."""
    from proda.config import load_config
    from proda.models.build import build_model

    base = ["data.source_root=x", "data.target_root=y", "model.depth=18", "model.width=8", "model.head_mid=16"]
    original = build_model(load_config(None, base).model, 19)
    kaiming = build_model(load_config(None, [*base, "model.weight_init=kaiming"]).model, 19)
    assert abs(float(original.conv1.weight.detach().std()) - 0.01) < 0.002
    fan_out = kaiming.conv1.out_channels * 7 * 7
    assert abs(float(kaiming.conv1.weight.detach().std()) - (2.0 / fan_out) ** 0.5) < 0.02
    assert abs(float(kaiming.layer5.head[1].weight.detach().std()) - 0.01) < 0.003
