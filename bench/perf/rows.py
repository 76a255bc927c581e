"""The rows of ``python -m bench perf``: the printed table and results/perf.csv.

Columns of results/perf.csv (rows are appended; the rows of one run share run_id):
  run_id            UTC time the run started (ISO 8601)
  device            cpu | cuda
  device_name       CPU model or GPU name
  torch             torch version
  diffusers         diffusers version, '' when not installed
  threads           torch intra-op threads
  clock             wall: device-synchronised perf_counter; cpu: process CPU seconds (CPU only)
  network           mlp | ddpm_unet | adm_unet | edm_songunet | cell:<model> (a config's model, bench.perf.cells)
  shape             one sample, C x H x W
  batch             samples per network call
  loop              network (bare forward) | ours (bench.samplers) | diffusers (the peer loop)
  sampler           registry name ('' on network rows)
  steps             grid length
  nfe               network calls per sample run
  ms_per_nfe        network rows: median forward time; loops: median sample-run time / nfe
  overhead_pct      100 (ms_per_nfe / network ms_per_nfe - 1): what a loop adds per network call
                    (cell rows: 100 (run time / network time inside the same run - 1))
  ours_over_peer    ours rows: our median sample-run time / diffusers' on the same timesteps
  images_per_s      batch / median sample-run time (network rows: / forward time)
  peak_mem_mib      largest peak memory of a timed call above the memory in use when it started
  mem_kind          cuda_max_allocated | rss_hwm (Linux VmHWM, reset first) | ru_maxrss (process peak)
  net_pct           ours rows, instrumented run: share of network calls
  noise_pct         ... share of NoiseSource draws
  arith_pct         ... the rest: the sampler's and the denoiser's tensor arithmetic, Python
  peer_max_rel_diff max |x0_ours - x0_peer| / max |x0_peer| for deterministic samplers (DDIM, eta=0)
  gflop_per_nfe     network FLOPs per call, torch's count (bench.perf.network_flops: 2 per multiply-add of
                    matmuls, convolutions, attention)
  tflops            gflop_per_nfe / ms_per_nfe: the rate at which the row turns network FLOPs
  precision         number format of the network's products: fp32 | tf32 | bf16 | fp16
  peak_tflops       the GPU's dense peak in that format (bench/perf/gpu_peaks.yaml; '' on a CPU or unknown GPU)
  peak_pct          100 tflops / peak_tflops
  repeats, warmup   timed runs per median, untimed runs before them
  noise_module      module whose NoiseSource our samplers drew from
  state_dtype       dtype of our samplers' state and noise (the config's sampling.state_dtype)
  speed             JSON record of the bench.runtime.speed options applied to the network
  note              why a sampler was skipped, and other remarks
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from bench.perf.network_flops import gpu_peak
from bench.runtime.io import atomic_text

COLUMNS = (
    "run_id", "device", "device_name", "torch", "diffusers", "threads", "clock", "network", "shape", "batch",
    "loop", "sampler", "steps", "nfe", "ms_per_nfe", "overhead_pct", "ours_over_peer", "images_per_s",
    "peak_mem_mib", "mem_kind", "net_pct", "noise_pct", "arith_pct", "peer_max_rel_diff", "gflop_per_nfe",
    "tflops", "precision", "peak_tflops", "peak_pct", "repeats", "warmup", "noise_module", "state_dtype", "speed",
    "note",
)


@dataclass
class PerfRow:
    """One line of the table and of results/perf.csv (see the module docstring for the columns)."""

    network: str
    shape: str
    batch: int
    loop: str
    sampler: str = ""
    steps: int | None = None
    nfe: int | None = None
    ms_per_nfe: float | None = None
    overhead_pct: float | None = None
    ours_over_peer: float | None = None
    images_per_s: float | None = None
    peak_mem_mib: float | None = None
    mem_kind: str = ""
    net_pct: float | None = None
    noise_pct: float | None = None
    arith_pct: float | None = None
    peer_max_rel_diff: float | None = None
    gflop_per_nfe: float | None = None
    tflops: float | None = None
    peak_tflops: float | None = None
    peak_pct: float | None = None
    note: str = ""
    context: dict[str, Any] = field(default_factory=dict)

    def set_throughput(self, flop_per_nfe: int, peak: float | None) -> None:
        """The network FLOPs per NFE, the rate at which this row turns them (TFLOP/s) and its share of ``peak``."""
        self.gflop_per_nfe = flop_per_nfe / 1e9
        if self.ms_per_nfe:
            self.tflops = flop_per_nfe / (self.ms_per_nfe * 1e-3) / 1e12
            if peak:
                self.peak_tflops, self.peak_pct = peak, 100.0 * self.tflops / peak

    def as_record(self) -> dict[str, str]:
        """The CSV row: the run context, then this row's values; None is written as ''."""
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "context"}
        merged = {**self.context, **values}
        return {c: _csv_value(merged.get(c)) for c in COLUMNS}


def format_table(rows: list[PerfRow]) -> str:
    """The rows as an aligned text table, one line per row, a legend line last."""
    header = (
        "network", "batch", "loop", "sampler", "nfe", "ms/NFE", "overhead%", "ours/peer", "img/s", "peakMiB",
        "net%", "noise%", "arith%", "peer_diff", "TFLOP/s", "%peak", "note",
    )
    lines = [header]
    for r in rows:
        lines.append(
            (
                r.network, str(r.batch), r.loop, r.sampler, _fmt(r.nfe), _fmt(r.ms_per_nfe, ".3g"),
                _fmt(r.overhead_pct, "+.1f"), _fmt(r.ours_over_peer, ".2f"), _fmt(r.images_per_s, ".4g"),
                _fmt(r.peak_mem_mib, ".1f"), _fmt(r.net_pct, ".1f"), _fmt(r.noise_pct, ".1f"),
                _fmt(r.arith_pct, ".1f"), _fmt(r.peer_max_rel_diff, ".1e"), _fmt(r.tflops, ".3g"),
                _fmt(r.peak_pct, ".1f"), r.note,
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    numeric = {1, *range(4, 16)}
    text = [
        "  ".join(c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True)))
        for line in lines
    ]
    ctx = rows[0].context if rows else {}
    text.append(
        f"{ctx.get('device_name', '')}; torch {ctx.get('torch', '')}, diffusers {ctx.get('diffusers') or '-'}; "
        f"{ctx.get('threads', '')} thread(s); {ctx.get('clock', '')} clock; medians of {ctx.get('repeats', '')} "
        f"after {ctx.get('warmup', '')} warm-up; noise from {ctx.get('noise_module', '')}; "
        f"{ctx.get('precision', '')} products, %peak of {_peak_label(ctx.get('device_name', ''), ctx.get('device'))}"
    )
    return "\n".join(line.rstrip() for line in text)


def _peak_label(device_name: str, device: str | None) -> str:
    """Which peak the %peak column divides by, or why it is empty."""
    if device != "cuda":
        return "none (a CPU has no entry in gpu_peaks.yaml)"
    peak = gpu_peak(device_name)
    if peak is None:
        return f"none ({device_name!r} is not in gpu_peaks.yaml)"
    return f"the {peak.name} datasheet ({peak.source})"


def append_csv(rows: list[PerfRow], path: Path) -> Path:
    """Append the rows to the CSV at ``path`` (created with a header), replacing the file atomically."""
    path = Path(path)
    existing = path.read_text() if path.exists() else ""
    if existing:
        found = next(csv.reader(io.StringIO(existing)), [])
        if tuple(found) != COLUMNS:
            raise ValueError(f"{path} has columns {found}, not the perf columns {list(COLUMNS)}; move it aside")
        if not existing.endswith("\n"):
            existing += "\n"
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    if not existing:
        writer.writeheader()
    writer.writerows(r.as_record() for r in rows)
    return atomic_text(existing + buffer.getvalue(), path)


def _fmt(value, spec: str = "d") -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return format(value, spec)


def _csv_value(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
