"""bench.perf.network_flops: FLOPs against closed forms, the GPU peak table, and perf's TFLOP/s columns."""

import re

import pytest
import torch
from closed_form_flops import mlp_flops
from torch import nn

from bench.nets.mlp import MLPDenoiser
from bench.perf.network_flops import PRECISIONS, count_flops, gpu_peak, gpu_peaks, matmul_precision, peak_tflops
from bench.perf.rows import PerfRow
from bench.runtime.speed import SpeedOptions


@pytest.mark.parametrize("batch", [8, 20])
def test_mlp_flops_are_two_per_multiply_add_of_its_linears(batch):
    net = MLPDenoiser(width=48, depth=2, emb_dim=16).eval()
    x, t = torch.randn(batch, 1, 8, 8), torch.full((batch,), 7.0)
    with torch.inference_mode():
        assert count_flops(net, x, t) == mlp_flops(net, batch)


def test_convolution_flops_are_the_closed_form():
    conv = nn.Conv2d(3, 8, kernel_size=3, padding=1)
    assert count_flops(conv, torch.randn(2, 3, 16, 16)) == 2 * (2 * 8 * 16 * 16) * (3 * 3 * 3)


@pytest.mark.parametrize(
    "device_name,entry",
    [
        ("NVIDIA H100 80GB HBM3", "H100 SXM5"),
        ("NVIDIA H100 PCIe", "H100 PCIe"),
        ("NVIDIA H200", "H200 SXM"),
        ("NVIDIA A100-SXM4-80GB", "A100"),
        ("NVIDIA A100 80GB PCIe", "A100"),
        ("NVIDIA L40S", "L40S"),
        ("NVIDIA H200 NVL", None),
        ("NVIDIA GeForce RTX 4090", None),
        ("Intel(R) Xeon(R) Processor", None),
    ],
)
def test_device_names_find_their_datasheet_entry(device_name, entry):
    peak = gpu_peak(device_name)
    assert (peak.name if peak else None) == entry
    for precision in PRECISIONS:
        assert peak_tflops(device_name, precision) == (peak.tflops[precision] if peak else None)


def test_peak_table_lists_every_format_in_the_order_of_the_hardware():
    assert [p.name for p in gpu_peaks()][:2] == ["H100 SXM5", "H100 PCIe"]
    assert gpu_peak("NVIDIA H100 80GB HBM3").tflops == {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4}
    for peak in gpu_peaks():
        assert set(peak.tflops) == set(PRECISIONS) and peak.source.startswith("https://www.nvidia.com/")
        re.compile(peak.match)
        # Tensor cores: TF32 at half the 16-bit rate, and every tensor format above the CUDA cores' fp32.
        assert peak.tflops["fp32"] < peak.tflops["tf32"] == pytest.approx(peak.tflops["bf16"] / 2, rel=0.01)
        assert peak.tflops["bf16"] == peak.tflops["fp16"]


def test_unknown_precision_is_named():
    with pytest.raises(ValueError, match=r"precision 'fp8' is not one of \['fp32', 'tf32', 'bf16', 'fp16'\]"):
        peak_tflops("NVIDIA H100 80GB HBM3", "fp8")


def test_matmul_precision_follows_the_speed_options():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert matmul_precision(cpu, SpeedOptions()) == matmul_precision(cuda, SpeedOptions()) == "fp32"
    assert matmul_precision(cuda, SpeedOptions(tf32=True)) == "tf32"
    assert matmul_precision(cpu, SpeedOptions(tf32=True)) == "fp32"  # TF32 is a CUDA mode
    assert matmul_precision(cuda, SpeedOptions(tf32=True, autocast="bf16")) == "bf16"
    assert matmul_precision(cpu, SpeedOptions(autocast="fp16")) == "fp16"


def test_a_rows_throughput_is_its_flops_over_its_time():
    row = PerfRow(network="mlp", shape="1x8x8", batch=1, loop="network", ms_per_nfe=2.0)
    row.set_throughput(4_000_000_000, peak=1000.0)
    assert (row.gflop_per_nfe, row.tflops, row.peak_tflops, row.peak_pct) == (4.0, 2.0, 1000.0, 0.2)
    untimed = PerfRow(network="mlp", shape="1x8x8", batch=1, loop="ours")
    untimed.set_throughput(4_000_000_000, peak=None)
    assert (untimed.gflop_per_nfe, untimed.tflops, untimed.peak_pct) == (4.0, None, None)
