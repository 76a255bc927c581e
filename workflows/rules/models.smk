# Models: trained here (embedded default); official checkpoints come with the paper profile.


rule train_model:
    output:
        f"{RESULTS}/models/{{model}}.pt",
    params:
        spec=lambda w: J(
            {
                "model": config["models"][w.model],
                "dataset": config["datasets"][dataset_of(w.model)],
            }
        ),
    threads: workflow.cores
    shell:
        "OMP_NUM_THREADS={threads} {PY} -m bench train --spec {params.spec:q} --out {output}"
