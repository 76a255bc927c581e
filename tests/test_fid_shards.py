"""FD / IS of a cell from per-shard feature sums: the same metrics.csv for 1 and 3 shards (local, tiny config)."""

import json
import subprocess

import numpy as np
from test_slurm import ROOT, read_metrics, snakemake_cmd, tiny_subset


def test_metrics_csv_is_the_same_for_one_and_three_shards(tmp_path):
    # One working directory: model, extractor and reference statistics are made once; each shard
    # count reruns sampling, per-shard features and the cell's merge.
    work = tmp_path / "work"
    seen = {}
    for shard_size, n_shards in ((12, 1), (4, 3)):
        config = tiny_subset(
            tmp_path / f"tiny-{shard_size}.yaml", ["ddim_eta0"], [2], n_samples=12, shard_size=shard_size, batch_size=12
        )
        r = subprocess.run(
            snakemake_cmd("--cores", "2", "--configfile", str(config), "--directory", str(work), "results/metrics.csv"),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=1800,
        )
        assert r.returncode == 0, r.stderr[-3000:]
        features = sorted((work / "results/features/digits/mlp/ddim_eta0/K2").glob("shard*.npz"))
        assert len(features) >= n_shards
        record = json.loads((work / "results/cells/digits/mlp/ddim_eta0/K2/fd_is.json").read_text())
        assert record["n_images"] == 12 and record["reference"] == "train"
        seen[n_shards] = (read_metrics(work / "results/metrics.csv"), record)
    (rows_1, record_1), (rows_3, record_3) = seen[1], seen[3]
    assert rows_1 == rows_3
    assert {r["metric"] for r in rows_1} == {"fd_digits", "is_digits"}
    assert all(r["status"] == "ok" and np.isfinite(float(r["value"])) for r in rows_1)
    for key in ("fd", "is_mean", "is_std", "fd_ci", "is_ci", "reference_stats_sha256", "backend", "mode"):
        assert record_1[key] == record_3[key], key
