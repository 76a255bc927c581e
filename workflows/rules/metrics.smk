# Metrics per cell: FD / IS from per-shard feature sums (one features job per sample shard, merged
# exactly by the cell fd_is job) against reference statistics made once per dataset, split and
# extractor (or published ones); NLL (VLB) from the model on the test split; PF-ODE NLL once per
# continuous-time model; DDIM's reconstruction error per (model, sampler, K) of metrics.recon; improved
# precision / recall of the cells that tables ask for.


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
        shard=f"{RESULTS}/samples/{CELL_DIR}/shard{{shard}}.npz",
        extractor=lambda w: extractor_weights(FD_IS["extractor"]),
    output:
        f"{RESULTS}/features/{CELL_DIR}/shard{{shard}}.npz",
    benchmark:
        f"{RESULTS}/benchmarks/features/{CELL_DIR}/shard{{shard}}.tsv"
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
        f"{RESULTS}/cells/{CELL_DIR}/fd_is.json",
    benchmark:
        f"{RESULTS}/benchmarks/fd_is/{CELL_DIR}.tsv"
    params:
        spec=fd_is_spec,
    threads: 1
    shell:
        "{PY} -m bench fd-is --spec {params.spec:q} --features {input.features} --reference {input.reference} "
        "--threads {threads} --out {output}"


# The same features against the statistics of a split a table names (bench/config/tables.py reference_split).
rule fd_is_split:
    input:
        features=cell_features,
        reference=lambda w: reference_stats_file(w.dataset, w.split),
    output:
        f"{RESULTS}/cells/{CELL_DIR}/fd_is-{{split}}.json",
    benchmark:
        f"{RESULTS}/benchmarks/fd_is/{CELL_DIR}-{{split}}.tsv"
    wildcard_constraints:
        split=r"train|test",
    params:
        spec=fd_is_spec,
    threads: 1
    shell:
        "{PY} -m bench fd-is --spec {params.spec:q} --features {input.features} --reference {input.reference} "
        "--threads {threads} --out {output}"


# Improved precision / recall of the cells a precision or recall table shows: the cell's own per-sample
# features (those of its FD / IS) against the features of a seeded subset of a split, made once per
# (dataset, split, extractor) (bench/steps/reference_features.py, bench/metrics/precision_recall.py).
rule reference_features:
    input:
        extractor=lambda w: extractor_weights(w.extractor),
        data=lambda w: data_check(w.dataset),
    output:
        f"{RESULTS}/refs/features/{{dataset}}-{{split}}-{{extractor}}.npz",
    benchmark:
        f"{RESULTS}/benchmarks/reference_features/{{dataset}}-{{split}}-{{extractor}}.tsv"
    wildcard_constraints:
        dataset=r"[A-Za-z0-9_]+",
        split=r"train|test",
    params:
        spec=lambda w: J(reference_features_spec(w.dataset, w.split, w.extractor)),
    threads: 1
    shell:
        "{PY} -m bench reference-features --spec {params.spec:q} --extractor {input.extractor} "
        "--threads {threads} --out {output}"


rule precision_recall:
    input:
        features=cell_features,
        reference=lambda w: reference_features_file(w.dataset),
    output:
        f"{RESULTS}/cells/{CELL_DIR}/precision_recall.json",
    benchmark:
        f"{RESULTS}/benchmarks/precision_recall/{CELL_DIR}.tsv"
    params:
        spec=precision_recall_spec,
    threads: 1
    shell:
        "{PY} -m bench precision-recall --spec {params.spec:q} --features {input.features} "
        "--reference {input.reference} --threads {threads} --out {output}"


rule nll:
    input:
        unpack(lambda w: {"model": f"{RESULTS}/models/{w.model}.pt", "data": data_check(w.dataset)}
               | nll_moments_arg(w)),
    output:
        f"{RESULTS}/cells/{NLL_CELL}.json",
    benchmark:
        f"{RESULTS}/benchmarks/nll/{NLL_CELL}.tsv"
    wildcard_constraints:
        grid=r"[a-z_]+",
    params:
        spec=lambda w: J(
            {
                "dataset": config["datasets"][w.dataset],
                "split": config["metrics"]["nll"]["split"],
                "clip_x0": config["metrics"]["nll"].get("clip_x0", True),
                "grid": w.grid,
                "K": int(w.K),
                "seed": config["seed"],
                "variances": nll_job_variances(w),
            }
            # grid options only when there are some, so that existing jobs keep their settings
            | ({"grid_options": o} if (o := nll_grid_options(config, w.model, w.grid)) else {})
            | ({"decoder": d} if (d := nll_decoder(config, w.model, w.grid)) != "trajectory" else {})
            | ({"moments_M": M} if (M := nll_job_size(w)) else {})
        ),
        moments=lambda w, input: f"--moments {input.moments}" if "moments" in input.keys() else "",
    threads: 1
    shell:
        "{PY} -m bench nll --spec {params.spec:q} --model {input.model} --threads {threads} --out {output}"
        " {params.moments}"


# Analytic-DPM Table 5's bounds by M: the same job on the Gamma_n of a sampler's own M (moments_M).
use rule nll as nll_of_size with:
    output:
        f"{RESULTS}/cells/{NLL_CELL_OF_SIZE}.json",
    benchmark:
        f"{RESULTS}/benchmarks/nll/{NLL_CELL_OF_SIZE}.tsv"
    wildcard_constraints:
        grid=r"[a-z_]+",
        M=r"[0-9]+",


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


# A killed recon job resumes after its last finished batch (bench/steps/recon.py, OUT.partial.npz).
rule recon:
    input:
        model=f"{RESULTS}/models/{{model}}.pt",
        data=lambda w: data_check(w.dataset),
    output:
        f"{RESULTS}/cells/{CELL_DIR}/recon.json",
    benchmark:
        f"{RESULTS}/benchmarks/recon/{CELL_DIR}.tsv"
    params:
        spec=recon_spec,
    threads: 1
    shell:
        "{PY} -m bench recon --spec {params.spec:q} --model {input.model} --threads {threads} --out {output}"


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
        [f"{RESULTS}/{r[k]}" for r in CELL_RECORDS for k in ("fd_is", "nll", "ode_nll", "recon", "precision_recall")
         if k in r],
        [f"{RESULTS}/{path}" for r in CELL_RECORDS for path in r.get("fd_is_splits", {}).values()],
        [f"{RESULTS}/oracle.json"] if ORACLE else [],
    output:
        csv=f"{RESULTS}/metrics.csv",
        provenance=f"{RESULTS}/provenance.json",
    benchmark:
        f"{RESULTS}/benchmarks/collect/collect.tsv"
    params:
        spec=J(collect_spec()),
    shell:
        "{PY} -m bench collect --spec {params.spec:q} --results {RESULTS} --out {output.csv}"
