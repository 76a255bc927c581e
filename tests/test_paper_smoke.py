"""Issue 18's acceptance test: the whole paper profile, in miniature (tests/paper_miniature.py), through the real DAG."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from dag import SNAKEMAKE
from paper_miniature import dump, k_map, largest_K_per_pair, miniature_profile, pair_kind, write_inception
from paper_miniature_data import write_cifar10_md5_hook

from bench.config import PF_ODE, cells, load_config, ode_nll_models, validate_config
from bench.steps.plan import table_cells
from bench.steps.shared_cells import shared_cells

ROOT = Path(__file__).resolve().parents[1]


def sample_cells(tables: list[str], root: Path) -> list[tuple[str, str, int]]:
    """(model, sampler, K) of every producible cell of the tables, PF-ODE likelihoods aside (they have no K)."""
    specs = [(yaml.safe_load((root / t).read_text(encoding="utf-8")), t) for t in tables]
    # A derived table's values are read off other tables' cells (bench.report.derived): it adds none.
    kept = [(spec, t) for spec, t in specs if spec["metric"] != "ode_nll_bpd" and "derived" not in spec]
    return [cell for spec, t in kept for cell in table_cells(spec, t)]


@pytest.mark.slow
def test_the_miniature_keeps_every_cell_table_and_shared_cell_of_the_paper_profile(tmp_path):
    paper = load_config(ROOT / "workflows/config/paper.yaml", root=ROOT, check_paths=False)
    mini, _ = miniature_profile(paper, ROOT, tmp_path, "http://127.0.0.1:1", tmp_path / "inception.pt")
    validate_config(mini, root=ROOT)
    assert len(cells(mini)) == len(cells(paper)) and len(shared_cells(mini)) == len(shared_cells(paper))
    assert len(sample_cells(mini["tables"], Path("/"))) == len(sample_cells(paper["tables"], ROOT))
    assert {m["checkpoint"] for m in mini["models"].values() if "checkpoint" in m} == set(mini["checkpoints"])
    # Distinct K stay distinct (the T move up past the K below them when those outnumber MIN_T's room) and small.
    small_K = k_map(paper, [yaml.safe_load((ROOT / t).read_text(encoding="utf-8")) for t in paper["tables"]])
    assert len(set(small_K.values())) == len(small_K)
    assert max(K for exp in mini["experiments"] for K in exp["K"]) < 40
    pairs, _ = miniature_profile(paper, ROOT, tmp_path / "pairs", "http://127.0.0.1:1", tmp_path / "inception.pt",
                                 tier="pairs")
    validate_config(pairs, root=ROOT)
    assert set(largest_K_per_pair(pairs)) == set(largest_K_per_pair(mini)) and len(cells(pairs)) == len(
        largest_K_per_pair(mini))
    assert len(shared_cells(pairs)) == len(shared_cells(mini))
    kinds, _ = miniature_profile(paper, ROOT, tmp_path / "kinds", "http://127.0.0.1:1", tmp_path / "inception.pt",
                                 tier="kinds")
    validate_config(kinds, root=ROOT)
    kept = largest_K_per_pair(kinds)
    assert {pair_kind(kinds, *p) for p in kept} == {pair_kind(pairs, *p) for p in largest_K_per_pair(pairs)}
    assert set(kept) < set(largest_K_per_pair(pairs)) and all(kept[p] == K for p, K in largest_K_per_pair(pairs).items()
                                                              if p in kept)


# Each cell computes an Inception FID (a 2048 x 2048 eigenproblem, the official formula): the kinds tier, one pair of
# each kind, runs by default; the pairs tier (every (model, sampler) pair at its largest K) and the full miniature
# (every cell, over 30 minutes on 2 cores) run on request.
TIER_VAR = "DPM_BENCH_PAPER_SMOKE"


@pytest.mark.slow
@pytest.mark.parametrize("tier", ["kinds", "pairs", "full"])
def test_every_producible_cell_of_the_paper_profile_ends_ok_in_miniature(tmp_path, served, tier):
    if tier != "kinds" and os.environ.get(TIER_VAR) != tier:
        pytest.skip(f"the {tier} tier of the miniature runs with {TIER_VAR}={tier}")
    paper = yaml.safe_load((ROOT / "workflows/config/paper.yaml").read_text(encoding="utf-8"))
    mini, cifar_md5 = miniature_profile(paper, ROOT, tmp_path, served[1], write_inception(tmp_path / "inception.pt"),
                                        tier=tier)
    config = dump(mini, tmp_path / "miniature.json")
    hook = write_cifar10_md5_hook(tmp_path / "hook", cifar_md5)
    env = dict(os.environ, PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")])))
    work = tmp_path / "run"
    start = time.monotonic()
    r = subprocess.run([*SNAKEMAKE, "--cores", "2", "--keep-going", "--configfile", str(config), "--directory",
                        str(work)], cwd=ROOT, capture_output=True, text=True, env=env, timeout=3000)
    wall = time.monotonic() - start
    (tmp_path / "snakemake.log").write_text(r.stdout + r.stderr)
    assert r.returncode == 0, r.stderr[-6000:]

    with open(work / "results/metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    status: dict[tuple[str, str, str], set[str]] = {}
    for row in rows:
        status.setdefault((row["model"], row["sampler"], row["K"]), set()).add(row["status"])
    wanted = {(m, s, str(K)) for m, s, K in sample_cells(mini["tables"], Path("/"))}
    assert not [row for row in rows if row["status"] != "ok"]
    assert not {cell for cell in wanted if status.get(cell) != {"ok"}}
    assert {m for m, s, _ in status if s == PF_ODE} == set(ode_nll_models(mini))
    # Tables scored against a split of their own (reference_split) read rows `<metric>_<split>`.
    specs = [yaml.safe_load(Path(t).read_text(encoding="utf-8")) for t in mini["tables"]]
    split_metrics = {f"{spec['metric']}_{spec['reference_split']}" for spec in specs if "reference_split" in spec}
    assert split_metrics and split_metrics <= {row["metric"] for row in rows}
    # Every metric a table shows has rows of its own (precision / recall: their own job on the cell's features).
    shown = {spec["metric"] for spec, t in zip(specs, mini["tables"], strict=True)
             if spec["metric"] != "ode_nll_bpd" and "derived" not in spec and table_cells(spec, t)}
    assert {"precision", "recall"} <= shown <= {row["metric"] for row in rows} | split_metrics
    assert (work / "reports/index.html").is_file()
    assert list((work / "reports").rglob("*.tex"))
    print(f"paper profile in miniature ({tier}): {len(status)} cells run, all ok ({len(wanted)} table cells), "
          f"{wall:.0f} s")
    sys.stdout.flush()
