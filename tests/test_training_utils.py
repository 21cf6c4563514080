"""Loss, learning-rate schedule and checkpoints, against hand-computed values."""

from __future__ import annotations

import math
import os
import pickle

import pytest
import torch

from networks.UNet import UNet
from utils.checkpoint import (
    CheckpointError,
    find_checkpoint,
    load_checkpoint,
    model_from_payload,
    save_checkpoint,
    strip_wrapper_prefix,
)
from utils.losses import CEDiceLoss, dice_loss
from utils.training import MOMENTUM, POLY_POWER, WEIGHT_DECAY


def test_dice_loss_by_hand_on_two_pixels():
    # Equal logits: p = 0.5 everywhere. Target [0, 1]. For each class:
    # sum(p*t) = 0.5, sum(p^2) = 0.5, sum(t^2) = 1 -> 1 - (1 + 1e-5) / (1.5 + 1e-5).
    logits = torch.zeros(1, 2, 1, 2)
    target = torch.tensor([[[0, 1]]])
    expected = 1 - (1 + 1e-5) / (1.5 + 1e-5)
    assert dice_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)
    total, ce, dice = CEDiceLoss(0.4, 0.6)(logits, target)
    assert ce.item() == pytest.approx(math.log(2), rel=1e-6)
    assert total.item() == pytest.approx(0.4 * math.log(2) + 0.6 * expected, rel=1e-6)


def test_dice_loss_sums_over_the_whole_batch_and_counts_absent_classes():
    # Confident, perfect prediction of class 0 on both images; class 1 and 2 absent everywhere:
    # class 0 -> ~0; classes 1 and 2: (0 + 1e-5) / (~0 + 0 + 1e-5) -> loss ~0 as well (p^2 ~ e^-40).
    logits = torch.tensor([20.0, 0.0, 0.0]).view(1, 3, 1, 1).expand(2, 3, 2, 2).clone()
    target = torch.zeros(2, 2, 2, dtype=torch.long)
    p_other = math.exp(-20) / (1 + 2 * math.exp(-20))
    p_zero = 1 / (1 + 2 * math.exp(-20))
    n = 8  # pixels in the batch
    class0 = 1 - (2 * n * p_zero + 1e-5) / (n * p_zero**2 + n + 1e-5)
    class_other = 1 - 1e-5 / (n * p_other**2 + 1e-5)
    assert dice_loss(logits, target).item() == pytest.approx((class0 + 2 * class_other) / 3, abs=1e-6)


def test_dice_loss_wrong_prediction_is_near_one_per_class():
    # Every pixel confidently class 1 while the truth is class 0: classes 0 and 1 score ~1, class 2
    # is absent in both and scores ~0 -> mean ~2/3.
    logits = torch.tensor([-30.0, 30.0, -30.0]).view(1, 3, 1, 1).expand(1, 3, 4, 4).clone()
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    assert dice_loss(logits, target).item() == pytest.approx(2 / 3, abs=1e-5)


def published_loss(logits, target, ce_weight=0.4, dice_weight=0.6):
    """The reference's terms as it writes them: cross_entropy, and a softmax Dice against an
    int64 one-hot, one class at a time."""
    ce = torch.nn.functional.cross_entropy(logits, target)
    probs = logits.softmax(dim=1)
    onehot = torch.nn.functional.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).float()
    per_class = []
    for c in range(logits.shape[1]):
        intersect = (probs[:, c] * onehot[:, c]).sum()
        union = (probs[:, c] * probs[:, c]).sum() + (onehot[:, c] * onehot[:, c]).sum()
        per_class.append(1 - (2 * intersect + 1e-5) / (union + 1e-5))
    dice = sum(per_class) / logits.shape[1]
    return ce_weight * ce + dice_weight * dice, ce, dice


def test_the_loss_and_its_gradient_equal_the_published_formula():
    generator = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(3, 9, 20, 24, generator=generator)).requires_grad_()
    target = torch.randint(0, 9, (3, 20, 24), generator=generator)
    target[0] = 4  # one image of a single class
    ours = CEDiceLoss(0.4, 0.6)(logits, target)
    (grad,) = torch.autograd.grad(ours[0], logits)
    theirs = published_loss(logits, target)
    (expected,) = torch.autograd.grad(theirs[0], logits)
    for a, b in zip(ours, theirs):
        assert a.item() == pytest.approx(b.item(), rel=1e-6)
    torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-10)


def test_poly_schedule_equals_the_published_formula():
    base_lr, total = 0.05, 37
    params = [torch.nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.SGD(params, lr=base_lr, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    scheduler = torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=total, power=POLY_POWER)
    for iteration in range(total + 1):
        expected = base_lr * (1 - iteration / total) ** 0.9
        assert optimizer.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-9, abs=1e-15), iteration
        optimizer.step()
        scheduler.step()


def test_checkpoint_round_trip_and_atomic_write(tmp_path):
    path = tmp_path / "run" / "last.pth"
    payload = {"format": "hsa-unet-checkpoint-v1", "model": {"w": torch.arange(3.0)}, "epoch": 4}
    save_checkpoint(path, payload)
    assert sorted(os.listdir(path.parent)) == ["last.pth"]  # no temporary file left behind
    loaded = load_checkpoint(path)
    assert loaded["epoch"] == 4 and torch.equal(loaded["model"]["w"], torch.arange(3.0))


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "last.pth"
    save_checkpoint(path, {"epoch": 1})

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(path, {"epoch": 2, "bad": Unpicklable()})
    assert load_checkpoint(path)["epoch"] == 1
    assert sorted(os.listdir(tmp_path)) == ["last.pth"]


class Payload:
    """Unpickling this runs code: exactly what weights_only loading must refuse."""

    def __reduce__(self):
        return (os.system, ("touch pwned_by_checkpoint",))


def test_a_checkpoint_that_would_run_code_is_refused_and_its_code_never_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    torch.save({"model": Payload()}, path)
    with pytest.raises(CheckpointError, match=r"refused to load .*evil\.pth.*could run code"):
        load_checkpoint(path)
    assert not (tmp_path / "pwned_by_checkpoint").exists()


def test_missing_and_corrupt_checkpoints_are_one_line_errors(tmp_path):
    with pytest.raises(CheckpointError, match=r"nope\.pth does not exist"):
        load_checkpoint(tmp_path / "nope.pth")
    corrupt = tmp_path / "corrupt.pth"
    save_checkpoint(corrupt, {"epoch": 1})
    corrupt.write_bytes(corrupt.read_bytes()[:50])
    with pytest.raises(CheckpointError, match=r"corrupt\.pth is not a readable PyTorch checkpoint") as info:
        load_checkpoint(corrupt)
    assert "\n" not in str(info.value)
    text = tmp_path / "notes.pth"
    text.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(CheckpointError):
        load_checkpoint(text)


def test_wrapper_prefix_is_stripped_only_when_every_key_has_it():
    assert strip_wrapper_prefix({"module.a": 1, "module.b": 2}) == {"a": 1, "b": 2}
    assert strip_wrapper_prefix({"module.a": 1, "b": 2}) == {"module.a": 1, "b": 2}


def test_plain_state_dict_with_module_prefix_loads_given_module(tmp_path):
    model = UNet(num_classes=3, base_channels=4, depth=2)
    path = tmp_path / "weights.pth"
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, path)
    kwargs = {"num_classes": 3, "base_channels": 4, "depth": 2}
    payload = load_checkpoint(path)
    rebuilt = model_from_payload(payload, path, "networks.UNet.UNet", kwargs)
    assert all(torch.equal(a, b) for a, b in zip(rebuilt.state_dict().values(), model.state_dict().values()))
    with pytest.raises(CheckpointError, match="plain state dict .* pass --module"):
        model_from_payload(payload, path)
    with pytest.raises(CheckpointError, match=r"do not fit UNet \(wrong --module or --num_classes\?\).*head\.weight"):
        model_from_payload(payload, path, "networks.UNet.UNet", {**kwargs, "num_classes": 5})


def test_find_checkpoint_prefers_best_then_final_epoch_then_last(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        find_checkpoint(tmp_path, "DAEFormer", 400)
    for name in ("last.pth", "DAEFormer_epoch_399.pth", "best.pth"):
        (tmp_path / name).write_bytes(b"x")
        assert find_checkpoint(tmp_path, "DAEFormer", 400).name == name
        assert find_checkpoint(tmp_path, None, 400).name == name
    (tmp_path / "best.pth").unlink()
    (tmp_path / "UNet_epoch_399.pth").write_bytes(b"x")  # two candidates: ambiguous without a name
    assert find_checkpoint(tmp_path, None, 400).name == "last.pth"
    assert find_checkpoint(tmp_path, "UNet", 400).name == "UNet_epoch_399.pth"
