"""A miniature of the paper profile, derived from workflows/config/paper.yaml, for an end-to-end run of its DAG.

Same models, families, samplers, options, grids, metrics and tables; networks at a tiny width with random weights
written in each checkpoint's official layout and served from 127.0.0.1 (the config's ``checkpoints:`` points the
registry entries at them), a few generated images per dataset in its official layout, a random-weight Inception,
K mapped onto a few steps (T with it, so that K = T cells stay K = T) and two samples per cell.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import pickle
import textwrap
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from edm_pickle_fixtures import dumps_official, official_stand_ins, persistent
from inception_fixtures import write_torch_fidelity_weights
from PIL import Image

from bench.checkpoints.registry import get_checkpoint
from bench.checkpoints.score_sde_network import ema_parameter_names
from bench.data import DATA_SHAPES
from bench.data.edm_faces import AFHQV2_64, FFHQ64
from bench.nets.edm_networks import build_edm_network
from bench.nets.factory import build_network

# Every level, attention resolution and head layout of the official networks stays; only widths and depths shrink
# (32 channels: the U-Nets' GroupNorm has 32 groups).
UNET_WIDTH = {"ddpm_unet": {"ch": 32, "num_res_blocks": 1}, "adm_unet": {"model_channels": 32, "num_res_blocks": 1},
              "score_sde_ncsnpp": {"nf": 16, "ch_mult": [1, 2], "num_res_blocks": 1},
              "score_sde_ddpm": {"nf": 32, "ch_mult": [1, 2], "num_res_blocks": 1}}
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
SIZES = {"train": 4, "test": 2}
EDM_STEMS = {layout.kind: layout.stem for layout in (FFHQ64, AFHQV2_64)}
N_SAMPLES = 2


def k_map(cfg: dict, specs: list[dict]) -> dict[int, int]:
    """Every K of the profile (experiments, K columns of its tables, models' T) onto a few steps in the same order,
    so that distinct K stay distinct and a cell at K = T stays at K = T: those below the smallest T onto 2, 3, ...,
    the rest from MIN_T on."""
    Ts = {m["schedule"]["T"] for m in cfg["models"].values() if "T" in m["schedule"]}
    values = Ts | {K for exp in cfg["experiments"] for K in exp["K"]}
    values |= {int(v) for spec in specs if spec["columns"]["field"] == "K" for v in spec["columns"]["values"]}
    below = sorted(v for v in values if v < min(Ts))
    rest = sorted(v for v in values if v >= min(Ts))
    return {v: i + 2 for i, v in enumerate(below)} | {v: MIN_T + i for i, v in enumerate(rest)}


# Datasets, in their official layouts -------------------------------------------------------------------------------


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def write_cifar10(root: Path, rng: np.random.Generator) -> dict[str, Any]:
    """cifar-10-batches-py: pickled dicts of uint8 N x 3072 and labels; returns the files' md5s."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = 1 if name.startswith("data") else SIZES["test"]
        with open(folder / name, "wb") as handle:
            pickle.dump({"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         "labels": rng.integers(0, 10, n).tolist()}, handle)
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, handle)
    return {"train": [[n, _md5(folder / n)] for n in names[:5]], "test": [["test_batch", _md5(folder / "test_batch")]],
            "meta": _md5(folder / "batches.meta")}


def write_celeba(root: Path, rng: np.random.Generator) -> None:
    """img_align_celeba/*.png at 178 x 218 and list_eval_partition.txt (0 train, 2 test)."""
    (root / "img_align_celeba").mkdir(parents=True)
    lines = []
    for i in range(SIZES["train"] + SIZES["test"]):
        name = f"{i + 1:06d}.png"
        Image.fromarray(rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)).save(root / "img_align_celeba" / name)
        lines.append(f"{name} {0 if i < SIZES['train'] else 2}\n")
    (root / "list_eval_partition.txt").write_text("".join(lines))


def write_imagenet64(root: Path, rng: np.random.Generator) -> None:
    """train_data_batch_1..10.npz and val_data.npz: uint8 N x 12288 planes, 1-based labels."""
    root.mkdir(parents=True)
    for name in [f"train_data_batch_{i}.npz" for i in range(1, 11)] + ["val_data.npz"]:
        n = SIZES["test"] if name.startswith("val") else 1
        np.savez(root / name, data=rng.integers(0, 256, (n, 12288), dtype=np.uint8),
                 labels=rng.integers(1, 1001, n), mean=np.zeros(12288))


def write_lsun(root: Path, category: str, rng: np.random.Generator) -> None:
    """<category>_train / <category>_val: exported images (lsun's export.py writes .webp)."""
    for split, folder in (("train", f"{category}_train"), ("test", f"{category}_val")):
        (root / folder).mkdir(parents=True)
        for i in range(SIZES[split]):
            pixels = rng.integers(0, 256, (256, 320, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / folder / f"{i:04d}.webp", lossless=True)


def write_edm_zip(root: Path, stem: str, rng: np.random.Generator) -> None:
    """<stem>.zip as EDM's dataset_tool.py writes it (stored members 00000/img00000000.png ..., dataset.json
    with labels null for an unconditional dataset); its one split is train."""
    root.mkdir(parents=True)
    with zipfile.ZipFile(root / f"{stem}.zip", mode="w", compression=zipfile.ZIP_STORED) as archive:
        for i in range(SIZES["train"]):
            image = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(image, format="png")
            archive.writestr(f"{i // 1000:05d}/img{i:08d}.png", image.getvalue())
        archive.writestr("dataset.json", json.dumps({"labels": None}))


def write_datasets(cfg: dict, data: Path) -> tuple[dict, dict]:
    """Every dataset of the profile under ``data``; returns the miniature's datasets and CIFAR-10's md5s."""
    rng = np.random.default_rng(0)
    datasets, cifar_md5 = {}, {}
    for name, spec in cfg["datasets"].items():
        root = data / name
        kind = spec["kind"]
        if kind == "cifar10":
            cifar_md5 = write_cifar10(root, rng)
        elif kind == "celeba64":
            write_celeba(root, rng)
        elif kind == "imagenet64":
            write_imagenet64(root, rng)
        elif kind in EDM_STEMS:
            write_edm_zip(root, EDM_STEMS[kind], rng)
        else:
            write_lsun(root, spec["category"], rng)
        datasets[name] = {**spec, "root": str(root)} | ({"download": False} if "download" in spec else {})
    return datasets, cifar_md5


def write_cifar10_md5_hook(folder: Path, md5: dict) -> Path:
    """A sitecustomize that gives torchvision's CIFAR10 the generated files' md5s in every process of the run."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(textwrap.dedent(f'''\
        import importlib.abc
        import importlib.machinery
        import sys

        MD5 = {md5!r}


        class _CifarMd5(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name != "torchvision.datasets.cifar":
                    return None
                spec = importlib.machinery.PathFinder.find_spec(name, path)
                run = spec.loader.exec_module

                def exec_module(module):
                    run(module)
                    module.CIFAR10.train_list = MD5["train"]
                    module.CIFAR10.test_list = MD5["test"]
                    module.CIFAR10.meta = {{**module.CIFAR10.meta, "md5": MD5["meta"]}}

                spec.loader.exec_module = exec_module
                return spec


        sys.meta_path.insert(0, _CifarMd5())
        '''))
    return folder


# Checkpoints, in their official layouts ----------------------------------------------------------------------------


def _randomise(net: torch.nn.Module, seed: int) -> OrderedDict:
    """The network's state dict with every float tensor redrawn: zero-initialised output layers would hide the rest."""
    gen = torch.Generator().manual_seed(seed)
    return OrderedDict((k, torch.randn(v.shape, generator=gen) * 0.05 if v.is_floating_point() else v)
                       for k, v in net.state_dict().items())


def tiny_network(network: dict) -> dict:
    return {**network, **UNET_WIDTH[network["type"]]}


def write_state_dict_checkpoint(path: Path, layout: str, network: dict, data_shape: tuple, seed: int) -> None:
    """plain_state_dict, ddim_list ([state with 'module.', optimizer, epoch, step, EMA shadow]), Analytic-DPM's
    CKPT dict or score_sde's dict(optimizer, model, ema, step), of a random network with ``network``'s keys."""
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
            write_state_dict_checkpoint(path, entry.layout, tiny_network(model["network"]), shape, seed)
        overrides[entry.name] = {"url": f"{base_url}/{path.name}", "hash_type": "md5", "hash": _md5(path)}
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
    return spec


# "full": every cell of the profile; "pairs": each (model, sampler) pair at its largest K only, which keeps every
# model, sampler with its options, grid, metric and the K = T shared cells at a fifth of the cells.
TIERS = ("full", "pairs")


def largest_K_per_pair(cfg: dict) -> dict[tuple[str, str], int]:
    largest: dict[tuple[str, str], int] = {}
    for exp in cfg["experiments"]:
        for sampler in exp["samplers"]:
            pair = (exp["model"], sampler)
            largest[pair] = max(largest.get(pair, 0), *exp["K"])
    return largest


def pairs_tier_table(spec: dict, kept: dict[tuple[str, str], int]) -> dict:
    """A table spec whose K columns other than each row's kept K are unavailable in the pairs tier."""
    if spec["columns"]["field"] != "K":
        return spec
    spec = copy.deepcopy(spec)
    for row in spec["rows"]:
        if "unavailable" in row or (row.get("model"), row.get("sampler")) not in kept:
            continue
        K = kept[(row["model"], row["sampler"])]
        dropped = {v: "outside the smoke run's pairs tier" for v in spec["columns"]["values"] if v != K}
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
    mini["datasets"], cifar_md5 = write_datasets(cfg, work / "data")
    (work / "www").mkdir(exist_ok=True)
    mini["checkpoints"] = write_checkpoints(cfg, work / "www", base_url)
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
    if tier == "pairs":
        mini["experiments"] = [{"model": m, "samplers": [s], "K": [K]} for (m, s), K in kept.items()]
    mini["moments"] = {**mini["moments"], "M": SIZES["train"], "batch_size": SIZES["train"]}
    # A sampler's own Gamma_n size (Analytic-DPM Table 5's M) within the miniature's training split: M = 1 and 3
    # keep their own moments jobs, the larger ones read the model's one file.
    for sampler in mini["samplers"].values():
        if "moments_M" in sampler:
            sampler["moments_M"] = min(sampler["moments_M"], SIZES["train"])
    mini["sampling"] = {**mini["sampling"], "n_samples": N_SAMPLES, "shard_size": N_SAMPLES,
                        "batch_size": N_SAMPLES}
    metrics = mini["metrics"]
    # Two bootstrap resamples run the interval's code path; the profile's count would eigendecompose a
    # 2048 x 2048 matrix hundreds of times per cell on a CPU.
    bootstrap = {**metrics["fd_is"].get("bootstrap", {}), "resamples": 2}
    metrics["fd_is"] = {**metrics["fd_is"], "is_splits": 1, "bootstrap": bootstrap}
    if "ode_nll" in metrics:
        metrics["ode_nll"] = {**metrics["ode_nll"], "n_images": 1, "batch_size": 1}
    (work / "tables").mkdir()
    tables = []
    for rel, spec in specs.items():
        out = work / "tables" / Path(rel).name
        spec = miniature_table(spec, small_K)
        if tier == "pairs":
            spec = pairs_tier_table(spec, kept)
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
