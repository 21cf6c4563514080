"""bench.train_speed runs each variant in its own process and reports it against the first."""

from __future__ import annotations

import json

from tests.conftest import run_script


def test_the_layout_variants_run_and_the_speed_up_is_the_ratio_of_the_medians(tmp_path):
    out = tmp_path / "speed.json"
    result = run_script(
        "-m",
        "bench.train_speed",
        *("--module", "networks.UNet.UNet", "--model_kwargs", '{"base_channels": 4, "depth": 2}'),
        *("--img_size", "32", "--batch_size", "2", "--warmup", "1", "--repeats", "2", "--device", "cpu"),
        *("--variants", "fp32+nchw", "fp32", "--json", str(out)),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    baseline, channels_last = json.loads(out.read_text())["results"]
    assert (baseline["variant"], channels_last["variant"]) == ("fp32+nchw", "fp32")
    speed_up = f"{baseline['median_s'] / channels_last['median_s']:.2f}x"
    rows = [
        [cell.strip() for cell in line.strip("|").split("|")] for line in result.stdout.splitlines() if line.startswith("| fp32")
    ]
    assert [row[0] for row in rows] == ["fp32+nchw", "fp32"]
    assert rows[1][3] == speed_up and rows[0][3] == "1.00x"
    assert result.stdout.startswith("machine: ")
