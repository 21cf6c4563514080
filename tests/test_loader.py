"""The --module loader: every failure is its own one-line error; a plugin on PYTHONPATH works."""

from __future__ import annotations

import copy
import textwrap

import pytest
import torch
from torch import nn

from networks.DAEFormer import DAEFormer
from networks.UNet import UNet
from utils import (
    ModuleLoadError,
    available_networks,
    build_network,
    load_network_class,
    network_arguments,
    to_device,
)
from utils.errors import UserError
from utils.loader import parse_model_kwargs

PLUGIN = textwrap.dedent(
    """
    import torch
    from torch import nn

    class TinyNet(nn.Module):
        def __init__(self, num_classes, width=3):
            super().__init__()
            self.width = width
            self.conv = nn.Conv2d(1, num_classes, 1)

        def forward(self, x):
            return self.conv(x)

    def not_a_class():
        pass

    class NotANetwork:
        pass
    """
)


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """A user's package ``my_nets`` in a temporary folder on sys.path."""
    package = tmp_path / "my_nets"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "tiny.py").write_text(PLUGIN)
    (package / "needs_dep.py").write_text("import surely_not_installed_pkg\n")
    (package / "broken.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_nets"


def test_in_tree_networks_load():
    assert load_network_class("networks.DAEFormer.DAEFormer") is DAEFormer
    assert load_network_class("networks.UNet.UNet") is UNet
    assert available_networks() == ["networks.DAEFormer.DAEFormer", "networks.UNet.UNet"]


def test_a_plugin_package_on_the_path_loads_and_builds(plugin):
    cls = load_network_class("my_nets.tiny.TinyNet")
    assert issubclass(cls, nn.Module)
    model = build_network("my_nets.tiny.TinyNet", network_arguments(cls, num_classes=4, img_size=64, in_chans=1, width=7))
    assert model.conv.out_channels == 4 and model.width == 7


@pytest.mark.parametrize(
    "path, message",
    [
        ("DAEFormer", r"^--module 'DAEFormer' is not a dotted path package\.module\.ClassName; e\.g\."),
        ("networks.Nope.Net", r"no module named 'networks\.Nope'.*networks\.DAEFormer\.DAEFormer, networks\.UNet\.UNet$"),
        ("nowhere_pkg.mod.Net", r"no module named 'nowhere_pkg\.mod'"),
        ("my_nets.needs_dep.Net", r"found but it imports 'surely_not_installed_pkg', which is not installed"),
        ("my_nets.broken.Net", r"importing 'my_nets\.broken' failed: RuntimeError: boom at import"),
        ("my_nets.tiny.TinyNett", r"has no class 'TinyNett'; did you mean my_nets\.tiny\.TinyNet\?"),
        ("my_nets.tiny.not_a_class", r"'not_a_class' is not a torch\.nn\.Module subclass"),
        ("my_nets.tiny.NotANetwork", r"'NotANetwork' is not a torch\.nn\.Module subclass"),
    ],
)
def test_each_failure_is_its_own_one_line_error(plugin, path, message):
    with pytest.raises(ModuleLoadError, match=message) as info:
        load_network_class(path)
    assert "\n" not in str(info.value)


def test_constructor_rejecting_arguments_is_an_error_naming_them(plugin):
    with pytest.raises(ModuleLoadError, match=r"constructor rejected arguments \{'num_classes': 2, 'depth': 3\}"):
        build_network("my_nets.tiny.TinyNet", {"num_classes": 2, "depth": 3})
    with pytest.raises(ModuleLoadError, match="img_size must be a multiple of 16"):
        build_network("networks.DAEFormer.DAEFormer", {"num_classes": 2, "img_size": 100})


def test_img_size_and_in_chans_are_passed_only_where_the_constructor_names_them(plugin):
    tiny = load_network_class("my_nets.tiny.TinyNet")
    assert network_arguments(tiny, num_classes=9, img_size=224, in_chans=1) == {"num_classes": 9}
    assert network_arguments(DAEFormer, num_classes=9, img_size=224, in_chans=1) == {
        "num_classes": 9,
        "img_size": 224,
        "in_chans": 1,
    }
    assert network_arguments(UNet, num_classes=2, img_size=None, base_channels=8) == {"num_classes": 2, "base_channels": 8}


class FlattensAcrossChannels(nn.Module):
    """A network that .view()s a convolution's output across channels and space: it fails in
    channels_last, so it does not opt in."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y.view(len(y), -1).view_as(y)


def test_to_device_puts_an_opted_in_network_in_channels_last_on_a_cpu_with_the_same_labels():
    torch.manual_seed(0)
    reference = UNet(num_classes=9, img_size=32, base_channels=4, depth=2).eval()
    placed = to_device(copy.deepcopy(reference), "cpu")
    # (a 1x1 kernel or a 1-channel input is stored alike in both layouts)
    convs = [m.weight for m in placed.modules() if isinstance(m, nn.Conv2d) and m.in_channels > 1 and m.kernel_size != (1, 1)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous() for w in convs)
    x = torch.rand(3, 1, 32, 32)
    with torch.inference_mode():
        expected, got = reference(x), placed(x)
    assert got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(got.argmax(1), expected.argmax(1))


def test_to_device_leaves_a_network_that_does_not_opt_in_as_it_is():
    model = to_device(FlattensAcrossChannels(), "cpu")
    assert model.conv.weight.is_contiguous()
    assert model(torch.rand(2, 1, 8, 8)).shape == (2, 4, 8, 8)
    # what opting in would have done to it
    with pytest.raises(RuntimeError, match="view size is not compatible"):
        model.to(memory_format=torch.channels_last)(torch.rand(2, 1, 8, 8))


@pytest.mark.parametrize("name", ["num_classes", "img_size", "in_chans"])
def test_model_kwargs_that_set_what_a_flag_sets_are_a_one_line_error(name):
    with pytest.raises(UserError, match=f"--model_kwargs sets {name}; give it as --{name} instead"):
        parse_model_kwargs(f'{{"{name}": 4, "base_channels": 8}}')
