"""The --module loader: every failure is its own one-line error; a plugin on PYTHONPATH works."""

from __future__ import annotations

import textwrap

import pytest
from torch import nn

from networks.DAEFormer import DAEFormer
from networks.UNet import UNet
from utils import (
    ModuleLoadError,
    available_networks,
    build_network,
    load_network_class,
    network_arguments,
)

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
