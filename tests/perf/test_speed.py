"""bench.runtime.speed: each option's provenance record, and how far the options that may move numbers move them."""

import os
import platform
import subprocess
import sys

import pytest
import torch
from torch import nn

from bench.nets.ddpm_unet import DDPMUNet
from bench.nets.mlp import MLPDenoiser
from bench.runtime.speed import (
    SpeedOptions,
    apply_speed_options,
    compile_network,
    inference_context,
    keep_freed_memory,
    malloc_environment,
    set_tf32,
    use_autocast,
    use_channels_last,
    use_cuda_graphs,
)

# Documented in bench.runtime.speed: channels_last within 1e-5 of the output scale; autocast within 16
# unit roundoffs of it (bf16: 2^-8, fp16: 2^-11).
CHANNELS_LAST_RTOL = 1e-5
AUTOCAST_RTOL = {"bf16": 16 * 2.0**-8, "fp16": 16 * 2.0**-11}


@pytest.fixture(autouse=True)
def restore_global_flags():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags
    torch.set_num_threads(threads)


def small_unet() -> nn.Module:
    torch.manual_seed(0)
    net = DDPMUNet(in_channels=3, out_ch=3, ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), image_size=16)
    return net.eval().requires_grad_(False)


def small_mlp() -> nn.Module:
    torch.manual_seed(0)
    net = MLPDenoiser(width=64, depth=2, emb_dim=16)
    nn.init.normal_(net.out.weight, std=0.05)  # zero-initialised: the output would not depend on x
    return net.eval().requires_grad_(False)


def inputs(net: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    shape = (4, 3, 16, 16) if isinstance(net, DDPMUNet) else (16, 1, 8, 8)
    return torch.randn(shape, generator=gen), torch.full((shape[0],), 300.0)


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.float() - ref).abs().max() / ref.abs().max())


def test_defaults_change_nothing_and_record_so():
    net = small_unet()
    wrapped, record = apply_speed_options(net, SpeedOptions())
    assert wrapped is net
    assert record == {
        "tf32": {
            "enabled": False,
            "cuda_matmul_allow_tf32": False,
            "cudnn_allow_tf32": False,
            "note": "TF32 only affects float32 matmuls/convolutions on CUDA; no effect on cpu",
        },
        "channels_last": {"enabled": False},
        "autocast": {"enabled": False},
        "compile": {"enabled": False},
        "cuda_graphs": {"enabled": False},
        "keep_freed_memory": {"enabled": False},
    }
    assert torch.backends.cudnn.allow_tf32 is False  # torch's own default is True


def test_tf32_record_follows_the_flags():
    record = set_tf32(True, torch.device("cpu"))
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    assert record["enabled"] and record["cuda_matmul_allow_tf32"] and record["cudnn_allow_tf32"]
    assert "note" not in set_tf32(False, torch.device("cuda"))


def test_channels_last_converts_weights_and_inputs_and_stays_close():
    net = small_unet()
    x, t = inputs(net)
    with inference_context():
        ref = net(x, t)
    n4d = sum(1 for p in net.parameters() if p.ndim == 4)
    wrapped, record = use_channels_last(net, True)
    assert record == {"enabled": True, "weights_4d": n4d} and n4d > 0
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in wrapped.parameters() if p.ndim == 4)
    seen = []
    wrapped.net.conv_in.register_forward_pre_hook(
        lambda m, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last))
    )
    with inference_context():
        out = wrapped(x, t)
    assert seen == [True]
    assert relative_error(out, ref) <= CHANNELS_LAST_RTOL


def test_channels_last_on_a_network_without_4d_weights_says_it_changes_nothing():
    wrapped, record = use_channels_last(small_mlp(), True)
    assert record == {
        "enabled": True,
        "weights_4d": 0,
        "note": "the network has no 4-D weights: channels_last changes nothing",
    }
    x, t = inputs(small_mlp())
    with inference_context():
        assert torch.equal(wrapped(x, t), small_mlp()(x, t))


@pytest.mark.parametrize("make", [small_mlp, small_unet], ids=["mlp", "unet"])
@pytest.mark.parametrize("name", ["bf16", "fp16"])
def test_autocast_runs_in_low_precision_and_stays_close(make, name):
    net = make()
    x, t = inputs(net)
    with inference_context():
        ref = net(x, t)
    wrapped, record = use_autocast(net, name)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[name]
    assert record == {"enabled": True, "dtype": str(dtype).removeprefix("torch."), "device_type": "cpu"}
    linear = next(m for m in net.modules() if isinstance(m, nn.Linear))
    seen = []
    linear.register_forward_hook(lambda m, args, out: seen.append(out.dtype))
    with inference_context():
        out = wrapped(x, t)
    assert seen and set(seen) == {dtype}
    assert out.dtype == torch.float32
    error = relative_error(out, ref)
    assert 0 < error <= AUTOCAST_RTOL[name]


def test_compile_record_and_wrapping():
    net = small_mlp()
    compiled, record = compile_network(net, "max-autotune-no-cudagraphs")
    assert record == {
        "enabled": True,
        "mode": "max-autotune-no-cudagraphs",
        "backend": "inductor",
        "torch": torch.__version__,
    }
    assert compiled is not net and compiled._orig_mod is net  # compiled lazily, on the first call
    assert compile_network(net, None) == (net, {"enabled": False})
    with pytest.raises(ValueError, match=r"compile mode 'fast' is not one of \['default', 'reduce-overhead'"):
        compile_network(net, "fast")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU skip")
def test_cuda_graphs_are_skipped_on_cpu_with_the_reason():
    net = small_mlp()
    wrapped, record = use_cuda_graphs(net, True)
    assert wrapped is net
    assert record == {"enabled": False, "requested": True, "skipped": "CUDA graphs need CUDA; the network is on cpu"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_cuda_graph_replay_matches_eager():
    net = small_unet().cuda()
    x, t = (v.cuda() for v in inputs(net))
    graphed, record = use_cuda_graphs(net, True)
    assert record["enabled"] is True
    with inference_context():
        ref = net(x, t)
        first = graphed(x, t)
        second = graphed(x + 1, t)
        torch.testing.assert_close(first, ref)
        torch.testing.assert_close(second, net(x + 1, t))
        assert not torch.equal(first, second)  # outputs are clones, not the static buffer


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_keep_freed_memory_record_on_glibc():
    # mallopt returning 0 (refusal) raises, so a record means glibc took both thresholds.
    assert keep_freed_memory(True) == {
        "enabled": True,
        "libc": "glibc " + platform.libc_ver()[1],
        "trim_threshold": 1 << 30,
        "mmap_threshold": 32 << 20,
    }
    assert keep_freed_memory(False) == {"enabled": False}


def test_bad_options_are_rejected():
    with pytest.raises(ValueError, match=r"autocast dtype 'fp8' is not one of \['bf16', 'fp16'\]"):
        SpeedOptions(autocast="fp8")
    with pytest.raises(ValueError, match="cuda_graphs=True with compile mode 'reduce-overhead'"):
        SpeedOptions(cuda_graphs=True, compile_mode="reduce-overhead")


def test_inference_context_disables_grad_and_records_no_graph():
    net = MLPDenoiser(width=16, depth=1, emb_dim=8)
    assert all(p.requires_grad for p in net.parameters())
    x, t = torch.randn(2, 1, 8, 8), torch.zeros(2)
    with inference_context():
        assert not torch.is_grad_enabled() and torch.is_inference_mode_enabled()
        out = net(x, t)
    assert out.grad_fn is None and not out.requires_grad and out.is_inference()
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
    assert net(x, t).requires_grad


# In a fresh process: is a malloc'd block of argv[1] bytes an mmap'd chunk? glibc marks one with
# IS_MMAPPED (0x2) in the size word just before the block.
_MMAPPED_PROBE = """
import ctypes, sys
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
p = libc.malloc(int(sys.argv[1]))
print(bool(ctypes.c_size_t.from_address(p - ctypes.sizeof(ctypes.c_size_t)).value & 2))
"""


def _block_is_mmapped(size: int, env: dict[str, str]) -> bool:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", _MMAPPED_PROBE, str(size)], env=clean | env,
                         capture_output=True, text=True, check=True)
    return out.stdout.strip() == "True"


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the thresholds are glibc's")
def test_malloc_environment_is_keep_freed_memorys_thresholds_in_a_form_every_glibc_takes():
    env = malloc_environment()
    record = keep_freed_memory(True)
    assert env == {"MALLOC_TRIM_THRESHOLD_": str(record["trim_threshold"]),
                   "MALLOC_MMAP_THRESHOLD_": str(record["mmap_threshold"])}
    # glibc before 2.35 ignores an mmap threshold above HEAP_MAX_SIZE / 2 = 32 MiB (malloc.c do_set_mmap_threshold).
    assert int(env["MALLOC_MMAP_THRESHOLD_"]) <= 32 << 20
    # A new process started with it serves a 16 MiB block from the heap, which glibc's default would mmap.
    assert _block_is_mmapped(16 << 20, {})
    assert not _block_is_mmapped(16 << 20, env)
