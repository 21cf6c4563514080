"""The GPU report runs on a CPU at small sizes, so it cannot rot between GPU runs."""

from __future__ import annotations

import json

from tests.conftest import run_script


def test_the_report_runs_every_stage_and_projects_the_recipe_from_the_measured_pace(tmp_path):
    result = run_script(
        "-m", "bench.gpu_report", "--device", "cpu", "--small", "--json", str(tmp_path / "report.json"), timeout=600
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert [step["variant"] for step in report["steps"]] == ["fp32"]
    loop = report["loop"]
    assert loop["s_per_iteration"] > 0 and loop["eval_s"] > 0 and report["test_s"] > 0
    projected = f"{37_200 * loop['s_per_iteration'] / 60:.1f} min"
    table = result.stdout.splitlines()
    assert table[0].startswith("networks.UNet.UNet at 32, batch 4, on ")
    assert any("published recipe, projected" in line and projected in line for line in table)
    assert sum(line.startswith("| ") for line in table) == 6  # header + step, loop, projection, test.py, train.py


def test_the_report_refuses_cuda_without_a_gpu():
    result = run_script("-m", "bench.gpu_report", "--device", "cuda")
    assert result.returncode == 2 and "no CUDA GPU is visible" in result.stderr
