"""The paper profile's DAG: a dry run with no data, no checkpoints and no network plans every table cell."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from bench.config import PR_METRICS, Cell, load_config, profile_reference_split
from bench.samplers import own_moments_size
from bench.steps.paths import fd_is_record, nll_cell, precision_recall_record, recon_record
from bench.steps.plan import is_unavailable
from bench.steps.shared_cells import shared_cells

ROOT = Path(__file__).resolve().parents[1]


def test_dry_run_of_the_paper_profile_plans_every_cell_of_every_table(paper_dry_run):
    cfg = load_config(ROOT / "workflows/config/paper.yaml", root=ROOT, check_paths=False)
    r, folder = paper_dry_run
    assert r.returncode == 0, r.stderr[-3000:]
    outputs = set(re.findall(r"^\s*output: (.+)$", r.stdout + r.stderr, flags=re.MULTILINE))
    outputs = {path for line in outputs for path in line.split(", ")}
    wanted = set()
    shared = shared_cells(cfg)
    for rel in cfg["tables"]:
        spec = yaml.safe_load((ROOT / rel).read_text(encoding="utf-8"))
        if "derived" in spec:
            continue  # read off other tables' cells in the report (bench.report.derived)
        for row in spec["rows"]:
            for value in spec["columns"]["values"]:
                if is_unavailable(row, value):
                    continue
                # a column may show a cell of its own model, sampler or K (its `at` entry)
                cell = {**row, spec["columns"]["field"]: value, **row.get("at", {}).get(value, {})}
                if spec["metric"] == "ode_nll_bpd":
                    model = cell["model"]
                    wanted.add(f"results/cells/{cfg['models'][model]['dataset']}/{model}/ode_nll.json")
                    continue
                model, sampler, K = cell["model"], cell["sampler"], cell["K"]
                if spec["metric"] == "recon_mse":
                    # a reconstruction is its own job, never another cell's samples
                    wanted.add(f"results/cells/{recon_record(cfg['models'][model]['dataset'], model, sampler, K)}")
                    continue
                if (source := shared.get(Cell(model, sampler, K))) is not None:
                    sampler = source.sampler  # its samples and bound are another cell's (bench/steps/shared_cells.py)
                dataset = cfg["models"][model]["dataset"]
                if spec["metric"] in PR_METRICS:
                    # both values come from one job on the cell's own features, against the reference images' features
                    wanted.add(f"results/cells/{precision_recall_record(dataset, model, sampler, K)}")
                    pr = cfg["metrics"]["precision_recall"]
                    extractor = cfg["metrics"]["fd_is"]["extractor"]
                    wanted.add(f"results/refs/features/{dataset}-{pr['reference_split']}-{extractor}.npz")
                    continue
                if spec["metric"] == "nll_bpd":
                    # a bound on Gamma_n of the sampler's own M has a job of its own (rule nll_of_size)
                    M = own_moments_size(cfg["samplers"][sampler], cfg["moments"])
                    wanted.add(f"results/cells/{nll_cell(dataset, model, cfg['samplers'][sampler]['grid'], K, M)}.json")
                else:
                    # a table's own reference split has its own fd_is record beside the profile's (fd_is-<split>.json)
                    split = spec.get("reference_split")
                    own = None if split == profile_reference_split(cfg) else split
                    wanted.add(f"results/cells/{fd_is_record(dataset, model, sampler, K, own)}")
    assert wanted and not wanted - outputs
    assert shared and not [p for p in outputs for c in shared if f"/{c.model}/{c.sampler}/K{c.K}/" in p]
    # The data checks and the checkpoint downloads are jobs of the DAG, not preconditions of planning it.
    assert {f"results/data/{d}.json" for d in cfg["datasets"]} <= outputs
    assert {f"resources/checkpoints/{m['checkpoint']}.ckpt" for m in cfg["models"].values() if "checkpoint" in m} <= outputs
    assert not (folder / "results").exists() and not (folder / "resources").exists()
