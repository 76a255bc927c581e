# Analytic-DPM's Gamma_n: once per model, shared by every sampler and K that needs it; a sampler's own Monte-Carlo
# size (moments_M) has its own file, once per (model, M).

MOMENTS_SHELL = "{PY} -m bench moments --spec {params.spec:q} --model {input.model} --threads {threads} --out {output}"


def moments_spec(model: str, M: int | None = None) -> str:
    return J({**config["moments"], **({"M": M} if M else {}), "dataset": config["datasets"][dataset_of(model)]})


rule moments:
    input:
        model=f"{RESULTS}/models/{{model}}.pt",
        data=lambda w: data_check(dataset_of(w.model)),
    output:
        f"{RESULTS}/moments/{{model}}.npz",
    wildcard_constraints:
        model=r"[a-z0-9][a-z0-9_]*",
    benchmark:
        f"{RESULTS}/benchmarks/moments/{{model}}.tsv"
    params:
        spec=lambda w: moments_spec(w.model),
    threads: 1
    shell:
        MOMENTS_SHELL


rule moments_of_size:
    input:
        model=f"{RESULTS}/models/{{model}}.pt",
        data=lambda w: data_check(dataset_of(w.model)),
    output:
        f"{RESULTS}/moments/{{model}}.M{{M}}.npz",
    wildcard_constraints:
        model=r"[a-z0-9][a-z0-9_]*",
        M=r"[0-9]+",
    benchmark:
        f"{RESULTS}/benchmarks/moments/{{model}}.M{{M}}.tsv"
    params:
        spec=lambda w: moments_spec(w.model, int(w.M)),
    threads: 1
    shell:
        MOMENTS_SHELL
