# Sampling: each cell's samples in shards of seed ranges; sample i always has seed `seed + i`.


rule sample_shard:
    input:
        unpack(lambda w: {"model": f"{RESULTS}/models/{w.model}.pt"} | sample_moments_arg(w.model, w.sampler)),
    output:
        f"{RESULTS}/samples/{CELL_DIR}/shard{{shard}}.npz",
    benchmark:
        f"{RESULTS}/benchmarks/sample_shard/{CELL_DIR}/shard{{shard}}.tsv"
    params:
        spec=sample_spec,
        moments=lambda w, input: f"--moments {input.moments}" if "moments" in input.keys() else "",
    threads: 1
    shell:
        "{PY} -m bench sample --spec {params.spec:q} --model {input.model} --threads {threads} --out {output}"
        " {params.moments}"
