# Models: trained here (embedded default); official checkpoints come with the paper profile.


rule train_model:
    output:
        f"{RESULTS}/models/{{model}}.pt",
    benchmark:
        f"{RESULTS}/benchmarks/train_model/{{model}}.tsv"
    params:
        spec=lambda w: J(
            {
                "model": config["models"][w.model],
                "dataset": config["datasets"][dataset_of(w.model)],
            }
        ),
    # One thread: the small networks gain little from more, and on a laptop the models (and the
    # sampling of a finished model) then train side by side instead of oversubscribing the cores.
    threads: 1
    shell:
        "OMP_NUM_THREADS={threads} {PY} -m bench train --spec {params.spec:q} --threads {threads} --out {output}"
