"""A miniature of the paper profile, derived from workflows/config/paper.yaml, for an end-to-end run of its DAG.

Same models, families, samplers, options, grids, metrics and tables; networks at a tiny width with random weights
written in each checkpoint's official layout and served from 127.0.0.1 (the config's ``checkpoints:`` points the
registry entries at them), a few generated images per dataset in its official layout, a random-weight Inception,
K mapped onto a few steps (T with it, so that K = T cells stay K = T) and two samples per cell.
"""

from __future__ import annotations

import copy
import io
import json
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
import yaml
from edm_pickle_fixtures import dumps_official, official_stand_ins, persistent
from inception_fixtures import write_torch_fidelity_weights
from paper_miniature_data import SIZES, md5_of, write_datasets

from bench.checkpoints.registry import get_checkpoint
from bench.checkpoints.score_sde_network import ema_parameter_names
from bench.config import PF_ODE, PR_METRICS, ode_nll_models
from bench.data import DATA_SHAPES
from bench.methods.score_sde import DISCRETE_STEPS
from bench.nets.edm_networks import build_edm_network
from bench.nets.factory import build_network

# Every level, attention resolution and head layout of the official networks stays; only widths and depths shrink
# (32 channels: the U-Nets' GroupNorm has 32 groups).
UNET_WIDTH = {"ddpm_unet": {"ch": 32, "num_res_blocks": 1}, "adm_unet": {"model_channels": 32, "num_res_blocks": 1},
              "score_sde_ncsnpp": {"nf": 16, "ch_mult": [1, 2], "num_res_blocks": 1},
              "score_sde_ddpm": {"nf": 32, "ch_mult": [1, 2], "num_res_blocks": 1},
              "ncsnv2": {"ngf": 8}, "ncsnv1": {"ngf": 8}}
# EDM's train.py network kwargs for --arch=ddpmpp (VP) and --arch=ncsnpp (VE), at a tiny width.
EDM_ARCH = {
    "vp": dict(model_type="SongUNet", embedding_type="positional", encoder_type="standard", decoder_type="standard",
               channel_mult_noise=1, resample_filter=[1, 1]),
    "ve": dict(model_type="SongUNet", embedding_type="fourier", encoder_type="residual", decoder_type="standard",
               channel_mult_noise=2, resample_filter=[1, 3, 3, 1]),
}
EDM_TINY = dict(model_channels=16, channel_mult=[1, 2, 2], num_blocks=1, attn_resolutions=[16], augment_dim=9,
                dropout=0.13, use_fp16=False, label_dim=0)
# EDM's ImageNet-64 network (DhariwalUNet, ADM's architecture; train.py --arch=adm), at a tiny width: 32 channels for
# GroupNorm's 32 groups, 64 at the attention level for one head of 64 channels.
EDM_ADM_TINY = dict(model_type="DhariwalUNet", model_channels=32, channel_mult=[1, 2], num_blocks=1,
                    attn_resolutions=[32], augment_dim=0, dropout=0.1, use_fp16=False)
# Baseline pickles hold score-SDE's VP / VE parameterisations (EDM's VPPrecond, VEPrecond) or ADM's (iDDPMPrecond),
# the others EDMPrecond.
EDM_PRECOND = {"edm": "training.networks.EDMPrecond", "baseline_vp": "training.networks.VPPrecond",
               "baseline_ve": "training.networks.VEPrecond", "baseline_adm": "training.networks.iDDPMPrecond"}
# The linear schedule scales its betas by 1000 / T (bench/core/schedules.py): beta_T < 1 needs T > 20.
MIN_T = 21
N_SAMPLES = 2


def k_map(cfg: dict, specs: list[dict]) -> dict[int, int]:
    """Every K of the profile (experiments, K columns of its tables, models' T) onto a few steps in the same order,
    so that distinct K stay distinct and a cell at K = T stays at K = T: those below the smallest T onto 2, 3, ...,
    the rest from MIN_T on, or past the last of those below where they reach it."""
    Ts = {m["schedule"]["T"] for m in cfg["models"].values() if "T" in m["schedule"]}
    values = Ts | {K for exp in cfg["experiments"] for K in exp["K"]}
    values |= {int(v) for spec in specs if spec["columns"]["field"] == "K" for v in spec["columns"]["values"]}
    below = sorted(v for v in values if v < min(Ts))
    rest = sorted(v for v in values if v >= min(Ts))
    start = max(MIN_T, len(below) + 2)
    return {v: i + 2 for i, v in enumerate(below)} | {v: start + i for i, v in enumerate(rest)}


# Datasets, in their official layouts -------------------------------------------------------------------------------


# Checkpoints, in their official layouts ----------------------------------------------------------------------------


def _randomise(net: torch.nn.Module, seed: int) -> OrderedDict:
    """The network's state dict with every float tensor redrawn: zero-initialised output layers would hide the rest.

    A level table (``sigmas``) stays as built, as every official file stores it: NCSNv2 divides by its entries."""
    gen = torch.Generator().manual_seed(seed)
    drawn = OrderedDict((k, torch.randn(v.shape, generator=gen) * 0.05 if v.is_floating_point() else v)
                        for k, v in net.state_dict().items())
    return OrderedDict((k, net.state_dict()[k] if k == "sigmas" else v) for k, v in drawn.items())


def tiny_network(network: dict) -> dict:
    return {**network, **UNET_WIDTH[network["type"]]}


def write_state_dict_checkpoint(
    path: Path, layout: str, network: dict, data_shape: tuple, seed: int, member: str | None = None
) -> None:
    """plain_state_dict, ddim_list ([state with 'module.', optimizer, epoch, step, EMA shadow]), Analytic-DPM's
    CKPT dict, score_sde's dict(optimizer, model, ema, step) or NCSN's run.zip ([state with 'module.', optimizer] at
    ``member``), of a random network with ``network``'s keys."""
    net = build_network(network, channels=data_shape[0], image_size=data_shape[1])
    state = _randomise(net, seed)
    if layout == "plain_state_dict":
        obj: Any = state
    elif layout == "ddim_list":
        module = OrderedDict((f"module.{k}", v) for k, v in state.items())
        obj = [module, {"state": {}, "param_groups": []}, 0, 1, OrderedDict((f"module.{k}", v) for k, v in
                                                                           state.items())]
    elif layout == "analytic_dpm_ckpt":
        obj = {"it": 1, "best_val_loss": None, "models_states": {"eps_model": state}, "optimizers_states": {},
               "lr_schedulers_states": {}, "ema_models_states": {"eps_model": state}}
    elif layout == "score_sde_dict":
        # The EMA shadow lists the trainable parameters in order (score_sde models/ema.py L28-29).
        shadow = [state[k] for k in ema_parameter_names(net)]
        obj = {"optimizer": {"state": {}, "param_groups": []},
               "model": OrderedDict((f"module.{k}", v) for k, v in state.items()),
               "ema": {"decay": 0.9999, "num_updates": 1, "shadow_params": shadow}, "step": 1}
    elif layout == "ncsn_run_zip":
        body = io.BytesIO()
        torch.save([OrderedDict((f"module.{k}", v) for k, v in state.items()), {"state": {}, "param_groups": []}], body)
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr(member, body.getvalue())
        return
    else:
        raise ValueError(f"no writer for layout {layout!r}")
    torch.save(obj, path)


@persistent
class _EDMLoss:
    def __init__(self, P_mean=-1.2, P_std=1.2, sigma_data=0.5):
        self.P_mean, self.P_std, self.sigma_data = P_mean, P_std, sigma_data


def write_edm_pickle(path: Path, class_name: str, arch: str, data_shape: tuple, seed: int, label_dim: int = 0) -> None:
    """A network-snapshot pickle as EDM's training loop writes it: dict(ema=<persistent Precond>, loss_fn, ...).

    ``arch``: "vp" or "ve" (SongUNet), "adm" (DhariwalUNet); ``label_dim``: classes of a conditional network.
    """
    backbone = {**EDM_TINY, **EDM_ADM_TINY} if arch == "adm" else {**EDM_ARCH[arch], **EDM_TINY}
    kwargs = {**backbone, "label_dim": label_dim, "img_resolution": data_shape[1], "img_channels": data_shape[0]}
    torch.manual_seed(seed)
    net = build_edm_network({"class_name": class_name, **kwargs})
    net.load_state_dict(_randomise(net, seed))
    net.eval().requires_grad_(False)
    net._init_args, net._init_kwargs = (), copy.deepcopy(kwargs)
    backbone = {k: v for k, v in kwargs.items() if k not in ("img_channels", "use_fp16", "model_type")}
    net.model._init_args = ()
    net.model._init_kwargs = {**backbone, "in_channels": data_shape[0], "out_channels": net.model.out_channels}
    with official_stand_ins("raise RuntimeError('module_src must never be executed')\n") as easy_dict:
        data = dict(ema=net, loss_fn=_EDMLoss(), augment_pipe=None, dataset_kwargs=easy_dict(path="cifar10.zip"))
        path.write_bytes(dumps_official(data))


def write_checkpoints(cfg: dict, folder: Path, base_url: str) -> dict:
    """A random checkpoint for every registry entry the profile's models name; returns the ``checkpoints:`` mapping
    that serves them (url and md5 of each file)."""
    overrides = {}
    for seed, model in enumerate(m for m in cfg["models"].values() if "checkpoint" in m):
        entry = get_checkpoint(model["checkpoint"])
        path = folder / f"{entry.name}.ckpt"
        shape = DATA_SHAPES[cfg["datasets"][model["dataset"]]["kind"]][0]
        if entry.layout == "edm_pickle":
            baseline = "baseline" in entry.name
            arch = "adm" if entry.name.endswith("_adm") else "ve" if entry.name.endswith("_ve") else "vp"
            precond = EDM_PRECOND[f"baseline_{arch}" if baseline else "edm"]
            write_edm_pickle(path, precond, arch, shape, seed, model.get("label_dim", 0))
        else:
            write_state_dict_checkpoint(path, entry.layout, tiny_network(model["network"]), shape, seed, entry.member)
        overrides[entry.name] = {"url": f"{base_url}/{path.name}", "hash_type": "md5", "hash": md5_of(path)}
    return overrides


# The profile -------------------------------------------------------------------------------------------------------


def miniature_table(spec: dict, small_K: dict[int, int]) -> dict:
    """A table spec with its K columns (and the paper values keyed by them) mapped onto the miniature's K."""
    spec = copy.deepcopy(spec)
    if spec["columns"]["field"] != "K":
        # columns of datasets: each row names its own K
        for row in spec["rows"]:
            if "K" in row:
                row["K"] = small_K[int(row["K"])]
        return spec
    spec["columns"]["values"] = [small_K[int(v)] for v in spec["columns"]["values"]]
    for row in spec["rows"]:
        for key in ("paper", "paper_text", "unavailable_at"):
            if key in row:
                row[key] = {small_K[int(k)]: v for k, v in row[key].items()}
        if "at" in row:  # a column showing a cell of its own K (NCSNv2's levels in DDPM Table 1's K = 1000)
            row["at"] = {small_K[int(k)]: {**v, **({"K": small_K[v["K"]]} if "K" in v else {})}
                         for k, v in row["at"].items()}
    return spec


# "full": every cell of the profile; "pairs": each (model, sampler) pair at its largest K only, which keeps every
# model, sampler with its options, grid, metric and the K = T shared cells at a fifth of the cells; "kinds": of the
# pairs, the first of each kind (pair_kind): every sampler function on every family, network type and dataset kind it
# meets in the profile, conditional or not, at two fifths of the pairs.
TIERS = ("full", "pairs", "kinds")


def largest_K_per_pair(cfg: dict) -> dict[tuple[str, str], int]:
    largest: dict[tuple[str, str], int] = {}
    for exp in cfg["experiments"]:
        for sampler in exp["samplers"]:
            pair = (exp["model"], sampler)
            largest[pair] = max(largest.get(pair, 0), *exp["K"])
    return largest


def pair_kind(cfg: dict, model: str, sampler: str) -> tuple:
    """What a (model, sampler) pair exercises: the sampler function, the model's family, network type, dataset kind
    and conditioning (the grids are functions of the config, checked before any job and tested on their own)."""
    m, s = cfg["models"][model], cfg["samplers"][sampler]
    return s["fn"], m["family"], m.get("network", {}).get("type"), cfg["datasets"][m["dataset"]]["kind"], "label_dim" in m


def one_pair_per_kind(cfg: dict, pairs: dict[tuple[str, str], int], also: set[tuple[str, str]]) -> dict:
    """The first pair of each kind, and the pairs ``also`` names (those a table scores against a split of its own)."""
    kinds: dict[tuple, tuple[str, str]] = {}
    for pair in pairs:
        kinds.setdefault(pair_kind(cfg, *pair), pair)
    return {pair: K for pair, K in pairs.items() if pair in set(kinds.values()) | also}


def tier_table(spec: dict, kept: dict[tuple[str, str], int], tier: str) -> dict:
    """A table spec whose cells other than the tier's kept (model, sampler) at its kept K (None: any) are
    unavailable; a derived table's column, whose cells are a curve over K, stays where its pair is kept."""
    spec = copy.deepcopy(spec)
    by_K = spec["columns"]["field"] == "K"
    for row in spec["rows"]:
        if "unavailable" in row:
            continue
        dropped = {}
        for v in spec["columns"]["values"]:
            at = row.get("at", {}).get(v, {})
            pair = (at.get("model", row.get("model")), at.get("sampler", row.get("sampler")))
            K = at.get("K", row.get("K", v if by_K else None))
            if pair not in kept or (kept[pair] is not None and "derived" not in spec and kept[pair] != K):
                dropped[v] = f"outside the smoke run's {tier} tier"
        row["unavailable_at"] = {**dropped, **row.get("unavailable_at", {})}
    return spec


def miniature_profile(
    cfg: dict, root: Path, work: Path, base_url: str, inception: Path, tier: str = "full"
) -> tuple[dict, dict]:
    """The miniature of paper profile ``cfg`` (its table paths relative to ``root``), with its data, checkpoints
    and table specs written under ``work``, at ``tier`` (TIERS); returns it and CIFAR-10's md5s."""
    if tier not in TIERS:
        raise ValueError(f"tier {tier!r} is not one of {list(TIERS)}")
    mini = copy.deepcopy(cfg)
    specs = {rel: yaml.safe_load((root / rel).read_text(encoding="utf-8")) for rel in cfg["tables"]}
    small_K = k_map(cfg, list(specs.values()))
    # A discrete-time VE network is read at the index of each level in its own table (ScoreSdeVEScore): in the
    # miniature that table has its sampler's K levels, as the profile's has K = 1000.
    for model in mini["models"].values():
        if model["family"] == "score_sde_ve" and model["network"].get("embedding_type") == "positional":
            model["network"]["num_scales"] = small_K[DISCRETE_STEPS]
        # NCSN's networks are read on their own table, whose K levels the miniature shrinks like the sampler's K.
        if model["family"] == "ncsn":
            model["network"]["num_classes"] = small_K[model["network"]["num_classes"]]
    mini["datasets"], cifar_md5 = write_datasets(cfg, work / "data")
    (work / "www").mkdir(exist_ok=True)
    mini["checkpoints"] = write_checkpoints(mini, work / "www", base_url)
    for name, ext in mini["extractors"].items():
        mini["extractors"][name] = {**ext, "weights_path": str(inception)}
    for model in mini["models"].values():
        if "T" in model["schedule"]:
            model["schedule"]["T"] = small_K[model["schedule"]["T"]]
        if model["network"]["type"] in UNET_WIDTH:
            model["network"] = tiny_network(model["network"])
        if "train" in model:
            model["train"] = {**model["train"], "steps": 2, "batch_size": 2, "checkpoint_every": 1}
    for exp in mini["experiments"]:
        exp["K"] = [small_K[K] for K in exp["K"]]
    kept = largest_K_per_pair(mini)
    if tier == "kinds":
        # A cell scored against a split of its own, or by precision / recall, has jobs no other kind of cell has.
        own_jobs = [spec for spec in specs.values() if "reference_split" in spec or spec["metric"] in PR_METRICS]
        split_pairs = {(row["model"], row["sampler"]) for spec in own_jobs
                       for row in spec["rows"] if "model" in row and "unavailable" not in row}
        kept = one_pair_per_kind(mini, kept, split_pairs)
    if tier != "full":
        mini["experiments"] = [{"model": m, "samplers": [s], "K": [K]} for (m, s), K in kept.items()]
    if tier == "kinds" and "ode_nll" in mini["metrics"]:
        # one PF-ODE likelihood per family and network type
        chosen = {(mini["models"][m]["family"], mini["models"][m]["network"]["type"]): m
                  for m in reversed(ode_nll_models(mini))}
        mini["metrics"]["ode_nll"]["models"] = sorted(chosen.values())
    mini["moments"] = {**mini["moments"], "M": SIZES["train"], "batch_size": SIZES["train"]}
    # A sampler's own Gamma_n size (Analytic-DPM Table 5's M) within the miniature's training split: M = 1 and 3
    # keep their own moments jobs, the larger ones read the model's one file.
    for sampler in mini["samplers"].values():
        if "moments_M" in sampler:
            sampler["moments_M"] = min(sampler["moments_M"], SIZES["train"])
    mini["sampling"] = {**mini["sampling"], "n_samples": N_SAMPLES, "shard_size": N_SAMPLES,
                        "batch_size": N_SAMPLES}
    metrics = mini["metrics"]
    # Two bootstrap resamples run the interval's code path (the profile's count would eigendecompose a 2048 x 2048
    # matrix hundreds of times per cell on a CPU); the kinds tier draws none (0: no interval), the whitened interval
    # of 2048 features being tested on its own (tests/test_whitened_fd.py).
    bootstrap = {**metrics["fd_is"].get("bootstrap", {}), "resamples": 0 if tier == "kinds" else 2}
    metrics["fd_is"] = {**metrics["fd_is"], "is_splits": 1, "bootstrap": bootstrap}
    if "precision_recall" in metrics:
        # Two samples per cell: each radius is the distance to the other one (k = 1), against every training image.
        metrics["precision_recall"] = {**metrics["precision_recall"], "k": 1, "reference_n": SIZES["train"]}
    if "ode_nll" in metrics:
        # A random network's flow is stiff: at the profile's 1e-5 tolerances one solve takes minutes.
        metrics["ode_nll"] = {**metrics["ode_nll"], "n_images": 1, "batch_size": 1, "rtol": 1e-2, "atol": 1e-2}
    # DDIM Table 2's reconstructions at the miniature's K, in the pairs tier each (model, sampler) at its largest.
    recon_kept = {}
    if "recon" in metrics:
        for exp in metrics["recon"]["experiments"]:
            exp["K"] = [small_K[K] for K in exp["K"]]
        recon_kept = largest_K_per_pair(metrics["recon"])
        if tier != "full":
            metrics["recon"]["experiments"] = [{"model": m, "samplers": [s], "K": [K]} for (m, s), K in recon_kept.items()]
    (work / "tables").mkdir()
    tables = []
    likelihoods = {(m, PF_ODE): None for m in ode_nll_models(mini)}
    for rel, spec in specs.items():
        out = work / "tables" / Path(rel).name
        spec = miniature_table(spec, small_K)
        if tier != "full":
            spec = tier_table(spec, {"recon_mse": recon_kept, "ode_nll_bpd": likelihoods}.get(spec["metric"], kept), tier)
        out.write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True), encoding="utf-8")
        tables.append(str(out))
    mini["tables"] = tables
    return mini, cifar_md5


def write_inception(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_torch_fidelity_weights(path)


def dump(cfg: dict, path: Path) -> Path:
    path.write_text(json.dumps(cfg, indent=1), encoding="utf-8")
    return path
