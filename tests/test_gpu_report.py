"""The GPU report runs on a CPU at small sizes, so it cannot rot between GPU runs."""

from __future__ import annotations

import json
from dataclasses import replace

import torch

from bench import gpu_report
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
    assert table[0].startswith("machine: ") and f"torch {torch.__version__}" in table[0]
    assert table[1].startswith("networks.UNet.UNet at 32, batch 4, on ")
    assert any("published recipe, projected" in line and projected in line for line in table)
    assert sum(line.startswith("| ") for line in table) == 6  # header + step, loop, projection, test.py, train.py


def test_the_report_refuses_cuda_without_a_gpu(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # also on a machine that has one
    assert gpu_report.main(["--device", "cuda"]) == 2
    assert "no CUDA GPU is visible" in capsys.readouterr().err


def test_a_failing_stage_costs_only_its_own_row(monkeypatch, tmp_path, capsys):
    # One prepared run on a lent GPU: a compiler error in one variant, or a failing test.py,
    # must leave every other number in the table.
    monkeypatch.setattr(gpu_report, "SMALL", replace(gpu_report.SMALL, variants=("fp32", "fp32+compile")))

    def step_time(plan, variant, device, threads):
        if variant == "fp32+compile":
            raise RuntimeError("inductor: no working C compiler")
        return {"variant": variant, "s_per_step": 0.5, "peak_gib": 1.0, "memory_kind": "peak RSS"}

    def test_py(*_):
        raise RuntimeError("test.py exited with 2: boom")

    monkeypatch.setattr(gpu_report, "step_time", step_time)
    monkeypatch.setattr(
        gpu_report, "train_loop", lambda *_: {"s_per_iteration": 0.6, "wall_s": 9.0, "eval_s": 2.0, "peak_gib": None}
    )
    monkeypatch.setattr(gpu_report, "time_test_py", test_py)
    assert gpu_report.main(["--device", "cpu", "--small", "--workdir", str(tmp_path), "--json", str(tmp_path / "r.json")]) == 1
    out = capsys.readouterr()
    rows = {
        cells[0]: cells[1:]
        for line in out.out.splitlines()
        if line.startswith("| ")
        for cells in [[cell.strip() for cell in line.strip("|").split("|")]]
    }
    assert rows["train_step, fp32"][:2] == ["0.5000 s/step", "8 slices/s"]  # batch 4 / 0.5 s
    assert rows["train_step, fp32+compile"][0] == "failed: RuntimeError: inductor: no working C compiler"
    assert rows["train.py loop, fp32, 64px slices"][:2] == ["0.6000 s/iteration", "1.20x the step"]
    assert rows["published recipe, projected"][0] == "372.0 min"  # 37,200 x 0.6 s
    assert rows["train.py's evaluation of the same 2 volumes"][0] == "2.0 s"
    test_row = next(cells for name, cells in rows.items() if name.startswith("test.py, 2 volumes of"))
    assert test_row[0] == "failed: RuntimeError: test.py exited with 2: boom"
    assert "bench.gpu_report: train_step fp32+compile failed" in out.err
    assert json.loads((tmp_path / "r.json").read_text())["failures"].keys() == {"train_step fp32+compile", "test.py"}
