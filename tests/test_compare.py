"""utils.compare: the table equals each run's metrics.json, the paired statistics equal hand
computations, seeds are grouped, and mismatched runs are one-line errors."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench.model import count_macs
from networks.UNet import UNet
from utils.compare import PALETTE, compare, main, paired_test, read_run
from utils.errors import UserError
from utils.evaluation import ImageResult, VolumeResult
from utils.profile import network_cost

CLASSES = ["aorta", "liver", "spleen"]
CASES = ["case0001", "case0002", "case0003", "case0004", "case0005", "case0006"]
COST = {"params": 1_500_000, "gmacs": 2.5}


def args_json(module: str = "networks.UNet.UNet", seed: int = 1234, **changes) -> dict:
    """The settings train.py records, trimmed to what compare reads and groups by."""
    return {
        "run_id": f"run-{seed}",
        "module": module,
        "model_kwargs": {"num_classes": 4, "img_size": 32},
        "img_size": 32,
        "base_lr": 0.05,
        "seed": seed,
        "output_dir": f"/runs/{seed}",
        "network_cost": COST,
        **changes,
    }


def volume_run(folder: Path, dice: np.ndarray, hd95: np.ndarray, cases=CASES, args: dict | None = None) -> Path:
    """A run folder with test/metrics.json written by the evaluation engine itself."""
    scores = np.stack([dice, hd95], axis=-1)
    VolumeResult(CLASSES, list(cases), scores, "published", "voxels").write(folder / "test")
    if args is not None:
        (folder / "args.json").write_text(json.dumps(args))
    return folder


def scores(seed: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    dice = np.clip(rng.uniform(0.5, 0.9, (len(CASES), len(CLASSES))) + shift, 0, 1)
    return dice, rng.uniform(1.0, 9.0, (len(CASES), len(CLASSES)))


def test_the_paired_test_matches_hand_computation():
    # |d| ranks 2, 3, 1, 4; W- = 1; exact two-sided p = 2 * P(W <= 1) = 2 * 2 / 2^4
    result = paired_test(np.array([0.6, 0.7, 0.5, 0.9]), np.array([0.5, 0.5, 0.55, 0.6]))
    assert result.mean_difference == pytest.approx(0.1375)
    assert result.p_value == pytest.approx(0.25)
    assert -0.05 <= result.ci_low < result.mean_difference < result.ci_high <= 0.3
    # a known shift: every case 0.1 lower; p = 2 / 2^6, and every resample has mean -0.1
    base = np.linspace(0.4, 0.9, 6)
    shifted = paired_test(base - 0.1, base)
    assert shifted.mean_difference == pytest.approx(-0.1)
    assert shifted.ci_low == pytest.approx(-0.1) and shifted.ci_high == pytest.approx(-0.1)
    assert shifted.p_value == pytest.approx(0.03125)
    # the same scores: no difference at all
    same = paired_test(base, base)
    assert (same.mean_difference, same.ci_low, same.ci_high, same.p_value) == (0.0, 0.0, 0.0, 1.0)
    # the interval is reproducible (fixed seed)
    again = paired_test(np.array([0.6, 0.7, 0.5, 0.9]), np.array([0.5, 0.5, 0.55, 0.6]))
    assert (again.ci_low, again.ci_high) == (result.ci_low, result.ci_high)


def test_the_table_holds_each_runs_metrics_json_and_identical_runs_give_p_1(tmp_path):
    a = volume_run(tmp_path / "a", *scores(1), args=args_json())
    b = volume_run(tmp_path / "b", *scores(2), args=args_json("networks.DAEFormer.DAEFormer"))
    same = volume_run(tmp_path / "same", *scores(1), args=args_json(base_lr=0.01))  # a's scores, another recipe
    result = compare([a, b, same], tmp_path / "out")

    for row, folder in zip(result["table"], (a, b, same)):
        metrics = json.loads((folder / "test" / "metrics.json").read_text())
        assert row["mean_dice"] == metrics["mean_dice"] and row["mean_hd95"] == metrics["mean_hd95"]
        assert row["class_dice"] == [entry["dice"] for entry in metrics["per_class"]]
        assert (row["params"], row["gmacs"], row["runs"], row["mean_dice_sd"]) == (1_500_000, 2.5, 1, None)
    with open(tmp_path / "out" / "table.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert [float(r["mean_dice"]) for r in rows] == [r["mean_dice"] for r in result["table"]]
    assert [r["network"] for r in rows] == ["UNet [a]", "DAEFormer", "UNet [same]"]

    pairs = {(entry["first"], entry["second"]): entry for entry in result["comparisons"]}
    assert len(pairs) == 3  # every pair
    identical = pairs[("UNet [a]", "UNet [same]")]
    for metric in ("dice", "hd95"):
        stats = identical[metric]
        assert (stats["mean_difference"], stats["ci_low"], stats["ci_high"], stats["p_value"]) == (0.0, 0.0, 0.0, 1.0)
    dice_a, dice_b = scores(1)[0].mean(axis=1), scores(2)[0].mean(axis=1)
    assert pairs[("UNet [a]", "DAEFormer")]["dice"]["mean_difference"] == pytest.approx((dice_a - dice_b).mean())

    table = (tmp_path / "out" / "table.md").read_text().splitlines()
    assert table[0] == "| Network | Params (M) | GMACs | DSC (%) | HD95 | aorta | liver | spleen |"
    first = json.loads((a / "test" / "metrics.json").read_text())
    expected = [f"{100 * first['mean_dice']:.2f}", f"{first['mean_hd95']:.2f}"]
    expected += [f"{100 * entry['dice']:.2f}" for entry in first["per_class"]]
    assert table[2] == "| UNet [a] | 1.50 | 2.500 | " + " | ".join(expected) + " |"
    latex = (tmp_path / "out" / "table.tex").read_text()
    assert r"Network & Params (M) & GMACs & DSC (\%) & HD95 & aorta & liver & spleen \\" in latex
    assert latex.count(r"\\") == 4 and r"\bottomrule" in latex


def test_runs_that_differ_only_in_seed_are_one_group_with_mean_and_sd(tmp_path):
    seeds = [volume_run(tmp_path / f"s{seed}", *scores(seed), args=args_json(seed=seed)) for seed in (1, 2, 3)]
    other = volume_run(tmp_path / "other", *scores(4, shift=-0.2), args=args_json("networks.DAEFormer.DAEFormer"))
    result = compare([*seeds, other], tmp_path / "out", reference=other)

    row = result["table"][0]
    means = [json.loads((s / "test" / "metrics.json").read_text())["mean_dice"] for s in seeds]
    assert row["runs"] == 3 and row["seeds"] == [1, 2, 3]
    assert row["mean_dice"] == pytest.approx(np.mean(means)) and row["mean_dice_sd"] == pytest.approx(np.std(means, ddof=1))
    # the paired test uses each case's mean over the seeds
    per_case = np.mean([scores(seed)[0].mean(axis=1) for seed in (1, 2, 3)], axis=0)
    np.testing.assert_allclose(result["case_mean_dice"]["UNet"], per_case)
    (entry,) = result["comparisons"]
    assert (entry["first"], entry["second"]) == ("UNet", "DAEFormer")
    assert entry["dice"]["mean_difference"] == pytest.approx((per_case - scores(4, shift=-0.2)[0].mean(axis=1)).mean())
    line = (tmp_path / "out" / "table.md").read_text().splitlines()[2]
    assert line.startswith(f"| UNet | 1.50 | 2.500 | {100 * np.mean(means):.2f} ± {100 * np.std(means, ddof=1):.2f} |")


def test_runs_on_different_cases_are_a_one_line_error_naming_them(tmp_path):
    a = volume_run(tmp_path / "a", *scores(1), args=args_json())
    b = volume_run(tmp_path / "b", *scores(2), cases=[*CASES[:5], "case0009"], args=args_json(seed=9, base_lr=1.0))
    with pytest.raises(UserError) as info:
        compare([a, b], tmp_path / "out")
    message = str(info.value)
    assert "\n" not in message
    assert "different cases: only in the first: case0006; only in the second: case0009" in message


def test_case_order_does_not_matter(tmp_path):
    dice, hd95 = scores(1)
    a = volume_run(tmp_path / "a", dice, hd95, args=args_json())
    b = volume_run(tmp_path / "b", dice[::-1], hd95[::-1], cases=CASES[::-1], args=args_json(base_lr=1.0))
    result = compare([a, b], tmp_path / "out")
    assert result["comparisons"][0]["dice"]["p_value"] == 1.0


def test_2d_image_results_compare_by_pooled_and_per_image_dice(tmp_path):
    rng = np.random.default_rng(0)
    folders = []
    for name in ("a", "b"):
        counts = rng.integers(1, 100, size=(5, 1, 4))
        ImageResult(["lesion"], [f"img{i}" for i in range(5)], counts).write(tmp_path / name)
        folders.append(tmp_path / name / "metrics.json")
    result = compare(folders, tmp_path / "out")
    for row, path in zip(result["table"], folders):
        metrics = json.loads(path.read_text())
        assert row["mean_dice"] == metrics["dice"] and row["mean_hd95"] is None
    assert result["comparisons"][0]["hd95"] is None
    assert (tmp_path / "out" / "table.md").read_text().splitlines()[0] == "| Network | Params (M) | GMACs | DSC (%) | lesion |"


def test_the_command_prints_the_tables_and_draws_the_figure(tmp_path, capsys):
    a = volume_run(tmp_path / "a", *scores(1), args=args_json())
    b = volume_run(tmp_path / "b", *scores(2, shift=-0.1), args=args_json("networks.DAEFormer.DAEFormer"))
    assert main([str(a), str(b / "test" / "metrics.json"), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "| UNet | 1.50 | 2.500 |" in printed and "| UNet | DAEFormer | 6 |" in printed
    image = Image.open(tmp_path / "out" / "compare.png").convert("RGB")
    colours = {colour for _, colour in image.getcolors(maxcolors=1 << 16)}
    assert PALETTE[0] in colours and PALETTE[1] in colours  # a bar of each network
    assert main([str(a), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.startswith("error: compare needs at least two runs")


def test_the_cost_of_a_run_that_recorded_none_is_measured_like_bench_model(trained_run, tmp_path):
    older = tmp_path / "older"  # a run of a version that recorded no cost in its args.json
    shutil.copytree(trained_run, older)
    recorded = json.loads((older / "args.json").read_text())
    (older / "args.json").write_text(json.dumps({k: v for k, v in recorded.items() if k != "network_cost"}))
    run = read_run(older / "eval" / "epoch_1")
    assert "network_cost" not in run.args
    from utils.compare import measure_cost

    cost = measure_cost(run)
    assert cost == recorded["network_cost"]  # what the training run itself recorded
    model = UNet(**run.args["model_kwargs"])
    assert cost == network_cost(model, None, run.args["img_size"])
    assert cost["gmacs"] * 1e9 == count_macs(model, torch.zeros(1, 1, 32, 32)).total
    assert cost["params"] == sum(p.numel() for p in model.parameters())


def test_a_case_listed_twice_is_refused_in_any_run_the_first_included(tmp_path):
    dice, hd95 = scores(1)
    twice = [*CASES[:-1], CASES[0]]
    first = volume_run(tmp_path / "a", dice, hd95, cases=twice, args=args_json(seed=1))
    second = volume_run(tmp_path / "b", dice, hd95, args=args_json(seed=2))
    with pytest.raises(UserError, match="lists a case twice"):
        compare([first, second], tmp_path / "out")
