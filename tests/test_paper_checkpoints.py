"""Official checkpoints -> our model format: the fetch-checkpoint and convert-checkpoint steps of the models rule."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import yaml

from bench.checkpoints.download import DownloadError
from bench.checkpoints.model_file import load_model
from bench.checkpoints.registry import get_checkpoint
from bench.cli import main
from bench.config import ConfigError, checkpoint_registry, validate_config

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = Path(__file__).parent / "manifests"
CIFAR_UNET = {"type": "ddpm_unet", "ch": 128, "ch_mult": [1, 2, 2, 2], "num_res_blocks": 2,
              "attn_resolutions": [16], "dropout": 0.1}


def random_state_dict(manifest: str, seed: int = 0) -> OrderedDict:
    """Random float32 tensors with the keys and shapes (in order) of an official state_dict manifest."""
    gen = torch.Generator().manual_seed(seed)
    entries = json.loads((MANIFESTS / f"{manifest}.json").read_text())["state_dict"]
    return OrderedDict((key, torch.randn(shape, generator=gen)) for key, shape, _ in entries)


def entry_for(url: str, body: Path, **overrides) -> dict:
    return {
        "name": "ddpm_ema_cifar10", "family": "DDPM (PyTorch conversion)", "dataset": "CIFAR10", "url": url,
        "hash_type": "md5", "hash": hashlib.md5(body.read_bytes()).hexdigest(), "layout": "plain_state_dict",
        "architecture": "ddim_cifar10", "source": "test", "note": "random weights", **overrides,
    }


def test_official_layout_is_downloaded_verified_and_converted(served, tmp_path):
    torch.set_num_threads(1)
    folder, base = served
    state = random_state_dict("ddim_cifar10")
    torch.save(state, folder / "model-790000.ckpt")
    entry = entry_for(f"{base}/model-790000.ckpt", folder / "model-790000.ckpt")
    ckpt = tmp_path / "resources/checkpoints/ddpm_ema_cifar10.ckpt"
    lock = tmp_path / "resources/checkpoints/ddpm_ema_cifar10.lock.json"
    assert main(["fetch-checkpoint", "--spec", json.dumps({"checkpoint": entry}), "--lock", str(lock),
                 "--out", str(ckpt)]) == 0
    assert ckpt.read_bytes() == (folder / "model-790000.ckpt").read_bytes()

    model_cfg = {"dataset": "cifar10", "family": "ddpm", "checkpoint": "ddpm_ema_cifar10", "network": CIFAR_UNET,
                 "schedule": {"name": "linear", "T": 1000}}
    spec = {"model": model_cfg, "dataset": {"kind": "cifar10", "root": "unused"}, "checkpoint": entry}
    out = tmp_path / "results/models/ddpm_cifar10.pt"
    assert main(["convert-checkpoint", "--spec", json.dumps(spec), "--checkpoint", str(ckpt), "--out", str(out)]) == 0

    net, schedule, saved = load_model(out)
    assert saved["data_shape"] == [3, 32, 32] and saved["max_level"] == 255 and schedule.T == 1000
    assert saved["info"] == {"checkpoint": "ddpm_ema_cifar10", "url": entry["url"], "layout": "plain_state_dict",
                             "sha256": hashlib.sha256(ckpt.read_bytes()).hexdigest()}
    loaded = net.state_dict()
    assert list(loaded) == list(state)
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_a_wrong_checksum_stops_the_conversion_before_any_model_is_written(served, tmp_path):
    folder, base = served
    (folder / "ckpt").write_bytes(b"not the released file")
    entry = entry_for(f"{base}/ckpt", folder / "ckpt", hash="0" * 32)
    with pytest.raises(DownloadError, match="checksum mismatch"):
        main(["fetch-checkpoint", "--spec", json.dumps({"checkpoint": entry}), "--lock", str(tmp_path / "l.json"),
              "--out", str(tmp_path / "c.ckpt")])
    assert not (tmp_path / "c.ckpt").exists()


def test_a_share_page_checkpoint_names_where_to_put_the_file(tmp_path):
    entry = entry_for("https://drive.google.com/file/d/x/view", Path(__file__), hash_type="none", hash=None,
                      layout="ddim_list")
    dest = tmp_path / "resources/checkpoints/ddim_celeba64.ckpt"
    with pytest.raises(DownloadError, match=f"place the file at {dest}"):
        main(["fetch-checkpoint", "--spec", json.dumps({"checkpoint": entry}), "--lock", str(tmp_path / "l.json"),
              "--out", str(dest)])
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"placed by hand")
    lock = tmp_path / "l.json"
    main(["fetch-checkpoint", "--spec", json.dumps({"checkpoint": entry}), "--lock", str(lock), "--out", str(dest)])
    assert json.loads(lock.read_text()) == {entry["url"]: hashlib.sha256(b"placed by hand").hexdigest()}
    dest.write_bytes(b"another file")
    with pytest.raises(DownloadError, match="pins"):
        main(["fetch-checkpoint", "--spec", json.dumps({"checkpoint": entry}), "--lock", str(lock),
              "--out", str(dest)])


@pytest.fixture(scope="module")
def paper_cfg():
    return yaml.safe_load((ROOT / "workflows/config/paper.yaml").read_text())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.update(train={"steps": 1, "batch_size": 1, "lr": 1e-4, "ema": 0.9, "seed": 0}),
         "give exactly one of 'train'"),
        (lambda m: m.update(checkpoint="ddpm_cifar100"), "unknown checkpoint 'ddpm_cifar100'; known checkpoints: "),
        (lambda m: m.update(checkpoint="analytic_dpm_ext_cifar10_ls"),
         "'analytic_dpm_ext_cifar10_ls' has layout 'unverified', from which no model converts yet"),
    ],
)
def test_model_sources_are_checked_when_the_config_is_validated(paper_cfg, change, message):
    cfg = copy.deepcopy(paper_cfg)
    change(cfg["models"]["ddpm_cifar10"])
    with pytest.raises(ConfigError, match="models.ddpm_cifar10") as err:
        validate_config(cfg, root=ROOT)
    assert message in str(err.value)


def test_a_config_points_a_registry_entry_at_a_mirror_and_adds_its_own(paper_cfg):
    cfg = copy.deepcopy(paper_cfg)
    mirror = {"url": "http://mirror.example/ddim_celeba64.ckpt", "hash_type": "md5", "hash": "a" * 32}
    own = {"family": "DDPM", "dataset": "CIFAR10", "url": "https://example.org/own.pt", "hash_type": "none",
           "hash": None, "layout": "plain_state_dict", "architecture": None, "source": "us", "note": ""}
    cfg["checkpoints"] = {"ddim_celeba64": mirror, "own_cifar10": own}
    cfg["models"]["ddpm_cifar10"]["checkpoint"] = "own_cifar10"
    registry = checkpoint_registry(validate_config(cfg, root=ROOT, check_paths=False))
    official = get_checkpoint("ddim_celeba64")
    assert registry["ddim_celeba64"] == dataclasses.replace(official, **mirror)
    assert registry["own_cifar10"].url == own["url"] and registry["ddpm_ema_cifar10"] == get_checkpoint("ddpm_ema_cifar10")


@pytest.mark.parametrize(
    ("checkpoints", "message"),
    [
        ({"ddim_celeba64": {"url": "ftp://mirror/x"}}, r"(?s)checkpoints.ddim_celeba64.*key 'url': 'ftp://mirror/x' does not"),
        ({"ddim_celeba64": {"hash_type": "md5"}}, r"(?s)checkpoints.ddim_celeba64.*key 'hash': null, but hash_type is 'md5'"),
        ({"own": {"url": "https://example.org/own.pt"}}, r"(?s)checkpoints.own.*'layout' is a required property"),
    ],
)
def test_a_bad_checkpoints_entry_is_named_before_any_job_runs(paper_cfg, checkpoints, message):
    cfg = copy.deepcopy(paper_cfg)
    cfg["checkpoints"] = checkpoints
    with pytest.raises(ConfigError, match=message):
        validate_config(cfg, root=ROOT, check_paths=False)
