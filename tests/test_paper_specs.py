"""The paper profile's table specs: generated from paper_tables.csv, equal to it, and loadable by the report."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest
import yaml

from bench.checkpoints.registry import get_checkpoint
from bench.config import cells, load_config, ode_nll_models, recon_cells
from bench.config.sources import checkpoint_registry
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
    # Every cell of the experiments, one PF-ODE likelihood per model of metrics.ode_nll, one reconstruction per
    # (model, sampler, K) of metrics.recon.
    assert total["cells"] == len(cells(cfg)) + len(ode_nll_models(cfg)) + len(recon_cells(cfg))
    # A cell another computes (bench/steps/shared_cells.py) draws no samples of its own.
    assert total["samples"] == (len(cells(cfg)) - len(shared_cells(cfg))) * cfg["sampling"]["n_samples"]
    assert total["unavailable"] == sum(r["unavailable"] for r in rows[:-1]) > 0
    edm = next(r for r in rows if r["table"] == "paper_edm_t2_cifar10_uncond")
    # Four models x N = 18 Heun steps (2N - 1 = 35 NFE) x 50k samples; configs B-E (8 cells) unavailable.
    assert (edm["cells"], edm["unavailable"], edm["nfe"]) == (4, 8, 4 * 35 * 50_000)


def test_score_sde_rows_run_score_sdes_own_networks_with_its_samplers(cfg, csv_rows):
    """Every row runs score-SDE's own networks (first checkpoint: FID / IS by each config's PC sampler; last: ODE
    FID and the PF-ODE NLL) at N = 1000 and keeps the paper's values: continuous and discrete-time VE and VP, and
    sub-VP."""
    first = {"ve/cifar10_ncsnpp_continuous": ("sde_ve_ncsnpp_cont", "sde_pc_ve"),
             "ve/cifar10_ncsnpp_deep_continuous": ("sde_ve_ncsnpp_deep_cont", "sde_pc_ve"),
             "vp/cifar10_ddpmpp_continuous": ("sde_vp_ddpmpp_cont", "sde_em_vp"),
             "vp/cifar10_ddpmpp_deep_continuous": ("sde_vp_ddpmpp_deep_cont", "sde_em_vp"),
             "ve/cifar10_ncsnpp": ("sde_ve_ncsnpp", "sde_pc_ve"),
             "vp/cifar10_ddpm": ("sde_vp_ddpm", "sde_ancestral_vp"),
             "vp/cifar10_ddpmpp": ("sde_vp_ddpmpp", "sde_ancestral_vp"),
             "subvp/cifar10_ddpmpp_continuous": ("sde_subvp_ddpmpp_cont", "sde_em_subvp"),
             "subvp/cifar10_ddpmpp_deep_continuous": ("sde_subvp_ddpmpp_deep_cont", "sde_em_subvp")}
    last = {"vp/cifar10_ddpmpp_continuous": ("sde_vp_ddpmpp_cont_last", "sde_ode_vp"),
            "vp/cifar10_ddpmpp_deep_continuous": ("sde_vp_ddpmpp_deep_cont_last", "sde_ode_vp"),
            "vp/cifar10_ddpm_continuous": ("sde_vp_ddpm_cont_last", "sde_ode_vp"),
            "vp/cifar10_ddpm": ("sde_vp_ddpm_last", "sde_ode_vp"),
            "subvp/cifar10_ddpm_continuous": ("sde_subvp_ddpm_cont_last", "sde_ode_subvp"),
            "subvp/cifar10_ddpmpp_continuous": ("sde_subvp_ddpmpp_cont_last", "sde_ode_subvp"),
            "subvp/cifar10_ddpmpp_deep_continuous": ("sde_subvp_ddpmpp_deep_cont_last", "sde_ode_subvp")}
    paper = {(r["model"], r["sampler"], r["metric"]): float(r["value"]) for r in csv_rows
             if r["paper"] == "score-SDE (Song et al. 2021)"}
    producible = set()
    for name, metric in (("fid", "FID"), ("is", "IS"), ("nll", "NLL bits/dim")):
        spec = yaml.safe_load((ROOT / f"workflows/config/tables/paper_score_sde_{name}.yaml").read_text(encoding="utf-8"))
        for row in spec["rows"]:
            assert "unavailable" not in row, row
            config, sampler_text = row["csv"].split(" | ")
            value = paper[(config, sampler_text, metric)]
            if sampler_text.startswith("probability-flow ODE"):
                model, sampler = last[config]
                assert (row["model"], row["sampler"]) == (model, "pf_ode" if spec["metric"] == "ode_nll_bpd" else sampler)
            else:
                assert (row["model"], row["sampler"]) == first[config]
            assert list(row["paper"].values()) == [value]
            producible.add((name, config, sampler_text.split(",")[0]))
    assert len(producible) == 16 + 8 + 7
    assert ode_nll_models(cfg) == [m for m, _ in last.values()]
    registry = checkpoint_registry(cfg)
    families = ("score_sde_ve", "score_sde_vp", "score_sde_vp_discrete", "score_sde_subvp")
    for model in [m for m, _ in first.values()] + [m for m, _ in last.values()]:
        entry = get_checkpoint(cfg["models"][model]["checkpoint"], registry)
        assert entry.layout == "score_sde_dict" and cfg["models"][model]["family"] in families
        assert ("last" in entry.note) == model.endswith("_last"), entry.note
    pc, em = cfg["samplers"]["sde_pc_ve"], cfg["samplers"]["sde_em_vp"]
    assert (pc["fn"], pc["options"]) == ("pc", {"snr": 0.16, "n_steps_each": 1, "corrector": "langevin", "denoise": True, "norm_block": 1024})
    assert (em["fn"], em["grid_options"]) == ("vp_euler_maruyama", {"beta_min": 0.1, "beta_max": 20.0, "eps": 1e-3})
    rows = {r["table"]: r for r in plan(cfg, root=ROOT)}
    # PC: one corrector + one predictor call per level (2000 NFE) x 3 models; Euler-Maruyama (VP and sub-VP) and
    # ancestral sampling: 1000 x 6; the PF-ODE's planning assumption (VP_ODE_NFE + 1 for denoising) x 7; 50k each.
    assert (rows["paper_score_sde_fid"]["cells"], rows["paper_score_sde_fid"]["nfe"]) == (
        16, (6000 + 6000 + 7 * 201) * 50_000)


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
    # Per model: Euler sum(K) NFE, three Heun rows sum(2K - 1).
    Ks = spec["columns"]["values"]
    nfe = 2 * (sum(Ks) + 3 * sum(2 * K - 1 for K in Ks)) * 50_000
    assert (fig2["cells"], fig2["unavailable"], fig2["nfe"]) == (48, 0, nfe)


def test_edm_fig2c_runs_ddim_as_iddpm_then_alg1_on_edms_conversion_of_adm(cfg):
    """EDM Fig. 2c: ADM's ImageNet-64 model as EDM converted it (iDDPMPrecond), DDIM = Euler on iDDPM's t_i with
    sigma(t) = t, s(t) = 1 (generate.py --disc iddpm), then Heun with EDM's t_i (Alg. 1)."""
    spec = yaml.safe_load((ROOT / "workflows/config/tables/paper_edm_fig2c.yaml").read_text(encoding="utf-8"))
    assert spec["dataset"] == cfg["models"]["edm_baseline_imagenet64_adm"]["dataset"] == "imagenet64"
    assert [(row["model"], row["sampler"]) for row in spec["rows"]] == [
        ("edm_baseline_imagenet64_adm", "edm_fig2c_ddim_original"), ("edm_baseline_imagenet64_adm", "edm_heun_rho7")]
    ddim = cfg["samplers"]["edm_fig2c_ddim_original"]
    assert (ddim["fn"], ddim["grid"], ddim["options"]) == (
        "edm_general", "iddpm", {"solver": "euler", "schedule": "linear", "scaling": "none"})
    model = cfg["models"]["edm_baseline_imagenet64_adm"]
    assert (model["checkpoint"], model["label_dim"]) == ("edm_baseline_imagenet64_cond_adm", 1000)
    row = next(r for r in plan(cfg, root=ROOT) if r["table"] == "paper_edm_fig2c")
    Ks = spec["columns"]["values"]
    assert (row["cells"], row["unavailable"], row["nfe"]) == (12, 0, (sum(Ks) + sum(2 * K - 1 for K in Ks)) * 50_000)


def test_edm_other_runs_adms_own_and_edms_stochastic_sampler_on_the_converted_adm(cfg):
    spec = yaml.safe_load((ROOT / "workflows/config/tables/paper_edm_other.yaml").read_text(encoding="utf-8"))
    rows = {row["csv"]: row for row in spec["rows"]}
    stochastic = rows["ADM (Dhariwal & Nichol) pretrained | EDM stochastic sampler (Alg. 2)"]
    assert (stochastic["model"], stochastic["sampler"], stochastic["K"]) == (
        "edm_baseline_imagenet64_adm", "edm_stochastic_imagenet64_adm", 256)
    assert stochastic["paper"] == {"imagenet64": 1.55}
    # EDM App. Table 5, ImageNet-64 pre-trained column.
    assert cfg["samplers"]["edm_stochastic_imagenet64_adm"]["options"] == {
        "S_churn": 80.0, "S_tmin": 0.05, "S_tmax": 50.0, "S_noise": 1.003}
    original = rows["ADM (Dhariwal & Nichol) pretrained | original sampler"]
    assert (original["model"], original["sampler"], original["K"], original["paper"]) == (
        "adm_imagenet64_converted", "iddpm_respaced", 250, {"imagenet64": 2.07})
    # guided-diffusion: learn_sigma, cosine, 1000 steps, rescale_timesteps False; the same file as the EDM rows.
    adm = cfg["models"]["adm_imagenet64_converted"]
    assert (adm["family"], adm["network"], adm["schedule"]) == (
        "iddpm", {"type": "edm_adm_backbone"}, {"name": "cosine", "T": 1000, "rescale_timesteps": False})
    assert adm["checkpoint"] == cfg["models"]["edm_baseline_imagenet64_adm"]["checkpoint"]


def test_iddpms_class_conditional_model_samples_250_respaced_steps_on_the_index_it_was_trained_on(cfg):
    spec = yaml.safe_load((ROOT / "workflows/config/tables/paper_iddpm_imagenet64_cond.yaml").read_text(encoding="utf-8"))
    (row,) = spec["rows"]
    assert (row["model"], row["sampler"], spec["columns"]["values"]) == ("iddpm_imagenet64_cond", "iddpm_respaced", [250])
    model = cfg["models"]["iddpm_imagenet64_cond"]
    assert model["schedule"] == {"name": "cosine", "T": 4000, "rescale_timesteps": False}
    assert (model["label_dim"], model["network"]["num_classes"], model["network"]["model_channels"]) == (1000, 1000, 192)
    assert cfg["samplers"]["iddpm_respaced"] == {
        "fn": "iddpm", "label": "iDDPM, learned Σ, respaced", "grid": "respace", "options": {"clip_x0": True}}


@pytest.mark.parametrize(("table", "dataset", "stem"), [("ffhq64", "ffhq64", "ffhq"), ("afhqv2_64", "afhqv2_64", "afhqv2")])
def test_edm_faces_run_config_f_at_n40_and_the_rest_is_unreleased(cfg, table, dataset, stem):
    """EDM Table 2 on FFHQ / AFHQv2 64: config F's released VP and VE pickles at N = 40 (NFE 79) on the
    dataset kind of EDM's dataset_tool output; the other ten configs were not released."""
    spec = yaml.safe_load((ROOT / f"workflows/config/tables/paper_edm_t2_{table}.yaml").read_text(encoding="utf-8"))
    producible = [row for row in spec["rows"] if "unavailable" not in row]
    assert [row["csv"].split(" | ")[0] for row in producible] == [
        "VP, config F + Non-leaky augmentation", "VE, config F + Non-leaky augmentation"]
    for row, arch in zip(producible, ("vp", "ve"), strict=True):
        model = cfg["models"][row["model"]]
        assert model["checkpoint"] == f"edm_{table}_uncond_{arch}" and model["dataset"] == dataset
        assert cfg["datasets"][dataset]["kind"] == dataset and row["sampler"] == "edm_heun_rho7"
    assert all("not released" in row["unavailable"] for row in spec["rows"] if "unavailable" in row)
    row = next(r for r in plan(cfg, root=ROOT) if r["table"] == f"paper_edm_t2_{table}")
    assert (row["cells"], row["unavailable"], row["nfe"]) == (2, 10, 2 * 79 * 50_000)


def test_tensorflow_rows_of_pytorch_diffusion_say_they_are_the_pytorch_rows_weights():
    spec = yaml.safe_load((ROOT / "workflows/config/tables/paper_pytorch_diffusion_train.yaml").read_text(encoding="utf-8"))
    tf_rows = [row for row in spec["rows"] if "TensorFlow" in row["csv"]]
    assert len(tf_rows) == 2
    assert all("same weights as the PyTorch row" in row["unavailable"] for row in tf_rows)


def test_test_split_tables_score_the_training_split_tables_cells_against_the_test_split(cfg):
    """DDPM Sec. 4.1 and pytorch_diffusion's validation column: the cells of DDPM Table 1 and of the
    training-split table, scored against CIFAR-10 test statistics: one more fd_is job per cell (ddpm_cifar10's is
    shared by both tables) and one reference-statistics job, no new samples."""
    tables = ("paper_ddpm_s41_fid_test", "paper_pytorch_diffusion_test")
    rows = {r["table"]: r for r in plan(cfg, root=ROOT)}
    for name in tables:
        spec = yaml.safe_load((ROOT / f"workflows/config/tables/{name}.yaml").read_text(encoding="utf-8"))
        assert spec["reference_split"] == "test"
    shards = len(range(0, 50_000, cfg["sampling"]["shard_size"]))
    assert [(rows[t]["cells"], rows[t]["unavailable"], rows[t]["jobs"]) for t in tables] == [
        (1, 0, 2 * shards + 1), (2, 2, 2 * (2 * shards + 1))]
    without = {**cfg, "tables": [t for t in cfg["tables"] if Path(t).stem not in tables]}
    total, before = rows["total"], plan(without, root=ROOT)[-1]
    assert (total["jobs"] - before["jobs"], total["samples"], total["cells"]) == (3, before["samples"], before["cells"])
