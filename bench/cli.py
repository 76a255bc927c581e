"""``python -m bench <step>``: each Snakemake rule calls one step; every step also runs by hand.

This module only parses arguments and dispatches: the code of step ``name`` is ``run`` in its module
``bench.steps.<module>`` (``STEPS``), called with the step's flags as typed keyword arguments. Steps
take a JSON ``--spec`` holding exactly the settings that determine their output, so that Snakemake
reruns a job when, and only when, something it depends on changed. A step's module is imported only
when that step runs, so that a short job does not pay for torch, scikit-learn or torchvision when it
uses none of them.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

from bench.runtime.io import CorruptFileError, OutputWriteError


def _spec(text: str) -> dict:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise SystemExit(f"--spec is not valid JSON: {err}") from None


# Each step's module under bench/steps/ and its one-line description in `python -m bench --help`; the rule
# that calls it is in workflows/rules/.
STEPS = {
    "check-data": ("check_data", "check a dataset's folder layout; write its image counts"),
    "train-extractor": ("train_extractor", "train the digits CNN feature extractor (embedded default)"),
    "train": ("train_model", "train a model; after an interruption it resumes from OUT.resume"),
    "fetch-checkpoint": ("fetch_checkpoint", "download an official checkpoint and verify its md5 / sha256"),
    "convert-checkpoint": ("convert_checkpoint", "convert an official checkpoint into our model format"),
    "moments": ("moments", "Monte-Carlo Gamma_n of a model for Analytic-DPM (once per model)"),
    "sample": ("sample", "draw one shard (a seed range) of a cell's samples"),
    "features": ("features", "extractor features of one sample shard, summed for FD / IS"),
    "reference-stats": ("reference_stats", "reference statistics of a dataset split, or published ones"),
    "fetch-weights": ("fetch_weights", "download and verify the Inception weights"),
    "fd-is": ("fd_is", "FD / FID and IS of a cell from its shards' features"),
    "reference-features": ("reference_features", "per-image features of a dataset split's reference subset"),
    "precision-recall": ("precision_recall", "improved precision and recall of a cell from its shards' features"),
    "nll": ("nll", "variational bound in bits/dim of one trajectory and its reverse variances"),
    "ode-nll": ("ode_nll", "probability-flow ODE likelihood in bits/dim of a continuous-time model"),
    "recon": ("recon", "DDIM's reconstruction error: encode a data split with the DDIM ODE, decode, per-dim MSE"),
    "oracle": ("oracle", "every sampler on a Gaussian mixture's exact eps (no network): energy distance by K"),
    "collect": ("collect", "gather every cell's records into results/metrics.csv and provenance.json"),
    "report": ("report", "render the HTML and LaTeX tables and figures from results/metrics.csv"),
    "plan": ("plan", "print each table's cells, jobs, samples, NFE and estimated GPU hours"),
    "validate": ("validate", "check a configuration (schema, names, options, data paths) without running it"),
}
SPEC_HELP = (
    "the step's settings as one JSON object, exactly what determines its output (the rule builds it from the "
    """config), e.g. check-data's '{"kind": "digits"}'"""
)


def build_parser() -> argparse.ArgumentParser:
    description = "dpm-bench's steps: each Snakemake rule runs one, and each also runs by hand."
    p = argparse.ArgumentParser(prog="python -m bench", description=description)
    sub = p.add_subparsers(dest="step", required=True, metavar="STEP")

    def step(name: str, *, spec: bool = True, out: str | None = "the file this step writes") -> argparse.ArgumentParser:
        description = STEPS[name][1]
        sp = sub.add_parser(name, help=description, description=description)
        if spec:
            sp.add_argument("--spec", type=_spec, required=True, help=SPEC_HELP)
        if out:
            sp.add_argument("--out", type=Path, required=True, help=out)
        return sp

    def path(sp: argparse.ArgumentParser, flag: str, text: str, **kwargs) -> argparse.ArgumentParser:
        sp.add_argument(flag, type=Path, help=text, **kwargs)
        return sp

    def threads(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--threads", type=int, default=1, help="CPU threads of torch and BLAS (default 1)")

    def config_flag(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--configfile", "--config", dest="config", type=Path, required=True, metavar="FILE",
                        help="a dpm-bench config YAML, e.g. workflows/config/paper.yaml; its relative paths "
                             "resolve against the checkout that holds the Snakefile")

    model_help = "the model file written by train or convert-checkpoint"
    pins_help = "sha256 pins of unhashed downloads"
    sub.add_parser("perf", help="time the network, each sampler and a peer loop (python -m bench perf --help)")
    step("check-data", out="the summary JSON")
    step("train-extractor", out="the extractor's weights")
    threads(step("train", out="the model file; its resumable state goes to OUT.resume"))
    path(step("fetch-checkpoint", out="where the downloaded file goes"), "--lock",
         "JSON file pinning the sha256 of a download that has no published hash", required=True)
    path(step("convert-checkpoint", out="the model file"), "--checkpoint", "the downloaded official checkpoint",
         required=True)
    for name in ("sample", "nll", "moments"):
        sp = step(name, out="the shard (.npz)" if name == "sample" else "the result file")
        path(sp, "--model", model_help, required=True)
        threads(sp)
        if name != "moments":
            path(sp, "--moments", "the model's Gamma_n file (moments), for samplers that need it")
    sp = path(step("ode-nll", out="the result JSON"), "--model", model_help, required=True)
    threads(sp)
    sp = path(step("recon", out="the result JSON; its resumable state goes to OUT.partial.npz"), "--model",
              model_help, required=True)
    threads(sp)
    sp = step("features", out="the shard's features (.npz)")
    path(sp, "--extractor", "extractor weights (digits classifier or Inception file)", required=True)
    path(sp, "--shard", "the sample shard written by sample", required=True)
    threads(sp)
    sp = step("reference-stats", out="the statistics (.npz)")
    path(sp, "--extractor", "extractor weights, to compute statistics of a dataset split")
    path(sp, "--cache", "download folder of published statistics", default="resources/references")
    path(sp, "--lock", pins_help, default="resources/references.lock.json")
    threads(sp)
    sp = step("fetch-weights", out="the Inception weights file")
    path(sp, "--cache", "download folder of Inception weights", default="resources/inception")
    path(sp, "--lock", pins_help, default="resources/references.lock.json")
    sp = step("fd-is", out="the cell's FD / IS record (JSON)")
    path(sp, "--features", "the cell's per-shard features files, in seed order", nargs="+", required=True)
    path(sp, "--reference", "reference statistics written by reference-stats", required=True)
    threads(sp)
    sp = step("reference-features", out="the reference images' features (.npz)")
    path(sp, "--extractor", "extractor weights (digits classifier or Inception file)", required=True)
    threads(sp)
    sp = step("precision-recall", out="the cell's precision / recall record (JSON)")
    path(sp, "--features", "the cell's per-shard features files, in seed order", nargs="+", required=True)
    path(sp, "--reference", "reference features written by reference-features", required=True)
    threads(sp)
    step("oracle", out="the oracle table's record (JSON)")
    path(step("collect", out="results/metrics.csv"), "--results", "the results folder whose cells/ it reads",
         required=True)
    sp = step("report", spec=False, out="the report folder")
    path(sp, "--results", "the results folder holding metrics.csv", required=True)
    path(sp, "--tables", "the table specs (YAML) to render", nargs="+", required=True)
    config_flag(step("plan", spec=False, out=None))
    config_flag(step("validate", spec=False, out=None))
    return p


def main(argv: list[str] | None = None) -> int:
    from bench.config import ConfigError

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["perf"]:
        # perf has its own parser (its options start with --, which a REMAINDER subparser refuses).
        from bench.perf.cli import main as perf_main

        return perf_main(argv[1:])
    args = vars(build_parser().parse_args(argv))
    module = STEPS[args.pop("step")][0]
    try:
        importlib.import_module(f"bench.steps.{module}").run(**args)
    except (CorruptFileError, OutputWriteError) as err:
        # A bad input file or a failed write is the user's to fix: name it, without torch's or numpy's traceback.
        print(f"error: {err}", file=sys.stderr)
        return 1
    except ConfigError as err:
        print("invalid configuration:", file=sys.stderr)
        for line in str(err).splitlines():
            print(f"  - {line}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
