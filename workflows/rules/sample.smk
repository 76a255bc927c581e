# Sampling: each cell's samples in shards of seed ranges; sample i always has seed `seed + i`.


def sample_spec(w) -> str:
    start, stop = SHARDS[int(w.shard)]
    return J(
        {
            "sampler": config["samplers"][w.sampler],
            "K": int(w.K),
            "start": start,
            "stop": stop,
            "seed": config["sampling"]["seed"],
            "batch_size": config["sampling"]["batch_size"],
            "state_dtype": state_dtype_name(config),
            "speed": sampling_speed(config),
            "context": f"model {w.model}, sampler {w.sampler}, K={w.K}",
        }
    )


rule sample_shard:
    input:
        unpack(lambda w: {"model": f"{RESULTS}/models/{w.model}.pt"} | moments_arg(w.model, needs_moments(w.sampler))),
    output:
        f"{RESULTS}/samples/{{dataset}}/{{model}}/{{sampler}}/K{{K}}/shard{{shard}}.npz",
    benchmark:
        f"{RESULTS}/benchmarks/sample_shard/{{dataset}}/{{model}}/{{sampler}}/K{{K}}/shard{{shard}}.tsv"
    params:
        spec=sample_spec,
        moments=lambda w, input: f"--moments {input.moments}" if "moments" in input.keys() else "",
    threads: 1
    shell:
        "{PY} -m bench sample --spec {params.spec:q} --model {input.model} --threads {threads} --out {output}"
        " {params.moments}"
