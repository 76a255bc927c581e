"""Official checkpoint -> our model format: fetch (verified), read with its layout's loader, save_model.

Every downstream step then loads the model exactly as it loads one trained here.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlparse

from torch import nn

from bench.checkpoints.download import DownloadError, fetch, file_digest, read_lock
from bench.checkpoints.layouts import (
    NCSN_RUN_ZIP,
    load_analytic_dpm_checkpoint,
    load_ddim_list_checkpoint,
    load_ncsn_run_zip,
    load_plain_state_dict,
    load_strict,
)
from bench.core.labels import check_label_dim, network_label_dim
from bench.runtime.io import atomic_json

# Layouts a model config can be converted from (config validation reads this); unverified has no loader.
SCORE_SDE_LAYOUT = "score_sde_dict"
LOADABLE_LAYOUTS = ("plain_state_dict", "ddim_list", "edm_pickle", "analytic_dpm_ckpt", SCORE_SDE_LAYOUT, NCSN_RUN_ZIP)
# Layouts holding one network's state_dict, by the loader that reads it.
STATE_DICT_LOADERS = {
    "plain_state_dict": load_plain_state_dict,
    "ddim_list": load_ddim_list_checkpoint,
    "analytic_dpm_ckpt": load_analytic_dpm_checkpoint,
}
# Share pages, not files: such checkpoints are fetched by hand and placed at the cache path.
MANUAL_HOSTS = ("drive.google.com",)


def is_manual(url: str) -> bool:
    """Whether ``url`` is a share page a person must download from."""
    return urlparse(url).hostname in MANUAL_HOSTS


def _pin_manual_file(entry: dict, dest: Path, lock_file: Path) -> None:
    """Check a hand-placed file against its sha256 pin; the first check records the pin."""
    actual = file_digest(dest, "sha256")
    pins = read_lock(lock_file)
    pinned = pins.get(entry["url"])
    if pinned is not None and pinned != actual:
        raise DownloadError(
            f"checkpoint {entry['name']!r}: {dest} has sha256 {actual}, but {lock_file} pins {pinned}; "
            "replace the file with the one from the share page, or delete the pin if it was wrong"
        )
    if pinned is None:
        atomic_json({**pins, entry["url"]: actual}, lock_file)


def fetch_checkpoint(entry: dict, dest: Path, lock_file: Path) -> Path:
    """The verified file of registry entry ``entry`` at ``dest`` (downloaded unless it is a share page)."""
    dest = Path(dest)
    if not is_manual(entry["url"]):
        return fetch(entry["url"], dest, expected_hash=entry["hash"], hash_type=entry["hash_type"], lock_file=lock_file)
    if not dest.is_file():
        # The note says which file of the share page it is (Analytic-DPM's CIFAR-10 page holds two runs).
        note = f" (registry note: {entry['note']})" if entry.get("note") else ""
        raise DownloadError(
            f"checkpoint {entry['name']!r} is on a share page, not a direct download: fetch it by hand from "
            f"{entry['url']} and place the file at {dest.resolve()}{note}"
        )
    _pin_manual_file(entry, dest, lock_file)
    return dest


def _network_from_state_dict(path: Path, entry: dict, network: dict, data_shape: tuple[int, ...]) -> nn.Module:
    from bench.nets.factory import build_network

    layout = entry["layout"]
    # An archive holds several runs: the entry names the member to read.
    state = load_ncsn_run_zip(path, entry["member"]) if layout == NCSN_RUN_ZIP else STATE_DICT_LOADERS[layout](path)
    net = build_network(network, channels=data_shape[0], image_size=data_shape[1])
    load_strict(net, state)
    return net


def convert_checkpoint(
    entry: dict, path: Path, model_cfg: dict, data_shape: tuple[int, ...], max_level: int, out: Path
) -> Path:
    """Read checkpoint file ``path`` (registry ``entry``) with its layout's loader; write our model file."""
    from bench.checkpoints.model_file import save_model

    layout = entry["layout"]
    if layout not in LOADABLE_LAYOUTS:
        raise ValueError(
            f"checkpoint {entry['name']!r}: layout {layout!r} has no loader; loadable: {list(LOADABLE_LAYOUTS)}"
        )
    cfg = json.loads(json.dumps(model_cfg))
    if layout == "edm_pickle":
        from bench.checkpoints.edm_pickle import load_edm_network

        net, info = load_edm_network(Path(path))
        # The pickle carries its constructor: our model file records it as the network config, of the type the
        # config asked for (the preconditioned network, or its ADM backbone for the iddpm family).
        kind = cfg["network"]["type"]
        cfg["network"] = {
            "type": kind,
            "class_name": info["class_names"]["precond"],
            **info["precond"],
            "model_type": info["class_names"]["backbone"],
        }
        if kind == "edm_adm_backbone":
            from bench.nets.edm_adm_backbone import EDMAdmBackbone

            net = EDMAdmBackbone(net)
        precond = net.precond if kind == "edm_adm_backbone" else net
        shape = (precond.img_channels, precond.img_resolution, precond.img_resolution)
        if shape != tuple(data_shape):
            raise ValueError(
                f"checkpoint {entry['name']!r} makes {list(shape)} images, the dataset has {list(data_shape)}"
            )
    elif layout == SCORE_SDE_LAYOUT:
        from bench.checkpoints.score_sde_network import load_score_sde_network

        net = load_score_sde_network(Path(path), cfg["network"], tuple(data_shape))
    else:
        net = _network_from_state_dict(Path(path), entry, cfg["network"], data_shape)
    check_label_dim(cfg.get("label_dim", 0), network_label_dim(net), f"checkpoint {entry['name']!r}")
    provenance = {
        "checkpoint": entry["name"],
        "url": entry["url"],
        "layout": layout,
        "sha256": file_digest(Path(path), "sha256"),
    }
    if entry.get("member"):
        provenance["member"] = entry["member"]
    return save_model(Path(out), net.eval(), cfg, tuple(data_shape), max_level, provenance)
