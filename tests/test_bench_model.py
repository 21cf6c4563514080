"""bench.model and bench.common: MAC counts equal hand-computed numbers, the published DAE-Former
figure is reconstructed exactly, a step is timed and its memory taken, and a fresh process is new."""

from __future__ import annotations

import os
import statistics

import pytest
import torch
from torch import nn

from bench.common import (
    BYTES_PER_MIB,
    PeakMemory,
    markdown_table,
    measure_step,
    run_in_fresh_process,
    time_step,
)
from bench.model import (
    FORWARD,
    FORWARD_BACKWARD,
    PUBLISHED_GMACS,
    Network,
    baseline_ratios,
    count_macs,
    count_parameters,
    fvcore_reference_terms,
    make_network_step,
    resolve_networks,
)
from networks.DAEFormer import DAEFormer

TINY = {"num_classes": 2, "dims": (16, 32, 64), "depths": (1, 1, 1), "heads": 4}
PUBLISHED = {"num_classes": 9, "dims": (128, 320, 512), "depths": (2, 2, 2), "heads": 8}
MIB_ALLOCATED = 64


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors gain nothing from threads, and on a busy CPU extra threads wait on each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tokens(size: int) -> tuple[int, int, int]:
    """Tokens of the three encoder stages (strides 4, 8, 16) of a size x size slice."""
    return tuple((size // stride) ** 2 for stride in (4, 8, 16))


def _block_macs(n: int, c: int, heads: int) -> int:
    # spatial attention: 4 1x1 convs (4 N C^2) + context and output products (2 N C^2);
    # two Mix-FFNs: fc1 + fc2 (2 x 8 N C^2) and 3x3 depth-wise convs on 4C (2 x 36 N C);
    # channel attention: qkv (3 N C^2), proj (N C^2), q k^T and attn v (2 N C^2 / heads).
    return 6 * n * c * c + 16 * n * c * c + 72 * n * c + 4 * n * c * c + 2 * n * c * c // heads


def _decoder_stage_macs(n: int, in_dim: int, d: int, heads: int) -> int:
    # x1_linear; SCCA: attention products (2 N D^2), reprojection D -> 2D (2 N D^2), Mix-FFN
    # 2D -> 4D -> 2D (16 N D^2) with a depth-wise conv on 4D (36 N D); concat_linear (2 N D^2).
    scca = 2 * n * d * d + 2 * n * d * d + 16 * n * d * d + 36 * n * d
    return n * in_dim * d + scca + 2 * n * d * d + 2 * _block_macs(n, d, heads)


def daeformer_macs(size: int, num_classes: int, dims: tuple, depths: tuple, heads: int, in_chans: int = 3) -> int:
    """Forward MACs of DAEFormer on a (1, 1, size, size) slice, derived layer by layer."""
    (n0, n1, n2), (d0, d1, d2) = _tokens(size), dims
    patch_embeddings = n0 * 49 * in_chans * d0 + n1 * 9 * d0 * d1 + n2 * 9 * d1 * d2
    encoder = patch_embeddings + sum(k * _block_macs(n, d, heads) for n, d, k in zip((n0, n1, n2), dims, depths))
    decoder_2 = 2 * n2 * d2 * d2  # PatchExpand d2 -> 4 x d2/2
    decoder_1 = _decoder_stage_macs(n1, d2 // 2, d1, heads) + 2 * n1 * d1 * d1  # PatchExpand d1 -> 4 x d1/2
    # PatchExpand d0 -> 16 x d0, then the 1x1 head on the 16 N0 output pixels.
    decoder_0 = _decoder_stage_macs(n0, d1 // 2, d0, heads) + 16 * n0 * d0 * d0 + 16 * n0 * d0 * num_classes
    return encoder + decoder_2 + decoder_1 + decoder_0


def daeformer_layer_norm_elements(size: int, dims: tuple, depths: tuple) -> int:
    (n0, n1, n2), (d0, d1, d2) = _tokens(size), dims
    # patch-embedding and stage norms; a block has 4 norms on C and two Mix-FFN norms on 4C.
    encoder = 2 * (n0 * d0 + n1 * d1 + n2 * d2) + sum(k * 12 * n * d for n, d, k in zip((n0, n1, n2), dims, depths))
    # A decoder stage: SCCA (norm1 on path and skip 2ND, two norms on 2D 4ND, its Mix-FFN norm on
    # 4D 4ND), two blocks (24ND), PatchExpand (4N x D/2 = 2ND, or 16N x D for the last stage).
    decoder = 2 * n2 * d2 + (10 + 24 + 2) * n1 * d1 + (10 + 24 + 16) * n0 * d0
    return encoder + decoder


def daeformer_fc1_macs(size: int, dims: tuple, depths: tuple) -> int:
    """MACs of every Mix-FFN fc1: 2 x N C 4C per block, N 2D 4D per SCCA."""
    (n0, n1, n2), (d0, d1, _) = _tokens(size), dims
    encoder = sum(k * 8 * n * d * d for n, d, k in zip((n0, n1, n2), dims, depths))
    return encoder + (8 + 2 * 8) * n1 * d1 * d1 + (8 + 2 * 8) * n0 * d0 * d0


def test_convolution_macs_are_hand_counts():
    assert count_macs(nn.Conv2d(1, 4, 3, padding=1), torch.zeros(1, 1, 8, 8)).total == 4 * 9 * 64 == 2304
    # depth-wise: one input channel per output channel
    assert count_macs(nn.Conv2d(4, 4, 3, padding=1, groups=4), torch.zeros(1, 4, 8, 8)).total == 4 * 9 * 64
    # DAE-Former's first patch embedding: 7x7, stride 4 -> 8x8 outputs from 32x32
    assert count_macs(nn.Conv2d(3, 8, 7, stride=4, padding=3), torch.zeros(2, 3, 32, 32)).total == 2 * 64 * 49 * 3 * 8
    # U-Net's up-sampling: every input pixel meets a 2x2 kernel per channel pair
    assert count_macs(nn.ConvTranspose2d(8, 4, 2, stride=2), torch.zeros(1, 8, 4, 4)).total == 16 * 8 * 4 * 4


def test_linear_and_matmul_macs_are_hand_counts():
    macs = count_macs(nn.Linear(5, 3), torch.zeros(2, 7, 5))
    assert macs.total == 2 * 7 * 5 * 3 == 210
    assert sum(macs.by_operator.values()) == macs.total


def test_tiny_daeformer_macs_equal_the_layer_by_layer_count():
    model = DAEFormer(**TINY)
    macs = count_macs(model, torch.zeros(1, 1, 32, 32))
    assert macs.total == daeformer_macs(32, **TINY) == 4_856_832


def test_published_daeformer_figure_is_reconstructed_exactly():
    model = DAEFormer(**TINY)
    terms = fvcore_reference_terms(model, torch.zeros(1, 1, 32, 32))
    assert terms == {
        "layer_norm": 5 * daeformer_layer_norm_elements(32, TINY["dims"], TINY["depths"]),
        "mixffn_fc1_again": daeformer_fc1_macs(32, TINY["dims"], TINY["depths"]),
    }
    assert terms == {"layer_norm": 476_160, "mixffn_fc1_again": 1_179_648}
    # The same formulas at the published configuration: ours, and fvcore's 27.886 G.
    ours = daeformer_macs(224, **PUBLISHED)
    assert ours == 21_553_000_448
    fvcore = ours + 5 * daeformer_layer_norm_elements(224, PUBLISHED["dims"], PUBLISHED["depths"])
    fvcore += daeformer_fc1_macs(224, PUBLISHED["dims"], PUBLISHED["depths"])
    assert round(fvcore / 1e9, 3) == PUBLISHED_GMACS


def test_parameters_without_a_gradient_are_named():
    class PartlyUsed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used = nn.Conv2d(1, 2, 3, padding=1)  # 2*9 + 2 = 20
            self.unused = nn.Linear(4, 4)  # 16 + 4 = 20
            self.frozen = nn.Parameter(torch.ones(3), requires_grad=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.used(x) * self.frozen[0]

    model = PartlyUsed()
    count = count_parameters(model, torch.zeros(1, 1, 4, 4))
    assert (count.total, count.trainable, count.with_gradient) == (43, 40, 20)
    assert count.without_gradient == ("unused.weight", "unused.bias")
    assert all(p.grad is None for p in model.parameters())


def test_every_daeformer_parameter_receives_a_gradient():
    count = count_parameters(DAEFormer(**TINY), torch.zeros(1, 1, 32, 32))
    assert count.with_gradient == count.trainable == count.total
    assert count.without_gradient == ()


def peak_of_a_freed_block() -> tuple[int, str]:
    memory = PeakMemory(torch.device("cpu"))
    memory.start()
    block = torch.ones(MIB_ALLOCATED * BYTES_PER_MIB // 4)  # float32, pages touched
    del block
    return memory.peak_bytes(), memory.kind


def test_cpu_peak_memory_sees_a_freed_allocation():
    # In a fresh process, as the benchmarks measure: in this one, memory that earlier tests freed
    # but the allocator kept resident could hold the block without the RSS growing.
    peak, kind = run_in_fresh_process(peak_of_a_freed_block)
    # Linux batches its per-thread RSS counters, so the peak may miss a few dozen pages.
    assert peak >= (MIB_ALLOCATED - 1) * BYTES_PER_MIB
    if "VmHWM" in kind:  # the reset peak: nothing but our block on top of the start
        assert peak < 2 * MIB_ALLOCATED * BYTES_PER_MIB


def test_time_step_runs_warmup_and_repeats():
    calls = []
    seconds = time_step(lambda: calls.append(1), torch.device("cpu"), warmup=2, repeats=3)
    assert len(calls) == 5 and len(seconds) == 3 and all(s >= 0 for s in seconds)
    with pytest.raises(ValueError, match="repeats"):
        time_step(lambda: None, torch.device("cpu"), warmup=0, repeats=0)


def test_a_training_step_is_timed_and_measured():
    step = {
        "module": "networks.UNet.UNet",
        "kwargs": {"num_classes": 2, "base_channels": 2, "depth": 1},
        "batch": 2,
        "img_size": 16,
        "mode": FORWARD_BACKWARD,
        "amp": "off",
    }
    with torch.random.fork_rng():
        result = measure_step(make_network_step, step, "cpu", threads=1, warmup=1, repeats=3)
    assert len(result.seconds) == 3 and result.median_s == statistics.median(result.seconds)
    assert result.peak_bytes >= 0 and "RSS" in result.memory_kind


def test_fresh_process_is_another_process():
    # os.getpid keeps the child cheap: it never imports torch.
    assert run_in_fresh_process(os.getpid) != os.getpid()


def test_ratios_are_network_over_baseline_and_skip_failed_cells():
    networks = [Network("Big", "a.Big", {}), Network("Small", "b.Small", {})]
    measurements = [
        {"network": "Big", "batch": 1, "mode": FORWARD, "median_s": 3.0, "peak_bytes": 800},
        {"network": "Small", "batch": 1, "mode": FORWARD, "median_s": 1.5, "peak_bytes": 200},
        {"network": "Big", "batch": 8, "mode": FORWARD, "error": "out of memory"},
        {"network": "Small", "batch": 8, "mode": FORWARD, "median_s": 4.0, "peak_bytes": 900},
    ]
    assert baseline_ratios(networks, measurements) == [{"batch": 1, "mode": FORWARD, "time": 2.0, "memory": 4.0}]
    assert baseline_ratios(networks[:1], measurements) == []


def test_networks_get_nine_classes_and_distinct_names():
    daeformer = "networks.DAEFormer.DAEFormer"
    network, baseline = resolve_networks(daeformer, daeformer, 64, {"heads": 4})
    assert network.kwargs == {"num_classes": 9, "img_size": 64, "heads": 4}
    assert baseline.kwargs == {"num_classes": 9, "img_size": 64}
    assert (network.name, baseline.name) == ("DAEFormer", "DAEFormer (baseline)")
    assert len(resolve_networks("networks.UNet.UNet", "None", 64, {})) == 1


def test_markdown_table():
    table = markdown_table(["net", "s"], [["a", "1.5"], ["bb", "10"]])
    assert table == "| net |   s |\n|:----|----:|\n| a   | 1.5 |\n| bb  |  10 |"
