# Metrics per cell: FD / IS from the cell's samples; NLL (VLB) from the model on the test split.


def cell_shards(w) -> list[str]:
    return [
        f"{RESULTS}/samples/{w.dataset}/{w.model}/{w.sampler}/K{w.K}/shard{i:04d}.npz"
        for i in range(len(SHARDS))
    ]


rule fd_is:
    input:
        shards=cell_shards,
        extractor=lambda w: f"{RESULTS}/extractors/{config['metrics']['fd_is']['extractor']}.pt",
    output:
        f"{RESULTS}/cells/{{dataset}}/{{model}}/{{sampler}}/K{{K}}/fd_is.json",
    params:
        spec=lambda w: J(
            {
                "dataset": config["datasets"][w.dataset],
                "reference_split": config["metrics"]["fd_is"]["reference_split"],
                "n_samples": config["sampling"]["n_samples"],
                "context": f"model {w.model}, sampler {w.sampler}, K={w.K}",
            }
        ),
    threads: 1
    shell:
        "{PY} -m bench fd-is --spec {params.spec:q} --extractor {input.extractor} "
        "--shards {input.shards} --out {output}"


def nll_variances(model: str, grid: str) -> list[str]:
    """Every reverse variance whose VLB some sampler on this model and grid reports."""
    wanted = {config["samplers"][c.sampler]["nll"] for c in CELLS
              if c.model == model and has_nll(c.sampler) and config["samplers"][c.sampler]["grid"] == grid}
    return sorted(wanted)


rule nll:
    input:
        unpack(lambda w: {"model": f"{RESULTS}/models/{w.model}.pt"}
               | moments_arg(w.model, "analytic" in nll_variances(w.model, w.grid) or w.grid in MOMENT_GRIDS)),
    output:
        f"{RESULTS}/cells/{{dataset}}/{{model}}/nll-{{grid}}/K{{K}}.json",
    params:
        spec=lambda w: J(
            {
                "dataset": config["datasets"][w.dataset],
                "split": config["metrics"]["nll"]["split"],
                "clip_x0": config["metrics"]["nll"].get("clip_x0", True),
                "grid": w.grid,
                "K": int(w.K),
                "seed": config["seed"],
                "variances": nll_variances(w.model, w.grid),
            }
            # grid options only when there are some, so that existing jobs keep their settings
            | ({"grid_options": o} if (o := nll_grid_options(config, w.model, w.grid)) else {})
        ),
        moments=lambda w, input: f"--moments {input.moments}" if "moments" in input.keys() else "",
    threads: 1
    shell:
        "{PY} -m bench nll --spec {params.spec:q} --model {input.model} --threads {threads} --out {output}"
        " {params.moments}"


def cell_record(c) -> dict:
    sampler = config["samplers"][c.sampler]
    dataset = dataset_of(c.model)
    rec = {
        "dataset": dataset,
        "model": c.model,
        "family": config["models"][c.model]["family"],
        "sampler": c.sampler,
        "sampler_label": sampler.get("label", c.sampler),
        "grid": sampler["grid"],
        "K": c.K,
        "seed": config["sampling"]["seed"],
    }
    if "fd_is" in config["metrics"]:
        rec["fd_is"] = f"cells/{dataset}/{c.model}/{c.sampler}/K{c.K}/fd_is.json"
    if has_nll(c.sampler):
        rec["nll"] = f"cells/{dataset}/{c.model}/nll-{sampler['grid']}/K{c.K}.json"
        rec["nll_variance"] = sampler["nll"]
    return rec


CELL_RECORDS = [cell_record(c) for c in CELLS]


rule collect:
    input:
        [f"{RESULTS}/{r[k]}" for r in CELL_RECORDS for k in ("fd_is", "nll") if k in r],
    output:
        csv=f"{RESULTS}/metrics.csv",
        provenance=f"{RESULTS}/provenance.json",
    params:
        spec=J(
            {
                "cells": CELL_RECORDS,
                "config_hash": config_hash(config),
                "profile": config["profile"],
                "sampling": config["sampling"],
                "metrics": config["metrics"],
            }
        ),
    shell:
        "{PY} -m bench collect --spec {params.spec:q} --results {RESULTS} --out {output.csv}"
