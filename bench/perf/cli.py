"""``python -m bench perf``: what our sampler loops cost beside the network, and beside diffusers' loop.

In one process, on the same denoiser, for each network it measures: the bare network forward per
batch; every registered sampler that runs on a plain eps network (others get a row saying why
they were skipped), as time per network evaluation (NFE) and its overhead over the bare forward;
for DDPM and DDIM the same sampler run through diffusers' ``set_timesteps`` + ``step`` loop on the
same network and timesteps; images per second and peak memory. Times are medians over repeats
after warm-up, device-synchronised; the loops of one network run in interleaved rounds, so that a
drifting machine load affects them alike. An extra instrumented run splits a sample run into network
calls, noise draws and the rest (our arithmetic). Networks have random weights (seeded). Then every
(model, sampler) pair of a config (default: the embedded default) on that model's own network and
family denoiser, as the DAG runs it (bench.perf.cells).

The flags are this module's; the columns of results/perf.csv are bench.perf.rows'.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.config import DEFAULT_STATE_DTYPE, STATE_DTYPES
from bench.perf.networks import DEFAULT_CELLS, DEFAULT_MANIFESTS, NETWORKS, SIZES
from bench.perf.options import CLOCKS, PerfOptions
from bench.perf.rows import append_csv, format_table
from bench.perf.run import run_perf
from bench.runtime.speed import COMPILE_MODES, SpeedOptions
from bench.samplers import SAMPLERS

DEFAULT_OUT = Path("results/perf.csv")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench perf", description=__doc__.splitlines()[0])
    p.add_argument("--networks", nargs="+", choices=NETWORKS, default=list(NETWORKS),
                   help="networks to time, with random weights (default: all)")
    p.add_argument("--batch", type=int, help="samples per call (default: per network, " + str(SIZES) + ")")
    p.add_argument("--steps", type=int, help="sampler steps K (default: per network)")
    p.add_argument("--samplers", nargs="+", help=f"registered samplers to measure (default: all of {sorted(SAMPLERS)})")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per row; the median is reported")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs before the timed ones")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--clock", choices=CLOCKS, default="wall", help="what a run's seconds measure")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and of sample 0's noise")
    p.add_argument("--no-peer", dest="peer", action="store_false", help="skip diffusers' loops")
    p.add_argument("--noise-module", default="bench.core.noise", help="module providing NoiseSource")
    p.add_argument("--state-dtype", choices=STATE_DTYPES, default=DEFAULT_STATE_DTYPE,
                   help="dtype of the samplers' state and noise (the config's sampling.state_dtype)")
    p.add_argument("--manifests", type=Path, default=DEFAULT_MANIFESTS, help="folder of the network manifests")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="CSV to append to")
    p.add_argument("--cells", "--configfile", "--config", dest="cells", type=Path, default=DEFAULT_CELLS,
                   help="config whose (model, sampler) pairs are timed on their own networks (default %(default)s)")
    p.add_argument("--no-cells", dest="cells", action="store_const", const=None, help="skip the config's pairs")
    p.add_argument("--no-write", dest="write", action="store_false", help="print only")
    speed = p.add_argument_group("speed options (all off by default)")
    speed.add_argument("--channels-last", action="store_true", help="4-D weights and inputs in channels-last format")
    speed.add_argument("--tf32", action="store_true", help="TF32 matmuls and convolutions on CUDA")
    speed.add_argument("--compile", dest="compile_mode", choices=COMPILE_MODES, help="torch.compile with this mode")
    speed.add_argument("--cuda-graphs", action="store_true", help="replay one CUDA graph per batch shape (CUDA only)")
    speed.add_argument("--autocast", choices=("bf16", "fp16"), help="autocast the network to this dtype")
    speed.add_argument("--keep-freed-memory", action="store_true", help="glibc malloc keeps freed memory")
    return p


def options_from_args(args: argparse.Namespace) -> PerfOptions:
    speed = SpeedOptions(
        channels_last=args.channels_last,
        tf32=args.tf32,
        compile_mode=args.compile_mode,
        cuda_graphs=args.cuda_graphs,
        autocast=args.autocast,
        keep_freed_memory=args.keep_freed_memory,
    )
    return PerfOptions(
        networks=tuple(args.networks),
        batch=args.batch,
        steps=args.steps,
        repeats=args.repeats,
        warmup=args.warmup,
        device=args.device,
        threads=args.threads,
        samplers=tuple(args.samplers) if args.samplers else None,
        peer=args.peer,
        clock=args.clock,
        seed=args.seed,
        noise_module=args.noise_module,
        state_dtype=args.state_dtype,
        manifests=args.manifests,
        speed=speed,
        cells=args.cells,
    )


def main(argv: list[str] | None = None) -> int:
    """Run, print the table, append the rows to --out; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        options = options_from_args(args)
    except ValueError as err:
        parser.error(str(err))
    rows = run_perf(options)
    print(format_table(rows))
    if args.write:
        print(f"appended {len(rows)} rows to {append_csv(rows, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
