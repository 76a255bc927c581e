# Datasets: the first job on a dataset checks its layout (a missing or wrong path fails here, before any work).


rule check_data:
    output:
        f"{RESULTS}/data/{{dataset}}.json",
    params:
        spec=lambda w: J(config["datasets"][w.dataset]),
    threads: 1
    shell:
        "{PY} -m bench check-data --spec {params.spec:q} --out {output}"
