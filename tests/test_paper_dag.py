"""The paper profile's DAG: a dry run with no data, no checkpoints and no network plans every table cell."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

from bench.config import Cell, load_config, profile_reference_split
from bench.steps.paths import fd_is_record, recon_record
from bench.steps.plan import is_unavailable
from bench.steps.shared_cells import shared_cells

ROOT = Path(__file__).resolve().parents[1]


def test_dry_run_of_the_paper_profile_plans_every_cell_of_every_table(tmp_path):
    cfg = load_config(ROOT / "workflows/config/paper.yaml", root=ROOT, check_paths=False)
    r = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-n", "--cores", "2",
         "--configfile", str(ROOT / "workflows/config/paper.yaml"), "--directory", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=900, env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
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
                cell = {**row, spec["columns"]["field"]: value}
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
                if spec["metric"] == "nll_bpd":
                    wanted.add(f"results/cells/{dataset}/{model}/nll-{cfg['samplers'][sampler]['grid']}/K{K}.json")
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
    assert not (tmp_path / "results").exists() and not (tmp_path / "resources").exists()
