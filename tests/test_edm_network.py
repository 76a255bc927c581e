"""load_edm_network (bench.checkpoints.edm_pickle): our EDM networks pickled as the official training loop does, rebuilt."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from edm_pickle_fixtures import dumps_official, official_stand_ins, persistent

from bench.checkpoints.edm_pickle import EdmPickleError, load_edm_network, unpickle_edm
from bench.checkpoints.layouts import StateDictMismatch
from bench.nets.dhariwal_unet import DhariwalUNet
from bench.nets.edm_networks import build_edm_network
from bench.nets.edm_precond import EDMPrecond
from bench.nets.song_unet import SongUNet

torch.set_num_threads(1)

MODULE_SRC = "raise RuntimeError('module_src must never be executed')\n"
# EDMPrecond's own constructor parameters; every other keyword goes to the backbone.
OFFICIAL_EDM_PRECOND_PARAMS = (
    "img_resolution", "img_channels", "label_dim", "use_fp16",
    "sigma_min", "sigma_max", "sigma_data", "model_type",
)

# Keyword arguments as train.py gives them to construct_class_by_name (class_name aside).
CASES = {
    "ddpmpp": dict(
        model_type="SongUNet", embedding_type="positional", encoder_type="standard",
        decoder_type="standard", channel_mult_noise=1, resample_filter=[1, 1],
        model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4],
        augment_dim=9, dropout=0.13, use_fp16=False, img_resolution=8, img_channels=3,
        label_dim=10,
    ),
    "ncsnpp": dict(
        model_type="SongUNet", embedding_type="fourier", encoder_type="residual",
        decoder_type="standard", channel_mult_noise=2, resample_filter=[1, 3, 3, 1],
        model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4],
        augment_dim=9, dropout=0.13, use_fp16=False, img_resolution=8, img_channels=3,
        label_dim=0,
    ),
    "adm": dict(
        model_type="DhariwalUNet", model_channels=64, channel_mult=[1, 2], num_blocks=1,
        attn_resolutions=[4], dropout=0.1, use_fp16=True, sigma_data=np.float64(0.5),
        img_resolution=8, img_channels=3, label_dim=10,
    ),
}
BACKBONE_CLASSES = {"SongUNet": SongUNet, "DhariwalUNet": DhariwalUNet}


def official_backbone_kwargs(precond_kwargs: dict) -> dict:
    """The kwargs EDMPrecond's constructor passes to globals()[model_type](...)."""
    model_kwargs = {k: v for k, v in precond_kwargs.items()
                    if k not in OFFICIAL_EDM_PRECOND_PARAMS}
    return dict(img_resolution=precond_kwargs["img_resolution"],
                in_channels=precond_kwargs["img_channels"],
                out_channels=precond_kwargs["img_channels"],
                label_dim=precond_kwargs["label_dim"], **model_kwargs)


def build_official(precond_kwargs: dict, seed: int) -> EDMPrecond:
    """Our network, carrying _init_args/_init_kwargs as official persistent classes record."""
    torch.manual_seed(seed)
    net = build_edm_network({"class_name": "training.networks.EDMPrecond", **precond_kwargs})
    # Zero/1e-5-initialised output layers would hide most weights from the output.
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    net._init_args, net._init_kwargs = (), copy.deepcopy(precond_kwargs)
    net.model._init_args = ()
    net.model._init_kwargs = copy.deepcopy(official_backbone_kwargs(precond_kwargs))
    return net


@persistent
class EDMLoss:
    def __init__(self, P_mean=-1.2, P_std=1.2, sigma_data=0.5):
        self.P_mean, self.P_std, self.sigma_data = P_mean, P_std, sigma_data


def write_snapshot(path, net: EDMPrecond) -> None:
    """As training_loop.py saves network-snapshot-*.pkl: deep-copied EMA, eval, no grad, CPU."""
    ema = copy.deepcopy(net).eval().requires_grad_(False).cpu()
    with official_stand_ins(MODULE_SRC) as easy_dict:
        data = dict(ema=ema, loss_fn=EDMLoss(), augment_pipe=None,
                    dataset_kwargs=dict(easy_dict(path="imagenet-64x64.zip", xflip=False)))
        path.write_bytes(dumps_official(data))


def sample_inputs(net: EDMPrecond, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 3, 8, 8, generator=generator)
    sigma = torch.tensor([0.02, 1.0, 40.0])
    labels = None
    if net.label_dim:
        labels = F.one_hot(torch.tensor([0, 4, 9]), net.label_dim).float()
    return x, sigma, labels


@pytest.mark.parametrize("case", CASES)
def test_loaded_network_reproduces_the_pickled_one(tmp_path, case):
    precond_kwargs = CASES[case]
    original = build_official(precond_kwargs, seed=0).eval()
    path = tmp_path / "network-snapshot.pkl"
    write_snapshot(path, original)

    network, _ = load_edm_network(path)

    assert isinstance(network, EDMPrecond) and not network.training
    assert isinstance(network.model, BACKBONE_CLASSES[precond_kwargs["model_type"]])
    x, sigma, labels = sample_inputs(network)
    with torch.no_grad():
        expected = original(x, sigma, labels)
        got = network(x, sigma, labels)
        # A network with other weights disagrees, so the equality above is not vacuous.
        stranger = build_official(precond_kwargs, seed=5).eval()(x, sigma, labels)
    assert got.dtype == expected.dtype == torch.float32
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(stranger, expected, rtol=1e-3, atol=1e-3)
    for key, value in original.state_dict().items():
        assert torch.equal(network.state_dict()[key], value), key


@pytest.mark.parametrize("case", CASES)
def test_kwargs_and_class_names_are_recovered_as_python_values(tmp_path, case):
    precond_kwargs = CASES[case]
    path = tmp_path / "network-snapshot.pkl"
    write_snapshot(path, build_official(precond_kwargs, seed=0))

    _, info = load_edm_network(path)

    assert info["precond"] == precond_kwargs
    assert info["backbone"] == official_backbone_kwargs(precond_kwargs)
    assert info["class_names"] == {"precond": "EDMPrecond",
                                   "backbone": precond_kwargs["model_type"]}
    plain = [v for v in [*info["precond"].values(), *info["backbone"].values()]
             if not isinstance(v, list)]
    assert not any(isinstance(v, np.generic) for v in plain)


def test_adm_network_keeps_its_hyperparameters(tmp_path):
    path = tmp_path / "network-snapshot.pkl"
    write_snapshot(path, build_official(CASES["adm"], seed=0))
    network, info = load_edm_network(path)
    assert type(info["precond"]["sigma_data"]) is float and network.sigma_data == 0.5
    assert network.use_fp16 and (network.sigma_min, network.sigma_max) == (0.0, math.inf)
    assert network.model.map_label.in_features == 10


def test_model_type_that_disagrees_with_the_backbone_is_refused(tmp_path):
    net = build_official(CASES["adm"], seed=0)
    net._init_kwargs["model_type"] = "SongUNet"
    path = tmp_path / "bad.pkl"
    write_snapshot(path, net)
    with pytest.raises(EdmPickleError,
                       match=r"model_type='SongUNet' but the pickled backbone is 'DhariwalUNet'"):
        load_edm_network(path)


def test_backbone_kwargs_that_disagree_with_the_wrapper_are_refused(tmp_path):
    net = build_official(CASES["adm"], seed=0)
    net.model._init_kwargs["model_channels"] = 128
    net.model._init_kwargs["out_channels"] = 6
    path = tmp_path / "bad.pkl"
    write_snapshot(path, net)
    with pytest.raises(EdmPickleError, match=r"bad\.pkl: backbone kwargs disagree") as caught:
        load_edm_network(path)
    assert "out_channels=6 (wrapper gives 3)" in str(caught.value)
    assert "model_channels=128 (wrapper gives 64)" in str(caught.value)


def test_weights_that_do_not_fit_the_kwargs_name_the_keys(tmp_path):
    net = build_official(CASES["adm"], seed=0)
    for kwargs in (net._init_kwargs, net.model._init_kwargs):
        kwargs["num_blocks"] = 2
    path = tmp_path / "bad.pkl"
    write_snapshot(path, net)
    with pytest.raises(StateDictMismatch, match=r"missing keys .*model\.enc\.8x8_block1\."):
        load_edm_network(path)


def test_snapshot_is_written_with_official_persistent_records(tmp_path):
    path = tmp_path / "network-snapshot.pkl"
    write_snapshot(path, build_official(CASES["adm"], seed=0))
    blob = path.read_bytes()
    assert b"bench." not in blob and b"module_src must never be executed" in blob
    ema = unpickle_edm(path)["ema"]
    model = ema.state["_modules"]["model"]
    enc = model.state["_modules"]["enc"]
    assert (ema.class_name, model.class_name) == ("EDMPrecond", "DhariwalUNet")
    assert enc.torch_class == "torch.nn.modules.container.ModuleDict"
    block = enc.state["_modules"]["4x4_down"]
    assert block.class_name == "UNetBlock"
    assert [m.class_name for m in block.state["_modules"].values() if m is not None] == [
        "GroupNorm", "Conv2d", "Linear", "GroupNorm", "Conv2d", "Conv2d"]
    assert model.state["_modules"]["map_noise"].class_name == "PositionalEmbedding"
