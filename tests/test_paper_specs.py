"""The paper profile's table specs: generated from paper_tables.csv, equal to it, and loadable by the report."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest
import yaml

from bench.config import cells, load_config, ode_nll_models
from bench.report.specs import load_table_spec
from bench.report.tables import MISSING, build_table
from bench.steps.plan import plan
from bench.steps.shared_cells import shared_cells

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "tools/paper_specs"
SPEC_FILES = sorted((ROOT / "workflows/config/tables").glob("paper_*.yaml"))


def _generator():
    spec = importlib.util.spec_from_file_location("make_paper_specs", SCRIPTS / "make_paper_specs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def csv_rows():
    with open(SCRIPTS / "paper_tables.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def cfg():
    return load_config(ROOT / "workflows/config/paper.yaml", root=ROOT, check_paths=False)


def test_spec_files_are_what_the_generator_writes():
    generator = _generator()
    built = generator.build_all()
    assert sorted(built) == [p.name for p in SPEC_FILES]
    for path in SPEC_FILES:
        assert path.read_text(encoding="utf-8") == generator.render(built[path.name]), path.name


def test_paper_profile_lists_every_paper_spec(cfg):
    assert sorted(cfg["tables"]) == [f"workflows/config/tables/{p.name}" for p in SPEC_FILES]


def _entries() -> list[tuple[str, str, int | str, str | None, float | None]]:
    """(source row, column field, column, printed text, number) of every paper value in the spec files."""
    out = []
    for path in SPEC_FILES:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
        for row in spec["rows"]:
            for column in spec["columns"]["values"]:
                printed, number = row.get("paper_text", {}).get(column), row.get("paper", {}).get(column)
                if printed is not None or number is not None:
                    out.append((row["csv"], spec["columns"]["field"], column, printed, number))
    return out


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def test_every_csv_value_is_in_a_spec_cell_as_printed(csv_rows):
    entries = _entries()
    assert len(entries) == len(csv_rows)
    unmatched = []
    for line in csv_rows:
        value, key, K = line["value"].strip(), f"{line['model']} | {line['sampler']}", line["K"].strip()
        found = [
            e for e in entries
            if e[0] == key and (e[1] != "K" or not K or e[2] == int(K))
            and (e[3] == value if e[3] is not None else _is_float(value) and e[4] == float(value))
        ]
        if not found:
            unmatched.append((line["paper"], line["table"], key, K, value))
    assert not unmatched


def test_numbers_are_read_off_the_printed_entries():
    number = _generator().paper_number
    assert number("3.01*") == 3.01 and number("<= 3.75 (3.72)") == 3.75 and number("7.28±0.10") == 7.28
    assert number("> 200") is None and number("– (unstable)") is None and number("Missing model") is None


def test_specs_load_and_unavailable_cells_show_as_missing():
    for path in SPEC_FILES:
        spec = load_table_spec(path)
        table = build_table(spec, [])
        assert all(cell.status == MISSING for row in table.cells for cell in row)
        for row in spec.rows:
            assert row.unavailable is None or row.unavailable.strip()
            chosen = [{**row.selectors, **(row.at or {}).get(v, {})} for v in spec.column_values
                      if row.unavailable_reason(v) is None]
            assert all({"model", "sampler"} <= set(c) for c in chosen), (path.name, row.label)


def test_plan_counts_every_producible_cell_once(cfg):
    rows = plan(cfg, root=ROOT)
    total = rows[-1]
    # Every cell of the experiments, and one PF-ODE likelihood per model of metrics.ode_nll.
    assert total["cells"] == len(cells(cfg)) + len(ode_nll_models(cfg))
    # A cell another computes (bench/steps/shared_cells.py) draws no samples of its own.
    assert total["samples"] == (len(cells(cfg)) - len(shared_cells(cfg))) * cfg["sampling"]["n_samples"]
    assert total["unavailable"] == sum(r["unavailable"] for r in rows[:-1]) > 0
    edm = next(r for r in rows if r["table"] == "paper_edm_t2_cifar10_uncond")
    # Four models x N = 18 Heun steps (2N - 1 = 35 NFE) x 50k samples; configs B-E (8 cells) unavailable.
    assert (edm["cells"], edm["unavailable"], edm["nfe"]) == (4, 8, 4 * 35 * 50_000)


def test_score_sde_rows_run_edm_conversions_with_score_sde_samplers(cfg):
    """NCSN++ cont. (VE) and DDPM++ cont. (VP) FID / IS run EDM's converted weights with score-SDE's own samplers
    at N = 1000, DDPM++ cont. (VP) NLL its PF-ODE likelihood; they keep the paper's values and say so; every other
    score-SDE row stays unavailable with a reason."""
    want = {
        "ve/cifar10_ncsnpp_continuous": ("edm_baseline_cifar10_ve", "sde_pc_ve", "baseline-cifar10-32x32-uncond-ve.pkl"),
        "vp/cifar10_ddpmpp_continuous": ("edm_baseline_cifar10_vp", "sde_em_vp", "baseline-cifar10-32x32-uncond-vp.pkl"),
    }
    paper = {("fid", "ve"): 2.38, ("fid", "vp"): 2.55, ("is", "ve"): 9.83, ("is", "vp"): 9.58}
    producible = set()
    for name in ("fid", "is", "nll"):
        spec = yaml.safe_load((ROOT / f"workflows/config/tables/paper_score_sde_{name}.yaml").read_text(encoding="utf-8"))
        for row in spec["rows"]:
            config, sampler_text = row["csv"].split(" | ")
            if "unavailable" in row:
                assert len(row["unavailable"]) > 40, row
                continue
            model, sampler, pickle = want[config]
            assert "EDM" in row["label"] and pickle in row["note"]
            producible.add((spec["metric"], config))
            if spec["metric"] == "ode_nll_bpd":
                assert sampler_text.startswith("probability-flow ODE (uniformly")
                assert (row["model"], row["sampler"], row["paper"]) == (model, "pf_ode", {"cifar10": 3.16})
                continue
            if sampler_text.startswith("probability-flow ODE, black-box"):
                assert (row["model"], row["sampler"], row["paper"]) == (model, "sde_ode_vp", {1000: 3.93})
                producible.add(("ode_fid", config))
                continue
            assert sampler_text.startswith("PC / SDE sampler") and spec["metric"] in ("fid", "is")
            assert (row["model"], row["sampler"]) == (model, sampler)
            assert row["paper"] == {1000: paper[(spec["metric"], config[:2])]}
    vp = "vp/cifar10_ddpmpp_continuous"
    assert producible == {(m, c) for m in ("fid", "is") for c in want} | {("ode_nll_bpd", vp), ("ode_fid", vp)}
    # The PF-ODE likelihood runs for that model only (not for EDM's other continuous-time models).
    assert ode_nll_models(cfg) == ["edm_baseline_cifar10_vp"]
    assert cfg["models"]["edm_baseline_cifar10_ve"]["checkpoint"] == "edm_baseline_cifar10_uncond_ve"
    assert cfg["models"]["edm_baseline_cifar10_vp"]["checkpoint"] == "edm_baseline_cifar10_uncond_vp"
    pc, em = cfg["samplers"]["sde_pc_ve"], cfg["samplers"]["sde_em_vp"]
    assert (pc["fn"], pc["options"]) == ("pc", {"snr": 0.16, "n_steps_each": 1, "corrector": "langevin", "denoise": True, "norm_block": 1024})
    assert (em["fn"], em["grid_options"]) == ("vp_euler_maruyama", {"beta_min": 0.1, "beta_max": 20.0, "eps": 1e-3})
    rows = {r["table"]: r for r in plan(cfg, root=ROOT)}
    # PC: one corrector + one predictor call per level (2000 NFE); Euler-Maruyama: 1000; the PF-ODE's planning
    # assumption (VP_ODE_NFE + 1 for denoising); 50k samples each.
    assert (rows["paper_score_sde_fid"]["cells"], rows["paper_score_sde_fid"]["nfe"]) == (3, (3000 + 201) * 50_000)


def test_edm_fig2_runs_each_baselines_original_sampler_and_the_steps_to_alg1(cfg):
    """EDM Fig. 2a-b (Table 1's original samplers): VP = Euler on score-SDE's VP t_i, sigma(t), s(t); VE = Euler
    on VE t_i with sigma(t) = sqrt(t), s(t) = 1; then Heun, EDM's t_i and sigma(t) = t. The paper plots curves only."""
    spec = yaml.safe_load((ROOT / "workflows/config/tables/paper_edm_fig2.yaml").read_text(encoding="utf-8"))
    assert not any("paper" in row or "paper_text" in row for row in spec["rows"])
    want = {
        "edm_baseline_cifar10_vp": [("vp", "euler", "vp", "vp"), ("vp", "heun", "vp", "vp"), ("edm", "heun", "vp", "vp")],
        "edm_baseline_cifar10_ve": [("ve", "euler", "ve", "none"), ("ve", "heun", "ve", "none"), ("edm", "heun", "ve", "none")],
    }
    for model, steps in want.items():
        rows = [row for row in spec["rows"] if row.get("model") == model]
        samplers = [cfg["samplers"][row["sampler"]] for row in rows]
        got = [(s["grid"], s["options"]["solver"], s["options"]["schedule"], s["options"]["scaling"]) for s in samplers[:3]]
        assert got == steps and all(s["fn"] == "edm_general" for s in samplers[:3])
        assert rows[3]["sampler"] == "edm_heun_rho7"
    fig2 = next(r for r in plan(cfg, root=ROOT) if r["table"] == "paper_edm_fig2")
    # Per model: Euler sum(K) NFE, three Heun rows sum(2K - 1); ImageNet-64's 2 rows x 6 K unavailable.
    Ks = spec["columns"]["values"]
    nfe = 2 * (sum(Ks) + 3 * sum(2 * K - 1 for K in Ks)) * 50_000
    assert (fig2["cells"], fig2["unavailable"], fig2["nfe"]) == (48, 12, nfe)
