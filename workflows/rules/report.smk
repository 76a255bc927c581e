# Report: HTML, LaTeX and figures, read from results/ only (reruns in seconds).


rule report:
    input:
        csv=f"{RESULTS}/metrics.csv",
        provenance=f"{RESULTS}/provenance.json",
        tables=TABLES,
        # python -m bench perf's table, when one has been written: the report reruns when it changes.
        perf=lambda w: [f"{RESULTS}/perf.csv"] if Path(f"{RESULTS}/perf.csv").is_file() else [],
        shards=report_shards(),
    output:
        f"{REPORTS}/index.html",
    benchmark:
        f"{RESULTS}/benchmarks/report/report.tsv"
    shell:
        "{PY} -m bench report --results {RESULTS} --tables {input.tables} --out {REPORTS}"
