# Feature extractors for FD / IS, trained on the dataset's train split.


rule train_extractor:
    input:
        data=lambda w: data_check(config["extractors"][w.extractor]["dataset"]),
    output:
        f"{RESULTS}/extractors/{{extractor}}.npz",
    benchmark:
        f"{RESULTS}/benchmarks/train_extractor/{{extractor}}.tsv"
    params:
        spec=lambda w: J(
            {
                "extractor": config["extractors"][w.extractor],
                "dataset": config["datasets"][config["extractors"][w.extractor]["dataset"]],
            }
        ),
    threads: 1
    shell:
        "{PY} -m bench train-extractor --spec {params.spec:q} --out {output}"
