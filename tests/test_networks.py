"""DAE-Former and U-Net: the published layout, equality with an independent forward pass,
shapes, gradients and argument errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from networks.DAEFormer import DAEFormer
from networks.UNet import UNet
from tests.reference_daeformer import reference_forward

LAYOUT = Path(__file__).parent / "data" / "daeformer_state_dict.tsv"
SMALL = dict(dims=(16, 32, 64), depths=(1, 1, 2), heads=4)


def published_layout() -> list[tuple[str, tuple[int, ...]]]:
    rows = [line.split("\t") for line in LAYOUT.read_text().splitlines()]
    return [(name, tuple(int(n) for n in re.findall(r"\d+", shape))) for name, shape in rows]


def published_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A checkpoint in the published layout: the model's own initial weights, perturbed so no
    tensor keeps a trivial value, plus random values for the tensors the reference never uses."""
    generator = torch.Generator().manual_seed(seed)
    own = DAEFormer().state_dict()
    sd = {}
    for name, shape in published_layout():
        noise = 0.02 * torch.randn(shape, generator=generator)
        sd[name] = own[name] + noise if name in own else noise
    return sd


@pytest.fixture(scope="module")
def published_sd() -> dict[str, torch.Tensor]:
    return published_state_dict()


def test_every_kept_tensor_matches_the_published_layout_in_name_shape_and_order():
    layout = published_layout()
    assert len(layout) == 629
    shapes = dict(layout)
    ours = DAEFormer(num_classes=9).state_dict()
    assert len(ours) == 429
    for name, tensor in ours.items():
        assert name in shapes, name
        assert tuple(tensor.shape) == shapes[name], name
    assert list(ours) == [name for name, _ in layout if name in ours]


def test_dropped_tensors_are_exactly_the_modules_the_reference_never_calls():
    ours = set(DAEFormer().state_dict())
    dropped = [(name, shape) for name, shape in published_layout() if name not in ours]
    unused_decoder = [n for n, _ in dropped if n.startswith("decoder_2.")]
    unused_norms = [n for n, _ in dropped if not n.startswith("decoder_2.")]
    assert all(re.search(r"\.mlp\d?\.norm[23]\.(weight|bias)$", n) for n in unused_norms)
    assert all(re.match(r"decoder_2\.(x1_linear|cross_attn|concat_linear|layer_former_[12])\.", n) for n in unused_decoder)
    # The published checkpoint (tests/data/daeformer_state_dict.tsv): 48,073,065 in all, 18,382,864 of them never receive a gradient.
    assert sum(torch.Size(s).numel() for _, s in published_layout()) == 48_073_065
    assert sum(torch.Size(s).numel() for _, s in dropped) == 18_382_864


def test_parameter_count_of_the_published_configuration():
    assert sum(p.numel() for p in DAEFormer(num_classes=9).parameters()) == 29_690_201
    assert len(list(DAEFormer().buffers())) == 0


def test_published_state_dict_loads_strictly_and_round_trips(published_sd):
    model = DAEFormer(num_classes=9)
    result = model.load_state_dict(published_sd, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, published_sd[name]), name
    again = DAEFormer(num_classes=9)
    again.load_state_dict(model.state_dict(), strict=True)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values()))


def test_loading_does_not_modify_the_callers_state_dict(published_sd):
    before = set(published_sd)
    DAEFormer().load_state_dict(published_sd)
    assert set(published_sd) == before


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda sd: sd.update({"decoder_1.extra.weight": torch.zeros(1)}), "decoder_1.extra.weight"),
        (lambda sd: sd.pop("decoder_0.last_layer.bias"), "decoder_0.last_layer.bias"),
        (lambda sd: sd.update({"backbone.norm1.weight": torch.zeros(7)}), "backbone.norm1.weight"),
        (lambda sd: sd.pop("backbone.block1.0.mlp1.norm1.weight"), "backbone.block1.0.mlp1.norm1.weight"),
    ],
    ids=["unexpected", "missing", "mis-shaped", "used-norm-missing"],
)
def test_any_other_difference_from_the_layout_is_an_error_naming_the_tensor(published_sd, edit, message):
    sd = dict(published_sd)
    edit(sd)
    with pytest.raises(RuntimeError, match=re.escape(message)):
        DAEFormer().load_state_dict(sd, strict=True)


def test_published_weights_give_the_reference_logits(published_sd):
    model = DAEFormer(num_classes=9).eval()
    model.load_state_dict(published_sd)
    x = torch.rand(2, 1, 64, 48, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(x)
        expected = reference_forward(published_sd, x)
    assert ours.shape == (2, 9, 64, 48)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)


def test_small_configuration_matches_the_reference_and_takes_3_channels():
    torch.manual_seed(3)
    model = DAEFormer(num_classes=4, **SMALL).eval()
    with torch.no_grad():
        for p in model.parameters():  # move every weight off its initial value
            p.add_(0.05 * torch.randn_like(p))
    x = torch.randn(1, 3, 32, 80)
    with torch.no_grad():
        torch.testing.assert_close(
            model(x), reference_forward(model.state_dict(), x, depths=SMALL["depths"], heads=4), rtol=1e-4, atol=1e-4
        )


def test_one_channel_input_equals_the_repeated_three_channel_input():
    model = DAEFormer(num_classes=3, **SMALL).eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x.repeat(1, 3, 1, 1)))


@pytest.mark.parametrize("network", ["daeformer", "unet"])
@pytest.mark.parametrize("num_classes", [2, 9])
@pytest.mark.parametrize("size", [(32, 32), (48, 64), (96, 16)])
def test_output_shape(network, num_classes, size):
    model = DAEFormer(num_classes=num_classes, **SMALL) if network == "daeformer" else UNet(num_classes, base_channels=4, depth=4)
    out = model(torch.randn(2, 1, *size))
    assert out.shape == (2, num_classes, *size)
    assert out.dtype == torch.float32


@pytest.mark.parametrize(
    "model", [DAEFormer(num_classes=5, **SMALL), UNet(num_classes=5, base_channels=4, depth=3)], ids=["daeformer", "unet"]
)
def test_every_parameter_receives_a_gradient(model):
    x = torch.randn(2, 1, 32, 32)
    model(x).logsumexp(dim=1).mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize(
    "model, size, message",
    [
        (DAEFormer(num_classes=2, **SMALL), (1, 1, 40, 32), r"multiples of 16, got 40x32; pad or resize to 48x32"),
        (DAEFormer(num_classes=2, **SMALL), (1, 2, 32, 32), r"3-channel input \(or 1 channel\), got 2"),
        (DAEFormer(num_classes=2, **SMALL), (1, 32, 32), r"\(B, C, H, W\) batch"),
        (UNet(num_classes=2, base_channels=4, depth=3), (1, 1, 36, 36), r"multiples of 8, got 36x36"),
    ],
)
def test_unsupported_input_is_a_value_error_that_says_which_sizes_work(model, size, message):
    with pytest.raises(ValueError, match=message):
        model(torch.randn(*size))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_classes=0), "num_classes"),
        (dict(dims=(16, 32)), "3 entries"),
        (dict(dims=(16, 30, 64), heads=4), "divisible by heads"),
        (dict(img_size=100), "img_size must be a multiple of 16"),
        (dict(depths=(1, -1, 1)), "non-negative"),
    ],
)
def test_daeformer_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DAEFormer(**{**SMALL, **kwargs})


def test_unet_parameter_count_by_hand():
    # stem DoubleConv(1, 4): 1*4*9 + 8 + 4*4*9 + 8 = 196; down DoubleConv(4, 8): 288 + 16 + 576 + 16 = 896;
    # up ConvTranspose(8, 4, 2): 128 + 4 = 132; fuse DoubleConv(8, 4): 288 + 8 + 144 + 8 = 448; head: 4*2 + 2 = 10.
    assert sum(p.numel() for p in UNet(num_classes=2, in_chans=1, base_channels=4, depth=1).parameters()) == 1682


def test_unet_rejects_bad_arguments():
    with pytest.raises(ValueError, match="img_size must be a multiple of 2\\*\\*depth = 16"):
        UNet(num_classes=2, img_size=100, depth=4)
    with pytest.raises(ValueError, match="must be positive"):
        UNet(num_classes=2, depth=0)
