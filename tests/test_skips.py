"""DAE-Former's skip connections as constructor arguments: the paper's ablation (0-3 skips, with
or without Skip Connection Cross Attention), the default still the published network."""

from __future__ import annotations

import json

import pytest
import torch

from networks.DAEFormer import DAEFormer
from tests.conftest import run_script, tiny_train_args
from tests.reference_daeformer import reference_forward
from tests.test_networks import published_state_dict
from utils.checkpoint import load_checkpoint

TINY = dict(num_classes=4, img_size=32, dims=(16, 32, 64), depths=(1, 1, 1), heads=4)


@pytest.mark.parametrize("attention", [True, False], ids=["scca", "concat"])
@pytest.mark.parametrize("skips", [0, 1, 2, 3])
def test_every_skip_setting_builds_and_trains_a_step_with_a_gradient_for_every_parameter(skips, attention):
    torch.manual_seed(0)
    model = DAEFormer(**TINY, skips=skips, skip_attention=attention)
    images, labels = torch.rand(2, 1, 32, 32), torch.randint(0, 4, (2, 32, 32))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    loss = torch.nn.functional.cross_entropy(model(images), labels)
    loss.backward()
    # a module built but never called (as the reference's 14x14 fusion) would have no gradient
    unused = [name for name, p in model.named_parameters() if p.grad is None]
    assert not unused
    optimizer.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(p, before[name]) for name, p in model.named_parameters())
    fused_modules = [name for name in model.state_dict() if ".cross_attn." in name or ".concat_linear." in name]
    levels = {name.split(".")[0] for name in fused_modules}
    assert levels == {"decoder_0", "decoder_1", "decoder_2"} - {f"decoder_{k}" for k in range(skips, 3)}
    assert any(".cross_attn." in name for name in fused_modules) == (attention and skips > 0)


def test_fewer_skips_change_the_prediction():
    torch.manual_seed(0)
    published = DAEFormer(**TINY).eval()
    fewer = DAEFormer(**TINY, skips=1).eval()
    fewer.load_state_dict({k: v for k, v in published.state_dict().items() if not k.startswith("decoder_1.c")})
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(published(x), fewer(x))


def test_the_default_is_the_published_network_in_layout_and_logits():
    sd = published_state_dict()
    default, explicit = DAEFormer(), DAEFormer(skips=2, skip_attention=True)
    assert list(default.state_dict()) == list(explicit.state_dict())
    default.load_state_dict(sd)
    x = torch.rand(1, 1, 64, 48, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(default.eval()(x), reference_forward(sd, x), rtol=1e-4, atol=1e-4)


def test_three_skips_use_the_14x14_fusion_tensors_the_published_checkpoint_holds():
    sd = published_state_dict()
    model = DAEFormer(skips=3)
    model.load_state_dict(sd, strict=True)
    assert torch.equal(model.state_dict()["decoder_2.concat_linear.weight"], sd["decoder_2.concat_linear.weight"])


def test_a_skip_count_out_of_range_is_refused():
    with pytest.raises(ValueError, match="skips must be 0 to 3"):
        DAEFormer(**TINY, skips=4)


def test_the_ablation_runs_through_model_kwargs(phantom, tmp_path):
    kwargs = json.dumps({k: v for k, v in TINY.items() if k not in ("num_classes", "img_size")} | {"skips": 1})
    args = tiny_train_args(phantom, tmp_path, "--max_epochs", "1", "--eval_interval", "0")
    args = [*args, "--module", "networks.DAEFormer.DAEFormer", "--model_kwargs", kwargs]
    result = run_script(*args)
    assert result.returncode == 0, result.stderr
    recorded = json.loads((tmp_path / "args.json").read_text())["model_kwargs"]
    assert recorded["skips"] == 1
    weights = load_checkpoint(tmp_path / "last.pth")["model"]
    assert any(name.startswith("decoder_0.cross_attn.") for name in weights)
    assert not any(name.startswith(("decoder_1.cross_attn.", "decoder_1.concat_linear.")) for name in weights)
