"""The deploy form: numerically the training form, static, folded, exportable."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import hrvit_mobile
from hrvit_mobile.models.attention import MaskedSoftmax
from hrvit_mobile.models.mlp import MixConv2d

GOLDEN_SIZES = ["224x224", "256x256", "512x512", "384x640"]


@pytest.mark.parametrize("size", GOLDEN_SIZES)
def test_deploy_matches_training_form_on_golden_inputs(b1_reference, golden, size: str) -> None:
    x = torch.from_numpy(golden[f"input_{size}"])
    deployed = hrvit_mobile.deploy(b1_reference, img_size=size)
    with torch.no_grad():
        reference, out = b1_reference(x), deployed(x)
    assert out.shape == reference.shape == deployed.output_shape
    assert (out - reference).abs().max().item() <= 1e-4
    if f"argmax_{size}" in golden:
        assert (out[0].argmax(0).numpy() == golden[f"argmax_{size}"]).mean() >= 0.9999


def test_deploy_is_folded_and_merged(b1_reference) -> None:
    deployed = hrvit_mobile.deploy(b1_reference, img_size=(224, 224))
    kinds = {type(m) for m in deployed.modules()}
    assert not any(issubclass(k, nn.modules.batchnorm._BatchNorm) for k in kinds)
    assert MixConv2d not in kinds
    ffn_convs = [m.ffn_conv for m in deployed.modules() if hasattr(m, "ffn_conv")]
    assert ffn_convs and all(c.kernel_size == (5, 5) and c.groups == c.in_channels for c in ffn_convs)
    # the training form is left as it was
    assert any(isinstance(m, nn.BatchNorm2d) for m in b1_reference.modules())


def test_deploy_leaves_training_form_untouched(nano_model) -> None:
    before = {k: v.clone() for k, v in nano_model.state_dict().items()}
    hrvit_mobile.deploy(nano_model)
    after = nano_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("size", [(64, 96), (96, 64), (64, 64), (224, 160)])
def test_nano_deploy_matches_with_padded_stripes(nano_model, size) -> None:
    torch.manual_seed(1)
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        assert (hrvit_mobile.deploy(nano_model, img_size=size)(x) - nano_model(x)).abs().max() <= 1e-4


def test_deploy_batch_size_two(nano_model) -> None:
    torch.manual_seed(2)
    x = torch.randn(2, 3, 64, 96)
    deployed = hrvit_mobile.deploy(nano_model, batch_size=2)
    with torch.no_grad():
        assert (deployed(x) - nano_model(x)).abs().max() <= 1e-4


def test_key_mask_is_load_bearing(nano_model) -> None:
    """Dropping the padded-key mask changes the output: the mask buffers do real work."""
    x = torch.randn(1, 3, 64, 96)
    deployed = hrvit_mobile.deploy(nano_model)
    masks = [m for m in deployed.modules() if isinstance(m, MaskedSoftmax) and m.key_mask is not None]
    assert masks
    with torch.no_grad():
        reference = deployed(x)
        for m in masks:
            m.key_mask = None
        assert (deployed(x) - reference).abs().max() > 1e-3


def _exported_graph_facts(
    model: nn.Module, size: tuple[int, int]
) -> tuple[set[str], int, list, list]:
    x = torch.randn(1, 3, *size)
    program = torch.export.export(model, (x,), strict=True)
    np.testing.assert_allclose(program.module()(x).detach().numpy(), model(x).numpy(), atol=1e-5)
    calls = [n for n in program.graph.nodes if n.op == "call_function"]
    ops = {str(n.target) for n in calls}
    max_rank = max(len(n.meta["val"].shape) for n in calls if hasattr(n.meta.get("val"), "shape"))
    symbolic = [
        n for n in calls if hasattr(n.meta.get("val"), "shape")
        and not all(isinstance(d, int) for d in n.meta["val"].shape)
    ]
    matmuls = [n for n in calls if str(n.target) == "aten.matmul.default"]
    return ops, max_rank, symbolic, matmuls


def test_nano_deploy_exports_strict_static_rank4(nano_model) -> None:
    ops, max_rank, symbolic, matmuls = _exported_graph_facts(hrvit_mobile.deploy(nano_model), (64, 96))
    assert max_rank <= 4
    assert not symbolic
    assert not any("batch_norm" in op for op in ops)
    assert "aten.cat.default" in ops  # stripes are padded with static zero rows at this size
    # ops ExecuTorch's XNNPACK delegate leaves to portable kernels (measured with executorch 1.5.1)
    undelegable = {
        "aten.layer_norm.default",
        "aten.upsample_nearest2d.vec",
        "aten.split.Tensor",
        "aten.chunk.default",
        "aten.select.int",
        "aten.pad.default",  # refused by XNNPACK when quantized
    }
    assert not ops & undelegable
    assert "aten.bmm.default" in ops
    # no matmul at all: rank-4 matmuls (activation x activation, or against a constant column)
    # decompose into expand copies that XNNPACK refuses
    assert not matmuls


@pytest.mark.slow
@pytest.mark.ci
@pytest.mark.parametrize("size", [(512, 512), (384, 640)])
def test_b1_deploy_exports_strict(b1_reference, size) -> None:
    ops, max_rank, symbolic, _ = _exported_graph_facts(
        hrvit_mobile.deploy(b1_reference, img_size=size), size
    )
    assert max_rank <= 4 and not symbolic
    assert not any("batch_norm" in op for op in ops)


@pytest.mark.parametrize(
    ("size", "nearest"),
    [((500, 512), "480x512, 512x512"), ((512, 650), "512x640, 512x672"), ((20, 20), "32x32")],
)
def test_invalid_size_names_nearest_valid_sizes(nano_model, size, nearest: str) -> None:
    with pytest.raises(hrvit_mobile.InvalidImageSizeError) as info:
        hrvit_mobile.deploy(nano_model, img_size=size)
    message = str(info.value)
    assert f"{size[0]}x{size[1]}" in message and "multiples of 32" in message
    assert nearest in message


def test_create_model_rejects_bad_size_and_name() -> None:
    with pytest.raises(hrvit_mobile.InvalidImageSizeError, match="nearest valid sizes"):
        hrvit_mobile.create_model("hrvit_b1", img_size="513x512")
    with pytest.raises(ValueError, match="available: hrvit_b1, hrvit_b2, hrvit_b3"):
        hrvit_mobile.create_model("hrvit_b9")


@pytest.mark.parametrize("form", ["resize", "broadcast"])
def test_upsampler_forms_equal_the_transposed_conv(nano_model, form: str) -> None:
    from hrvit_mobile.deploy import DeployOptions, with_options
    from hrvit_mobile.deploy.fold import NearestUpsample, set_upsampler

    up = NearestUpsample(6, 4)
    x = torch.randn(2, 6, 5, 7)
    y = up(x)
    assert y.shape == (2, 6, 20, 28)
    assert torch.equal(y[:, :, 4 * 3 + 1, 4 * 5 + 3], x[:, :, 3, 5])
    deployed = hrvit_mobile.deploy(nano_model, img_size=(64, 96)).eval()
    state = {k: v.clone() for k, v in deployed.state_dict().items()}
    image = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        before = deployed(image)
        modes = [m.mode for m in deployed.modules() if isinstance(m, NearestUpsample)]
        assert modes and set(modes) == {"transposed_conv"}
        other = with_options(deployed, DeployOptions(upsampler=form))
        assert [m.mode for m in deployed.modules() if isinstance(m, NearestUpsample)] == modes  # untouched
        assert {m.mode for m in other.modules() if isinstance(m, NearestUpsample)} == {form}
        assert other.options.upsampler == form
        torch.testing.assert_close(other(image), before, rtol=0, atol=0)
        built = hrvit_mobile.deploy(nano_model, img_size=(64, 96), options=DeployOptions(upsampler=form))
        torch.testing.assert_close(built(image), before, rtol=0, atol=0)
        assert with_options(other, DeployOptions(upsampler=form)) is other  # already in that form
        assert set_upsampler(other, form) == 0
    # the same parameters and names: checkpoints of either form load into the other
    assert other.state_dict().keys() == state.keys() == built.state_dict().keys()


def test_deploy_options_refuse_unknown_choices(nano_model) -> None:
    from hrvit_mobile.deploy import DeployOptions

    with pytest.raises(ValueError, match="unknown deploy upsampler 'bilinear'; allowed: transposed_conv"):
        DeployOptions(upsampler="bilinear")
    with pytest.raises(ValueError, match="unknown deploy layout"):
        DeployOptions(layout="nhwc")
    options = DeployOptions(layout="channels_first", upsampler="broadcast", factored_des_from=None)
    assert DeployOptions.from_dict(options.as_dict()) == options
    with pytest.raises(ValueError, match="unknown deploy option"):
        DeployOptions.from_dict({"layout": "tokens", "colour": "red"})
    with pytest.raises(ValueError, match="factored_des_from in the options"):
        hrvit_mobile.deploy(nano_model, options=options, factored_des_from=64)


@pytest.mark.parametrize("size", [(64, 96), (96, 64)])
def test_deploy_builds_each_form_directly(nano_model, size) -> None:
    """A form built by deploy(options) equals the default form switched by with_options: the same state
    dict, the same outputs."""
    from hrvit_mobile.deploy import DeployOptions, with_options

    x = torch.randn(1, 3, *size)
    tokens = hrvit_mobile.deploy(nano_model, img_size=size)
    for options in (DeployOptions(layout="channels_first", upsampler="broadcast"),
                    DeployOptions(norm="native", upsampler="resize")):
        built = hrvit_mobile.deploy(nano_model, img_size=size, options=options)
        switched = with_options(tokens, options)
        assert built.options == switched.options == options
        assert list(built.state_dict()) == list(switched.state_dict())
        with torch.no_grad():
            assert torch.equal(built(x), switched(x))
            assert (built(x) - tokens(x)).abs().max() <= 1e-5


def _channels_first(deployed: nn.Module) -> tuple[nn.Module, int]:
    import copy

    from hrvit_mobile.deploy.channels_first import use_channels_first

    switched = copy.deepcopy(deployed)
    return switched, use_channels_first(switched)


@pytest.mark.parametrize("size", [(64, 96), (96, 64), (224, 160)])
def test_channels_first_layout_computes_the_same_network(nano_model, size) -> None:
    """Padded stripes in both directions, several heads: the same logits as the token layout."""
    torch.manual_seed(3)
    x = torch.randn(1, 3, *size)
    tokens = hrvit_mobile.deploy(nano_model, img_size=size)
    switched, count = _channels_first(tokens)
    assert count == sum(len(s.branches) for s in tokens.features if hasattr(s, "branches"))
    with torch.no_grad():
        assert (switched(x) - tokens(x)).abs().max() <= 1e-5
        assert (switched(x) - nano_model(x)).abs().max() <= 1e-4


def test_channels_first_layout_batch_two_and_key_mask(nano_model) -> None:
    from hrvit_mobile.deploy.modules import StripeAttention

    torch.manual_seed(4)
    x = torch.randn(2, 3, 64, 96)
    switched, _ = _channels_first(hrvit_mobile.deploy(nano_model, batch_size=2))
    with torch.no_grad():
        assert (switched(x) - nano_model(x)).abs().max() <= 1e-4
        masked = [m for m in switched.modules()
                  if isinstance(m, StripeAttention) and m.channels_first and m.attend.key_mask is not None]
        assert masked  # 64x96 does not tile into every stripe width
        for m in masked:
            m.attend.key_mask.zero_()  # dropping the mask changes the result: it is load-bearing
        assert (switched(x) - nano_model(x)).abs().max() > 1e-3


def test_channels_first_graph_has_no_permute_around_convs(nano_model) -> None:
    """The point of the layout: no conv reads or feeds a permute, and rank stays <= 4."""
    tokens = hrvit_mobile.deploy(nano_model, img_size=(64, 96))
    switched, _ = _channels_first(tokens)

    def permutes_at_convs(model: nn.Module) -> int:
        ep = torch.export.export(model, (torch.randn(1, 3, 64, 96),), strict=True)
        count = 0
        for node in ep.graph.nodes:
            if node.op == "call_function" and "conv2d" in str(node.target):
                src = node.args[0]
                count += src.op == "call_function" and "permute" in str(src.target)
                count += sum("permute" in str(u.target) for u in node.users)
        return count

    assert permutes_at_convs(tokens) > 0  # the token layout: a permute on each side of the dwconvs
    assert permutes_at_convs(switched) == 0
    ops, max_rank, symbolic, matmuls = _exported_graph_facts(switched, (64, 96))
    assert max_rank <= 4 and not symbolic and not matmuls
    assert "aten.linear.default" not in ops  # every linear became a 1x1 conv


@pytest.mark.parametrize("factored_from", [0, 64])
def test_factored_des_computes_the_same_network(nano_model, factored_from: int) -> None:
    """DES kept as its two Kronecker factors (every block, or the 64/96-channel ones) gives the dense
    form's logits in both layouts and at batch two, with the official factors' weights only."""
    from hrvit_mobile.models.mlp import DES

    torch.manual_seed(5)
    x = torch.randn(2, 3, 64, 96)
    dense = hrvit_mobile.deploy(nano_model, batch_size=2, factored_des_from=None)
    factored = hrvit_mobile.deploy(nano_model, batch_size=2, factored_des_from=factored_from)
    blocks = [m for m in factored.modules() if hasattr(m, "des_factors")]
    widths = [m.des_right.in_features * (m.des_factors[0] if m.des_factors else 1) for m in blocks]
    assert [m.des_factors is not None for m in blocks] == [w >= factored_from for w in widths]
    assert any(m.des_factors is None for m in blocks) == (factored_from > 0)
    des_weights = sum(p.numel() for m in nano_model.modules() if isinstance(m, DES) for p in m.parameters())
    saved = sum(p.numel() for p in dense.parameters()) - sum(p.numel() for p in factored.parameters())
    assert 0 < saved < sum(2 * w * (w + 1) for w in widths)
    if factored_from == 0:  # every DES as the official module: its weights and nothing more
        dense_des = sum(p.numel() for n, p in dense.named_parameters() if ".des_" in n)
        assert saved == dense_des - des_weights
    switched, _ = _channels_first(factored)
    with torch.no_grad():
        reference = dense(x)
        assert (factored(x) - reference).abs().max() <= 1e-5
        assert (switched(x) - reference).abs().max() <= 1e-5
        assert (factored(x) - nano_model(x)).abs().max() <= 1e-4
    single = hrvit_mobile.deploy(nano_model, factored_des_from=factored_from)
    for model in (single, _channels_first(single)[0]):  # static shapes, rank <= 4 (batch one)
        _, max_rank, symbolic, matmuls = _exported_graph_facts(model, (64, 96))
        assert max_rank <= 4 and not symbolic and not matmuls


def test_b1_deploy_factors_the_wide_des_maps(b1_reference) -> None:
    """The default keeps DES factored from FACTORED_DES_MIN_CHANNELS channels (b1: the 128- and
    256-channel branches, 24 of 35 blocks); the narrower ones are dense."""
    from hrvit_mobile.deploy import FACTORED_DES_MIN_CHANNELS

    deployed = hrvit_mobile.deploy(b1_reference, img_size=(224, 224))
    blocks = [m for m in deployed.modules() if hasattr(m, "des_factors")]
    factored = [m for m in blocks if m.des_factors is not None]
    assert all(m.dim >= FACTORED_DES_MIN_CHANNELS for m in factored)
    assert all(m.dim < FACTORED_DES_MIN_CHANNELS for m in blocks if m.des_factors is None)
    assert (len(factored), len(blocks)) == (24, 35)


@pytest.mark.parametrize("affine", [True, False])
def test_native_layer_norm_computes_the_delegable_form(affine: bool) -> None:
    from hrvit_mobile.models.norm import DelegableLayerNorm, NativeLayerNorm

    torch.manual_seed(0)
    norm = nn.LayerNorm(48, eps=1e-6)
    nn.init.normal_(norm.weight)
    nn.init.normal_(norm.bias)
    delegable = DelegableLayerNorm.from_layer_norm(norm, affine=affine)
    native = NativeLayerNorm.from_delegable(delegable)
    x = 3 * torch.randn(2, 17, 48) + 1
    assert list(native.state_dict()) == list(delegable.state_dict())
    torch.testing.assert_close(native(x), delegable(x), rtol=1e-5, atol=1e-5)
    if affine:
        torch.testing.assert_close(native(x), norm(x), rtol=1e-5, atol=1e-5)


def test_native_norm_option_switches_the_token_norms_only(nano_model) -> None:
    """norm="native": every token-layout norm is one F.layer_norm; a channels-first form keeps its
    1x1-conv norms; the caller's module is not changed."""
    from hrvit_mobile.deploy import DeployOptions, with_options
    from hrvit_mobile.models.norm import ChannelLayerNorm, DelegableLayerNorm, NativeLayerNorm

    def kinds(model: nn.Module) -> set[type]:
        return {type(m) for m in model.modules() if isinstance(m, DelegableLayerNorm)}

    tokens = hrvit_mobile.deploy(nano_model, img_size=(64, 96))
    native = with_options(tokens, DeployOptions(norm="native"))
    assert kinds(tokens) == {DelegableLayerNorm} and kinds(native) == {NativeLayerNorm}
    channels_first = with_options(tokens, DeployOptions(layout="channels_first", norm="native"))
    assert kinds(channels_first) == {ChannelLayerNorm}
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert (native(x) - tokens(x)).abs().max() <= 1e-5


def test_one_decision_for_the_weights_without_a_checkpoint(tmp_path) -> None:
    """A checkpoint when given; else the demo checkpoint for the variant and classes it was trained for;
    else the recipe's deterministic weights."""
    from hrvit_mobile.demo import demo_checkpoint, load_demo_model
    from hrvit_mobile.weights import create_model_with_weights, load_recipe_weights

    demo = demo_checkpoint()
    model, source = create_model_with_weights(demo.model, demo.num_classes, (64, 64))
    assert demo.path.name in source and not model.training
    expected = load_demo_model((64, 64)).state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())
    other, source = create_model_with_weights(demo.model, demo.num_classes + 1, (64, 64))  # not its classes
    assert source.startswith("deterministic")
    recipe = load_recipe_weights(hrvit_mobile.create_model(demo.model, demo.num_classes + 1, (64, 64)))
    assert all(torch.equal(v, recipe.state_dict()[k]) for k, v in other.state_dict().items())
    path = tmp_path / "own.pth"
    torch.save(other.state_dict(), path)
    mine, source = create_model_with_weights(demo.model, demo.num_classes + 1, (64, 64), checkpoint=path)
    assert source == str(path)
    assert all(torch.equal(v, other.state_dict()[k]) for k, v in mine.state_dict().items())
