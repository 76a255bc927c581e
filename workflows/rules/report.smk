# Report: HTML, LaTeX and figures, read from results/ only (reruns in seconds).


rule report:
    input:
        csv=f"{RESULTS}/metrics.csv",
        provenance=f"{RESULTS}/provenance.json",
        tables=TABLES,
        shards=[
            f"{RESULTS}/samples/{dataset_of(c.model)}/{c.model}/{c.sampler}/K{c.K}/shard0000.npz"
            for c in CELLS
        ],
    output:
        f"{REPORTS}/index.html",
    benchmark:
        f"{RESULTS}/benchmarks/report/report.tsv"
    shell:
        "{PY} -m bench report --results {RESULTS} --tables {input.tables} --out {REPORTS}"
