"""Every benchmark names the machine it ran on; the subnormal check of bench.resize_speed."""

from __future__ import annotations

import re

import torch

from bench import data_speed, resize_speed
from bench.common import blas_name, cpu_name, cpu_vendor, logical_cpus, machine_description


def test_the_machine_line_names_cpu_cores_torch_blas_and_gpu():
    line = machine_description()
    assert line.startswith(f"machine: {cpu_name()} ({cpu_vendor()}, {logical_cpus()} logical CPUs, ")
    threads = torch.get_num_threads()
    assert f"torch {torch.__version__}, BLAS {blas_name()}, {threads} torch thread{'s' if threads != 1 else ''}" in line
    if torch.cuda.is_available():
        assert f"GPU {torch.cuda.get_device_name(0)}" in line
    else:
        assert "; no GPU" in line
    # The BLAS is the one torch's own build configuration names.
    assert re.search(rf"BLAS_INFO={re.escape(blas_name().split()[0])}\b", torch.__config__.show())


def test_data_speed_prints_the_machine_first(capsys):
    argv = ["--slices", "2", "--size", "32", "--img_size", "16", "--augment", "none", "--repeats", "1"]
    assert data_speed.main(argv) == 0
    assert capsys.readouterr().out.startswith("machine: ")


def test_the_subnormal_check_times_every_operator_and_counts_what_the_flush_removed(capsys):
    assert resize_speed.main(["--subnormals", "--depth", "2", "--repeats", "1", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("machine: ")
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in out.splitlines() if "-> " in line and "|" in line]
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    assert [(r[0], r[1], r[2]) for r in rows] == [
        (pair, device, dtype) for device in devices for pair in ("512 -> 224", "224 -> 512") for dtype in ("float32", "float64")
    ]
    # Subnormal entries of each matrix rounded to float32 before the flush; none in float64.
    assert [int(r[3]) for r in rows[:4]] == [4902, 0, 8887, 0]
    # The flush changes a product by at most 512 x tiny for slices in [0, 1].
    assert all(float(r[7]) <= 512 * torch.finfo(torch.float32).tiny for r in rows)


def test_resize_speed_prints_the_machine_first(capsys):
    argv = ["--depth", "2", "--size", "32", "--img_size", "16", "--batch_size", "1", "--repeats", "1", "--threads", "1"]
    assert resize_speed.main(argv) == 0
    assert capsys.readouterr().out.startswith("machine: ")
