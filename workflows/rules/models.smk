# Models: trained here (`train:`) or converted from an official checkpoint (`checkpoint:`, paper profile).
# Both write results/models/{model}.pt in our format, so every later rule is the same.


rule train_model:
    input:
        data=lambda w: data_check(dataset_of(w.model)),
    output:
        f"{RESULTS}/models/{{model}}.pt",
    wildcard_constraints:
        model=one_of(TRAINED),
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


rule fetch_checkpoint:
    output:
        f"{CHECKPOINTS}/{{checkpoint}}.ckpt",
    params:
        spec=lambda w: J({"checkpoint": registry_entry(w.checkpoint)}),
        lock=lambda w: f"{CHECKPOINTS}/{w.checkpoint}.lock.json",
    threads: 1
    shell:
        "{PY} -m bench fetch-checkpoint --spec {params.spec:q} --lock {params.lock} --out {output}"


rule convert_checkpoint:
    input:
        checkpoint=lambda w: f"{CHECKPOINTS}/{config['models'][w.model]['checkpoint']}.ckpt",
        data=lambda w: data_check(dataset_of(w.model)),
    output:
        f"{RESULTS}/models/{{model}}.pt",
    wildcard_constraints:
        model=one_of(CONVERTED),
    params:
        spec=lambda w: J(
            {
                "model": config["models"][w.model],
                "dataset": config["datasets"][dataset_of(w.model)],
                "checkpoint": registry_entry(config["models"][w.model]["checkpoint"]),
            }
        ),
    threads: 1
    shell:
        "{PY} -m bench convert-checkpoint --spec {params.spec:q} --checkpoint {input.checkpoint} --out {output}"
