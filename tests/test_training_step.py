"""The training step of utils.training: gradient accumulation, activation checkpointing, the
published flag lists, the poly schedule."""

from __future__ import annotations

from unittest import mock

import pytest
import torch

import train as train_script
from networks import blocks
from networks.DAEFormer import DAEFormer
from tests.conftest import load_test_script
from utils.losses import CEDiceLoss
from utils.training import build_optimizer, build_scheduler, poly_lr, scaled_lr, train_step

# A DAE-Former small enough for a CPU test; LayerNorm only, so no batch statistics.
TINY = dict(num_classes=4, img_size=32, dims=(16, 32, 32), depths=(1, 1, 1), heads=2)


def tiny_setup(seed: int = 0):
    torch.manual_seed(seed)
    model = DAEFormer(**TINY).train()
    optimizer = build_optimizer(model, lr=0.05)
    scheduler = build_scheduler(optimizer, total_iterations=10)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return model, optimizer, scheduler, scaler


def batch(seed: int, size: int = 2):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(size, 1, 32, 32, generator=generator)
    labels = torch.randint(0, 4, (size, 32, 32), generator=generator)
    return images, labels


def test_n_micro_batches_of_b_equal_one_step_of_n_times_b():
    # Cross-entropy is a mean over pixels, so accumulating N equal micro-batches is one big batch.
    criterion = CEDiceLoss(ce_weight=1.0, dice_weight=0.0)
    (x1, y1), (x2, y2) = batch(1), batch(2)
    accumulated, *rest_a = tiny_setup()
    losses = train_step(accumulated, [(x1, y1), (x2, y2)], criterion, *rest_a)
    whole, *rest_w = tiny_setup()
    whole_losses = train_step(whole, [(torch.cat([x1, x2]), torch.cat([y1, y2]))], criterion, *rest_w)
    for (name, a), b in zip(accumulated.named_parameters(), whole.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    assert losses.loss.item() == pytest.approx(whole_losses.loss.item(), rel=1e-6)
    assert rest_a[0].param_groups[0]["lr"] == pytest.approx(poly_lr(0.05, 1, 10))


def test_activation_checkpointing_gives_the_same_gradients():
    x, y = batch(3)
    grads = []
    for checkpointed in (False, True):
        model = tiny_setup()[0]
        model.set_grad_checkpointing(checkpointed)
        with mock.patch("networks.blocks.checkpoint", wraps=blocks.checkpoint) as recompute:
            loss, _, _ = CEDiceLoss()(model(x), y)
        assert recompute.called == checkpointed  # the blocks really went through torch's checkpoint
        loss.backward()
        grads.append({name: p.grad.clone() for name, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-5, atol=1e-7, msg=name)


def test_the_lr_rules_by_hand():
    assert scaled_lr(0.05, 20) == pytest.approx(0.05 * 20 / 24)  # the published batch 20
    assert scaled_lr(0.05, 24) == 0.05 and scaled_lr(0.05, 8) == 0.05 and scaled_lr(0.05, 20, "off") == 0.05
    assert poly_lr(0.05, 0, 100) == 0.05 and poly_lr(0.05, 100, 100) == 0.0
    assert poly_lr(0.05, 50, 100) == pytest.approx(0.05 * 0.5**0.9)


# Every flag the published train.py and test.py parse, with a value of the right kind.
PUBLISHED_TRAIN = (
    "--root_path r --test_path t --dataset Synapse --list_dir l --num_classes 9 --output_dir o --max_iterations 30000 "
    "--max_epochs 400 --batch_size 20 --num_workers 2 --eval_interval 20 --model_name m --n_gpu 1 --deterministic 1 "
    "--base_lr 0.05 --img_size 224 --z_spacing 1 --seed 1234 --zip --cache-mode part --resume r.pth "
    "--accumulation-steps 2 --use-checkpoint --amp-opt-level O1 --tag t --eval --throughput "
    "--module networks.DAEFormer.DAEFormer --opts KEY VALUE"
).split()
PUBLISHED_TEST = (
    "--volume_path v --dataset Synapse --num_classes 9 --list_dir l --output_dir o --max_iterations 30000 "
    "--max_epochs 400 --batch_size 24 --img_size 224 --is_savenii --test_save_dir s --deterministic 1 --base_lr 0.05 "
    "--seed 1234 --zip --cache-mode full --resume r.pth --accumulation-steps 2 --use-checkpoint --amp-opt-level O0 "
    "--tag t --eval --throughput --opts KEY VALUE"
).split()


def test_the_published_flag_lists_parse_unchanged():
    args = train_script.build_parser().parse_args(PUBLISHED_TRAIN)
    assert (args.accumulation_steps, args.use_checkpoint, args.resume, args.max_iterations) == (2, True, "r.pth", 30000)
    config, notes = train_script.resolve_config(args, train_script.IGNORED_FLAGS)
    assert config.accumulation_steps == 2 and config.use_checkpoint
    assert config.lr == pytest.approx(0.05 * 40 / 24)  # the rule counts the slices of an optimisation step
    ignored = [note for note in notes if note.startswith("ignored")]
    assert ignored == [
        "ignored (accepted for compatibility with the published scripts): --zip, --cache-mode, "
        "--amp-opt-level, --tag, --eval, --throughput, --opts, --n_gpu, --z_spacing"
    ]
    test_args = load_test_script().build_parser().parse_args(PUBLISHED_TEST)
    assert (test_args.eval_batch_size, test_args.is_savenii, test_args.img_size) == (24, True, 224)


def test_both_scripts_take_one_name_per_setting_and_the_published_spellings_too():
    parse_test = load_test_script().build_parser().parse_args
    ours = parse_test("--test_path v --eval_batch_size 3 --eval_workers 0".split())
    published = parse_test("--volume_path v --batch_size 3 --workers 0".split())
    assert vars(ours) == vars(published)
    assert (ours.test_path, ours.eval_batch_size, ours.eval_workers) == ("v", 3, 0)
    parse_train = train_script.build_parser().parse_args
    underscores = parse_train("--accumulation_steps 3 --use_checkpoint".split())
    hyphens = parse_train("--accumulation-steps 3 --use-checkpoint".split())
    assert vars(underscores) == vars(hyphens) and (hyphens.accumulation_steps, hyphens.use_checkpoint) == (3, True)


def test_use_checkpoint_needs_a_network_that_offers_it(capsys):
    code = train_script.main(["--module", "networks.UNet.UNet", "--use-checkpoint", "--output_dir", "unused"])
    assert code == 2
    assert "--use-checkpoint: networks.UNet.UNet has no set_grad_checkpointing" in capsys.readouterr().err
