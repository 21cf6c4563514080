"""The field's network libraries through --module with no wrapper: segmentation_models_pytorch
and MONAI networks train on the phantom with train.py and test.py rebuilds them from the
checkpoint alone; outputs are reduced to logits by one rule; nothing downloads."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from tests.conftest import REPO, SCRIPT_ENV, load_test_script, phantom_test_args, run_script, tiny_train_args
from utils.checkpoint import load_checkpoint
from utils.loader import (
    ModuleLoadError,
    build_network,
    class_count,
    load_network_class,
    network_arguments,
    segmentation_logits,
)

smp = pytest.importorskip("segmentation_models_pytorch")
monai = pytest.importorskip("monai")

# Every network the README lists as supported, at a size that trains an epoch of the 32 x 32
# phantom in a few seconds. The module, its constructor arguments as the checkpoint must record
# them (the scripts' inputs under the constructor's own names), and the --model_kwargs given.
SMALL_SMP = {"encoder_weights": None, "encoder_depth": 3, "decoder_channels": [16, 8, 4]}
NETWORKS = {
    "smp-unet-resnet18": ("segmentation_models_pytorch.Unet", {"encoder_name": "resnet18", **SMALL_SMP}),
    "smp-unet-timm": ("segmentation_models_pytorch.Unet", {"encoder_name": "tu-resnet10t", **SMALL_SMP}),
    "smp-deeplabv3plus": (
        "segmentation_models_pytorch.DeepLabV3Plus",
        {"encoder_name": "resnet18", "encoder_weights": None, "encoder_depth": 4, "decoder_channels": 16},
    ),
    "smp-segformer": (
        "segmentation_models_pytorch.Segformer",
        {"encoder_name": "mit_b0", "encoder_weights": None, "decoder_segmentation_channels": 16},
    ),
    "monai-basicunet": ("monai.networks.nets.BasicUNet", {"features": [4, 4, 8, 8, 16, 4]}),
    "monai-attentionunet": ("monai.networks.nets.AttentionUnet", {"channels": [4, 8, 16], "strides": [2, 2]}),
    # (batch norm: at 32 x 32 the bottleneck is 1 x 1, which instance norm cannot normalise)
    "monai-swinunetr": (
        "monai.networks.nets.SwinUNETR",
        {"feature_size": 12, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1], "window_size": 4, "norm_name": "batch"},
    ),
    "monai-unetr": (
        "monai.networks.nets.UNETR",
        {"feature_size": 4, "hidden_size": 24, "mlp_dim": 24, "num_heads": 2},
    ),
}
SMP_NAMES = {"classes": 9, "in_channels": 1}
MONAI_NAMES = {"out_channels": 9, "in_channels": 1, "spatial_dims": 2}


def expected_kwargs(module: str, given: dict) -> dict:
    names = dict(SMP_NAMES if module.startswith("segmentation_models_pytorch") else MONAI_NAMES)
    if module.endswith("UNETR") and not module.endswith("SwinUNETR"):
        names["img_size"] = 32  # UNETR names img_size; SwinUNETR (MONAI 1.5+) no longer does
    return {**names, **given}


@pytest.mark.parametrize("name", NETWORKS)
def test_a_library_network_trains_and_test_py_rebuilds_it_with_no_network_flags(phantom, tmp_path, name):
    module, given = NETWORKS[name]
    run = tmp_path / "run"
    # DeepLabV3+ normalises a globally pooled (B, C, 1, 1) feature: a last batch of 1 slice cannot train
    batch = next(b for b in (4, 3, 5) if phantom["num_train_slices"] % b != 1)
    extra = ("--max_epochs", "1", "--eval_interval", "0", "--batch_size", str(batch))
    extra += ("--module", module, "--model_kwargs", json.dumps(given))
    result = run_script(*tiny_train_args(phantom, run, *extra))
    assert result.returncode == 0, result.stderr[-2000:]
    checkpoint = load_checkpoint(run / "last.pth")
    assert checkpoint["module"] == module
    assert checkpoint["model_kwargs"] == expected_kwargs(module, given)
    # the state dict is the network's own: it loads into the bare library class
    bare = load_network_class(module)(**checkpoint["model_kwargs"])
    bare.load_state_dict(checkpoint["model"], strict=True)

    save = tmp_path / "test"
    # (in this process: the libraries are imported once for all the networks)
    assert load_test_script().main(phantom_test_args(phantom, run / "last.pth", save, "--workers", "0")) == 0
    metrics = json.loads((save / "metrics.json").read_text())
    assert [case["case"] for case in metrics["cases"]] == phantom["test_case_ids"]
    assert len(metrics["per_class"]) == 8 and 0.0 <= metrics["mean_dice"] <= 1.0


def test_the_scripts_inputs_go_to_the_names_each_constructor_has():
    assert network_arguments(smp.Unet, 9, 224, None, encoder_weights=None) == {
        "classes": 9,
        "in_channels": 1,
        "encoder_weights": None,
    }
    assert network_arguments(smp.Unet, 2, 224, 3) == {"classes": 2, "in_channels": 3}
    unetr = monai.networks.nets.UNETR
    assert network_arguments(unetr, 9, 64, None) == {"out_channels": 9, "in_channels": 1, "img_size": 64, "spatial_dims": 2}
    # --model_kwargs wins over every name the loader sets
    assert network_arguments(unetr, 9, 64, None, spatial_dims=3)["spatial_dims"] == 3
    assert class_count({"out_channels": 5, "in_channels": 1}) == 5 and class_count({"classes": 3}) == 3
    assert class_count({"features": 3}) is None


class Heads(nn.Module):
    """A network whose output is whatever ``shape`` says: several heads in a container."""

    def __init__(self, num_classes: int = 3, shape: str = "tuple") -> None:
        super().__init__()
        self.seg = nn.Conv2d(1, num_classes, 1)
        self.shape = shape

    def forward(self, x: torch.Tensor):
        logits = self.seg(x)
        label = logits.mean(dim=(2, 3))  # (B, C): a classification head
        low = logits[:, :, ::2, ::2]  # a deep-supervision output at half size
        if self.shape == "tuple":
            return label, (low, logits)
        if self.shape == "dict":
            return {"aux": low, "out": logits, "label": label}
        return [label, low]


@pytest.mark.parametrize("shape", ["tuple", "dict"])
def test_a_container_output_is_reduced_to_the_first_tensor_at_the_input_size(shape):
    torch.manual_seed(0)
    model = Heads(shape=shape)
    model.register_forward_hook(segmentation_logits)
    x = torch.rand(2, 1, 8, 6)
    assert torch.equal(model(x), model.seg(x))
    assert list(model.state_dict()) == ["seg.weight", "seg.bias"]  # the hook adds no key


def test_an_output_with_no_logits_is_a_one_line_error_saying_what_it_returned():
    model = Heads(shape="list")
    model.register_forward_hook(segmentation_logits)
    with pytest.raises(ModuleLoadError) as info:
        model(torch.rand(2, 1, 8, 6))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("Heads returned list(Tensor(2, 3), Tensor(2, 3, 4, 3)), with no 2 x C x 8 x 6 tensor")


def test_smp_auxiliary_head_is_dropped_and_the_state_dict_keeps_its_keys():
    kwargs = {"classes": 4, "in_channels": 1, "encoder_name": "resnet18", **SMALL_SMP, "aux_params": {"classes": 4}}
    torch.manual_seed(0)
    model = build_network("segmentation_models_pytorch.Unet", kwargs).eval()
    torch.manual_seed(0)
    bare = smp.Unet(**kwargs).eval()
    assert list(model.state_dict()) == list(bare.state_dict())
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        mask, label = bare(x)
        torch.testing.assert_close(model(x), mask)
    assert label.shape == (1, 4)


def run_offline(code: str, cache: str) -> subprocess.CompletedProcess:
    env = {**SCRIPT_ENV, "HF_HUB_CACHE": cache, "HF_HOME": cache}
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env=env, timeout=120)


def test_pretrained_weights_not_in_the_cache_are_a_one_line_error_not_a_download(tmp_path):
    # encoder_weights="imagenet" is smp's default: leaving it out asks for a download too
    code = (
        "from utils.loader import build_network\n"
        "try:\n"
        "    build_network('segmentation_models_pytorch.Unet', {'classes': 2, 'in_channels': 1, 'encoder_name': 'resnet18'})\n"
        "except Exception as error:\n"
        "    print(type(error).__name__, error)\n"
    )
    result = run_offline(code, str(tmp_path / "empty-cache"))
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip()
    assert "\n" not in line
    assert line.startswith("ModuleLoadError --module segmentation_models_pytorch.Unet: encoder_weights='imagenet' would download")
    assert """--model_kwargs '{"encoder_weights": null}'""" in line
    assert not list((tmp_path / "empty-cache").rglob("*.safetensors"))


def test_pretrained_weights_already_in_the_local_cache_load(tmp_path):
    """A Hugging Face cache holding smp's resnet18 'imagenet' encoder (here: random weights written
    where the hub keeps that file) builds offline, with exactly those weights."""
    from safetensors.torch import save_file

    settings = smp.encoders.encoders["resnet18"]["pretrained_settings"]["imagenet"]
    snapshot = tmp_path / "cache" / f"models--{settings['repo_id'].replace('/', '--')}" / "snapshots" / settings["revision"]
    snapshot.mkdir(parents=True)
    torch.manual_seed(1)
    encoder = smp.encoders.get_encoder("resnet18", in_channels=3, depth=5, weights=None)
    save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(snapshot / "model.safetensors"))
    (snapshot / "config.json").write_text("{}")
    saved = tmp_path / "expected.pt"
    torch.save(encoder.state_dict()["layer1.0.conv1.weight"], saved)
    code = (
        "import torch\nfrom utils.loader import build_network\n"
        "model = build_network('segmentation_models_pytorch.Unet', {'classes': 2, 'in_channels': 3, 'encoder_name': 'resnet18'})\n"
        f"print(torch.equal(model.encoder.layer1[0].conv1.weight, torch.load({str(saved)!r})))\n"
    )
    result = run_offline(code, str(tmp_path / "cache"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "True"


def test_a_library_that_is_not_installed_names_the_package_to_install():
    # (a fresh process: in this one MONAI's submodules are already imported)
    code = (
        "import sys\nsys.modules['monai'] = None  # import monai now fails as if it were not installed\n"
        "from utils.loader import load_network_class\n"
        "try:\n    load_network_class('monai.networks.nets.BasicUNet')\n"
        "except Exception as error:\n    print(type(error).__name__, error)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env=SCRIPT_ENV, timeout=60)
    assert result.stdout == (
        "ModuleLoadError --module monai.networks.nets.BasicUNet: the library 'monai' is not installed; "
        "pip install monai==1.6.1 (the version the tests use, requirements-test.txt)\n"
    )


def test_a_timm_encoder_loads_its_pretrained_weights_from_a_local_file(tmp_path):
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    torch.manual_seed(3)
    source = timm.create_model("resnet10t", pretrained=False)
    path = tmp_path / "resnet10t.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    overlay = {"encoder_weights": True, "pretrained_cfg_overlay": {"file": str(path)}}
    kwargs = {"classes": 2, "in_channels": 3, "encoder_name": "tu-resnet10t", **SMALL_SMP, **overlay}
    model = build_network("segmentation_models_pytorch.Unet", kwargs)
    assert torch.equal(model.encoder.model.conv1[0].weight, source.conv1[0].weight)


def test_a_checkpoint_rebuild_can_skip_the_pretrained_weights_it_will_replace(tmp_path):
    # what utils.checkpoint can pass: the checkpoint's weights replace the encoder's anyway
    code = (
        "from utils.loader import build_network\n"
        "kwargs = {'classes': 2, 'in_channels': 1, 'encoder_name': 'resnet18', 'encoder_weights': 'imagenet'}\n"
        "model = build_network('segmentation_models_pytorch.Unet', kwargs, pretrained=False)\n"
        "print(kwargs['encoder_weights'], len(model.state_dict()))\n"
    )
    result = run_offline(code, str(tmp_path / "empty-cache"))
    assert result.returncode == 0, result.stderr[-2000:]
    expected = len(smp.Unet(encoder_name="resnet18", encoder_weights=None, in_channels=1, classes=2).state_dict())
    assert result.stdout.split() == ["imagenet", str(expected)]
