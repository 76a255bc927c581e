# Analytic-DPM's Gamma_n: once per model, shared by every sampler and K that needs it.


rule moments:
    input:
        model=f"{RESULTS}/models/{{model}}.pt",
        data=lambda w: data_check(dataset_of(w.model)),
    output:
        f"{RESULTS}/moments/{{model}}.npz",
    benchmark:
        f"{RESULTS}/benchmarks/moments/{{model}}.tsv"
    params:
        spec=lambda w: J({**config["moments"], "dataset": config["datasets"][dataset_of(w.model)]}),
    threads: 1
    shell:
        "{PY} -m bench moments --spec {params.spec:q} --model {input.model} --threads {threads} --out {output}"
