# Metrics per cell: FD / IS from per-shard feature sums (one features job per sample shard, merged
# exactly by the cell fd_is job) against reference statistics made once per dataset, split and
# extractor (or published ones); NLL (VLB) from the model on the test split; PF-ODE NLL once per
# continuous-time model.


FD_IS = config["metrics"].get("fd_is", {})


def fd_extractor() -> dict:
    return config["extractors"][FD_IS["extractor"]]


def extractor_weights(name: str) -> str:
    """The file an extractor loads: a trained digits classifier, a local Inception file, or the registry's."""
    ext = config["extractors"][name]
    if ext["kind"] == "digits_cnn":
        return f"{RESULTS}/extractors/{name}.npz"
    if "weights_path" in ext:
        return ext["weights_path"]
    entry = default_weights(ext.get("backend", "torch-fidelity"))
    return f"resources/inception/{entry.name}/{entry.file}"


def reference_stats_file(dataset: str) -> str:
    """Reference statistics of the fd_is metric: published (by registry name) or computed once per split."""
    if "reference_stats" in FD_IS:
        return f"{RESULTS}/refs/published/{FD_IS['reference_stats']}-{FD_IS['extractor']}.npz"
    return f"{RESULTS}/refs/{dataset}-{FD_IS['reference_split']}-{FD_IS['extractor']}.npz"


def cell_features(w) -> list[str]:
    return [
        f"{RESULTS}/features/{w.dataset}/{w.model}/{w.sampler}/K{w.K}/shard{i:04d}.npz"
        for i in range(len(SHARDS))
    ]


rule fetch_inception_weights:
    output:
        "resources/inception/{weights}/{file}",
    params:
        spec=lambda w: J({"weights": w.weights}),
    shell:
        "{PY} -m bench fetch-weights --spec {params.spec:q} --out {output}"


rule reference_stats:
    input:
        extractor=lambda w: extractor_weights(w.extractor),
        data=lambda w: data_check(w.dataset),
    output:
        stats=f"{RESULTS}/refs/{{dataset}}-{{split}}-{{extractor}}.npz",
        meta=f"{RESULTS}/refs/{{dataset}}-{{split}}-{{extractor}}.json",
    benchmark:
        f"{RESULTS}/benchmarks/reference_stats/{{dataset}}-{{split}}-{{extractor}}.tsv"
    wildcard_constraints:
        dataset=r"[A-Za-z0-9_]+",
        split=r"train|test",
    params:
        spec=lambda w: J(
            {"extractor": config["extractors"][w.extractor], "dataset": config["datasets"][w.dataset], "split": w.split}
        ),
    threads: 1
    shell:
        "{PY} -m bench reference-stats --spec {params.spec:q} --extractor {input.extractor} --out {output.stats}"


rule published_reference_stats:
    output:
        stats=f"{RESULTS}/refs/published/{{reference}}-{{extractor}}.npz",
        meta=f"{RESULTS}/refs/published/{{reference}}-{{extractor}}.json",
    wildcard_constraints:
        reference=r"[a-z0-9_]+",
    params:
        spec=lambda w: J({"extractor": config["extractors"][w.extractor], "reference": w.reference}),
    shell:
        "{PY} -m bench reference-stats --spec {params.spec:q} --out {output.stats}"


rule features:
    input:
        shard=f"{RESULTS}/samples/{{dataset}}/{{model}}/{{sampler}}/K{{K}}/shard{{shard}}.npz",
        extractor=lambda w: extractor_weights(FD_IS["extractor"]),
    output:
        f"{RESULTS}/features/{{dataset}}/{{model}}/{{sampler}}/K{{K}}/shard{{shard}}.npz",
    benchmark:
        f"{RESULTS}/benchmarks/features/{{dataset}}/{{model}}/{{sampler}}/K{{K}}/shard{{shard}}.tsv"
    params:
        spec=lambda w: J({"extractor": fd_extractor()}),
    threads: 1
    shell:
        "{PY} -m bench features --spec {params.spec:q} --extractor {input.extractor} --shard {input.shard} "
        "--threads {threads} --out {output}"


rule fd_is:
    input:
        features=cell_features,
        reference=lambda w: reference_stats_file(w.dataset),
    output:
        f"{RESULTS}/cells/{{dataset}}/{{model}}/{{sampler}}/K{{K}}/fd_is.json",
    benchmark:
        f"{RESULTS}/benchmarks/fd_is/{{dataset}}/{{model}}/{{sampler}}/K{{K}}.tsv"
    params:
        spec=lambda w: J(
            {
                "extractor": fd_extractor(),
                "n_samples": config["sampling"]["n_samples"],
                "is_splits": FD_IS.get("is_splits", 10),
                "bootstrap": FD_IS.get("bootstrap", {}),
                "context": f"model {w.model}, sampler {w.sampler}, K={w.K}",
                # recorded in fd_is.json with the sampler function's defaults (bench.samplers.resolved_options)
                "sampler": {k: v for k, v in config["samplers"][w.sampler].items() if k in ("fn", "options")},
            }
        ),
    threads: 1
    shell:
        "{PY} -m bench fd-is --spec {params.spec:q} --features {input.features} --reference {input.reference} "
        "--threads {threads} --out {output}"


def nll_variances(model: str, grid: str) -> list[str]:
    """Every reverse variance whose VLB some sampler on this model and grid reports."""
    wanted = {config["samplers"][c.sampler]["nll"] for c in CELLS
              if c.model == model and has_nll(c.sampler) and config["samplers"][c.sampler]["grid"] == grid}
    return sorted(wanted)


rule nll:
    input:
        unpack(lambda w: {"model": f"{RESULTS}/models/{w.model}.pt", "data": data_check(w.dataset)}
               | moments_arg(w.model, "analytic" in nll_variances(w.model, w.grid) or w.grid in MOMENT_GRIDS)),
    output:
        f"{RESULTS}/cells/{{dataset}}/{{model}}/nll-{{grid}}/K{{K}}.json",
    benchmark:
        f"{RESULTS}/benchmarks/nll/{{dataset}}/{{model}}/nll-{{grid}}/K{{K}}.tsv"
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
            | ({"decoder": d} if (d := nll_decoder(config, w.model, w.grid)) != "trajectory" else {})
        ),
        moments=lambda w, input: f"--moments {input.moments}" if "moments" in input.keys() else "",
    threads: 1
    shell:
        "{PY} -m bench nll --spec {params.spec:q} --model {input.model} --threads {threads} --out {output}"
        " {params.moments}"


rule ode_nll:
    input:
        model=f"{RESULTS}/models/{{model}}.pt",
        data=lambda w: data_check(w.dataset),
    output:
        f"{RESULTS}/cells/{{dataset}}/{{model}}/ode_nll.json",
    benchmark:
        f"{RESULTS}/benchmarks/ode_nll/{{dataset}}/{{model}}.tsv"
    params:
        spec=lambda w: J(
            {"dataset": config["datasets"][w.dataset], "seed": config["seed"], **config["metrics"]["ode_nll"]}
        ),
    threads: 1
    shell:
        "{PY} -m bench ode-nll --spec {params.spec:q} --model {input.model} --threads {threads} --out {output}"


def ode_nll_record(model: str) -> dict:
    """A PF-ODE likelihood row of metrics.csv: sampler `pf_ode`, grid `adaptive`, K = the solve's measured NFE."""
    o = config["metrics"]["ode_nll"]
    return {
        "dataset": dataset_of(model),
        "model": model,
        "family": config["models"][model]["family"],
        "sampler": PF_ODE,
        "sampler_label": f"PF-ODE, rtol={o['rtol']}, atol={o['atol']}",
        "grid": "adaptive",
        "seed": config["seed"],
        "ode_nll": f"cells/{dataset_of(model)}/{model}/ode_nll.json",
    }


SHARED_CELLS = shared_cells(config)


def cell_record(c) -> dict:
    """A cell of metrics.csv and the result files it reads: those of the cell that computes it (bench/steps/shared_cells.py)."""
    sampler = config["samplers"][c.sampler]
    dataset = dataset_of(c.model)
    source = SHARED_CELLS.get(c, c)
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
        rec["fd_is"] = f"cells/{dataset}/{source.model}/{source.sampler}/K{source.K}/fd_is.json"
    if has_nll(c.sampler):
        rec["nll"] = f"cells/{dataset}/{source.model}/nll-{config['samplers'][source.sampler]['grid']}/K{source.K}.json"
        rec["nll_variance"] = sampler["nll"]
    if source != c:
        rec["computed_as"] = source.key
    return rec


CELL_RECORDS = [cell_record(c) for c in CELLS] + [ode_nll_record(m) for m in ode_nll_models(config)]


def run_seeds() -> dict:
    """Every seed of the run, by what it seeds (shown on the report's index)."""
    seeds = {"sampling (sample i has seed + i)": config["sampling"]["seed"], "nll noise": config["seed"]}
    if "moments" in config:
        seeds["moments"] = config["moments"]["seed"]
    seeds |= {f"train {m}": cfg["train"]["seed"] for m, cfg in config["models"].items() if "train" in cfg}
    seeds |= {f"extractor {e}": cfg.get("seed", 0) for e, cfg in config.get("extractors", {}).items()}
    return seeds


ORACLE = config.get("oracle")


def oracle_spec() -> dict:
    """The oracle job's settings: every (sampler, K) that config's experiments run on oracle.model, once each."""
    model = ORACLE["model"]
    if model not in config["models"]:
        raise ValueError(f"oracle.model: {model!r} is not a model of this config; allowed: {sorted(config['models'])}")
    if config["models"][model]["family"] != "ddpm":
        raise ValueError(f"oracle.model: {model!r} is of family {config['models'][model]['family']!r}; the "
                         "oracle's exact eps is a discrete chain's, so it needs a model of family 'ddpm'")
    pairs = dict.fromkeys((s, K) for e in config["experiments"] if e["model"] == model for s in e["samplers"] for K in e["K"])
    schedule = config["models"][model]["schedule"]
    return {
        **{k: ORACLE[k] for k in ("mixture", "n_samples", "reference_samples", "gamma_samples", "seed")},
        "schedule": schedule["name"],
        "T": schedule["T"],
        "cells": [{"sampler": s, "K": K, "sampler_config": config["samplers"][s]} for s, K in pairs],
    }


if ORACLE:

    rule oracle:
        output:
            f"{RESULTS}/oracle.json",
        benchmark:
            f"{RESULTS}/benchmarks/oracle/oracle.tsv"
        params:
            spec=lambda w: J(oracle_spec()),
        threads: 1
        shell:
            "{PY} -m bench oracle --spec {params.spec:q} --out {output}"


rule collect:
    input:
        [f"{RESULTS}/{r[k]}" for r in CELL_RECORDS for k in ("fd_is", "nll", "ode_nll") if k in r],
        [f"{RESULTS}/oracle.json"] if ORACLE else [],
    output:
        csv=f"{RESULTS}/metrics.csv",
        provenance=f"{RESULTS}/provenance.json",
    benchmark:
        f"{RESULTS}/benchmarks/collect/collect.tsv"
    params:
        spec=J(
            {
                "cells": CELL_RECORDS,
                "config_hash": config_hash(config),
                "profile": config["profile"],
                "seeds": run_seeds(),
                "sampling": config["sampling"],
                "metrics": config["metrics"],
                **({"oracle": {"record": "oracle.json", "labels": {
                    c["sampler"]: {"label": config["samplers"][c["sampler"]].get("label", c["sampler"]),
                                   "grid": config["samplers"][c["sampler"]]["grid"]}
                    for c in oracle_spec()["cells"]}}} if ORACLE else {}),
            }
        ),
    shell:
        "{PY} -m bench collect --spec {params.spec:q} --results {RESULTS} --out {output.csv}"
