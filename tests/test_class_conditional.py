"""Class-conditional sampling: labels per seed (EDM generate.py), recorded per sample, and sampled per class."""

import json
import math

import numpy as np
import pytest
import torch
from conditional_oracle import MEANS, STDS, class_gaussian_oracle

from bench.config import ConfigError
from bench.config.nll import check_ode_nll_models, check_shared_nll_grids, ode_nll_models
from bench.core.labels import LABEL_PROTOCOL, LABEL_STREAM, check_label_dim, draw_labels, one_hot
from bench.core.noise import _stream, uniform
from bench.core.schedules import DiscreteSchedule
from bench.families import check_model, make_denoiser
from bench.methods.edm import EDMSchedule
from bench.metrics.extractors import signature
from bench.metrics.feature_stats import FeatureStats
from bench.metrics.shard_features import ShardFeatures
from bench.nets.factory import build_network
from bench.runtime.io import load_npz
from bench.steps import fd_is
from bench.steps.sample import generate, sample_shard
from bench.steps.shard_format import SampleShard

SHAPE = (1, 2, 2)
SCHEDULE = EDMSchedule(0.002, 200.0)


def test_a_label_is_a_pure_function_of_its_seed():
    seeds = torch.arange(1000, 1100)
    whole = draw_labels(seeds, 10)
    parts = torch.cat([draw_labels(seeds[a : a + 7], 10) for a in range(0, 100, 7)])
    assert torch.equal(whole, parts)
    assert torch.equal(whole, draw_labels(seeds.flip(0), 10).flip(0))
    assert whole.dtype == torch.int64
    # floor(label_dim u) of the seed's uniform on the label stream, as EDM's randint(label_dim) per seed
    u = uniform(seeds, LABEL_STREAM, (1,))[:, 0]
    assert torch.equal(whole, torch.floor(u * 10).long())


def test_labels_are_uniform_over_the_classes():
    n, k = 40000, 10
    counts = torch.bincount(draw_labels(torch.arange(n), k), minlength=k).double()
    chi2 = float(((counts - n / k) ** 2 / (n / k)).sum())
    assert chi2 < 27.9, counts  # the chi-square(9) 0.999 quantile
    big = draw_labels(torch.arange(n), 1000)
    assert int(big.min()) >= 0 and int(big.max()) <= 999
    assert abs(float(big.double().mean()) - 499.5) < 4 * 288.7 / math.sqrt(n)


def test_the_label_stream_is_no_sampler_steps_stream():
    assert LABEL_STREAM not in {_stream(step, extra) for step in (0, 1, 999, 2**31) for extra in (0, 1, 2)}
    # the label is not the latent's first uniform either
    seeds = torch.arange(5000)
    assert not torch.equal(draw_labels(seeds, 10), torch.floor(uniform(seeds, 0, (1,))[:, 0] * 10).long())


def test_one_hot_rows_are_edms_eye_rows():
    labels = torch.tensor([2, 0, 1])
    assert torch.equal(one_hot(labels, 3), torch.eye(3)[labels])


def shard(tmp_path, sampler: dict, bounds, batch_size: int, tag: str) -> list[SampleShard]:
    net = class_gaussian_oracle(SHAPE)
    out = []
    for i, (a, b) in enumerate(bounds):
        path = sample_shard(net, SCHEDULE, sampler, 6, a, b, base_seed=11, shape=SHAPE, max_level=255,
                            batch_size=batch_size, out_path=tmp_path / f"{tag}{i}.npz", context="test", family="edm")
        out.append(SampleShard.load(path))
    return out


@pytest.mark.parametrize("sampler", [
    {"fn": "edm_heun", "grid": "edm"},
    {"fn": "edm_stochastic", "grid": "edm", "options": {"S_churn": 10.0, "S_tmin": 0.05, "S_tmax": 50.0}},
    # a corrector coupling blocks of 4 samples, cut into network calls of 2 rows (ChunkedCalls)
    {"fn": "pc", "grid": "ve", "options": {"snr": 0.16, "n_steps_each": 1, "corrector": "langevin", "norm_block": 4}},
])
def test_labels_and_samples_do_not_depend_on_shards_or_batches(tmp_path, sampler):
    one = shard(tmp_path, sampler, [(0, 12)], 12, "one")[0]
    three = shard(tmp_path, sampler, [(0, 4), (4, 8), (8, 12)], 2, "three")
    assert np.array_equal(one.labels, np.concatenate([s.labels for s in three]))
    assert np.array_equal(one.images, np.concatenate([s.images for s in three]))
    assert np.array_equal(one.labels, draw_labels(torch.arange(11, 23), len(MEANS)).numpy())
    assert len(set(one.labels.tolist())) > 1
    assert load_npz(tmp_path / "one0.npz")["labels"].dtype == np.int64


def test_an_unconditional_shard_records_no_labels(tmp_path):
    net = build_network({"type": "mlp", "width": 16, "depth": 1, "emb_dim": 8}, channels=1, image_size=2)
    path = sample_shard(net, DiscreteSchedule.named("linear", 100), {"fn": "ddim", "grid": "uniform"}, 3, 0, 2,
                        base_seed=0, shape=SHAPE, max_level=255, batch_size=2, out_path=tmp_path / "u.npz",
                        context="test")
    assert SampleShard.load(path).labels is None
    assert "labels" not in load_npz(path)


# Each sampler of the edm family, with enough steps that its discretisation error is below the Monte-Carlo error.
ORACLE_SAMPLERS = {
    "edm_heun": ({"fn": "edm_heun", "grid": "edm"}, 64),
    "edm_euler": ({"fn": "edm_euler", "grid": "edm"}, 256),
    "edm_stochastic": ({"fn": "edm_stochastic", "grid": "edm",
                        "options": {"S_churn": 40.0, "S_tmin": 0.05, "S_tmax": 50.0, "S_noise": 1.0}}, 64),
    "pc": ({"fn": "pc", "grid": "ve", "options": {"snr": 0.16, "n_steps_each": 1, "corrector": "langevin",
                                                   "denoise": True}}, 256),
    "vp_euler_maruyama": ({"fn": "vp_euler_maruyama", "grid": "vp_sde",
                           "grid_options": {"beta_min": 0.1, "beta_max": 20.0, "eps": 1.0e-3},
                           "options": {"denoise": True}}, 1000),
    "vp_probability_flow": ({"fn": "vp_probability_flow", "grid": "vp_sde",
                             "grid_options": {"beta_min": 0.1, "beta_max": 20.0, "eps": 1.0e-3},
                             "options": {"rtol": 1.0e-5, "atol": 1.0e-5, "method": "dopri5", "denoise": True}}, 1000),
}
N = 3000


@pytest.mark.parametrize("name", sorted(ORACLE_SAMPLERS))
def test_each_sampler_draws_each_class_from_its_own_gaussian(name):
    torch.set_num_threads(1)
    sampler, K = ORACLE_SAMPLERS[name]
    seeds = torch.arange(N)
    denoiser = make_denoiser("edm", class_gaussian_oracle(SHAPE), SCHEDULE, SHAPE)
    with torch.inference_mode():
        x, _ = generate(denoiser, sampler, K, seeds, SHAPE, batch_size=N, state_dtype=torch.float64)
    labels = draw_labels(seeds, len(MEANS))
    for y, (m, s) in enumerate(zip(MEANS, STDS, strict=True)):
        values = x[labels == y].reshape(-1).double()
        n = values.numel()
        z_mean = abs(float(values.mean()) - m) / (s / math.sqrt(n))
        # the sample variance's standard error is s^2 sqrt(2 / n)
        z_var = abs(float(values.var()) - s**2) / (s**2 * math.sqrt(2 / n))
        assert z_mean < 4.5 and z_var < 4.5, (name, y, z_mean, z_var)


def test_a_label_dim_needs_a_conditional_family_and_a_checkpoint():
    base = {"dataset": "d", "network": {"type": "mlp"}, "label_dim": 10}
    with pytest.raises(ValueError, match=r"'models.m.label_dim': family 'ddpm' samples no class-conditional model; "
                                         r"allowed for families \['edm', 'iddpm'\]"):
        check_model("m", {**base, "family": "ddpm", "schedule": {"name": "linear", "T": 100}, "checkpoint": "c"})
    with pytest.raises(ValueError, match=r"'models.m.label_dim': a class-conditional model must come from a checkpoint"):
        check_model("m", {**base, "family": "edm", "schedule": {"name": "edm", "sigma_min": 0.002, "sigma_max": 80.0}})
    check_model("m", {**base, "family": "edm", "checkpoint": "c",
                      "schedule": {"name": "edm", "sigma_min": 0.002, "sigma_max": 80.0}})


def test_the_configured_label_dim_must_be_the_networks():
    check_label_dim(10, 10, "model m")
    check_label_dim(0, 0, "model m")
    with pytest.raises(ValueError, match="model m: config key label_dim is 0 but the network is conditioned on 10 "
                                         "classes; set it to 10"):
        check_label_dim(0, 10, "model m")
    with pytest.raises(ValueError, match="remove it: the network is unconditional"):
        check_label_dim(10, 0, "model m")


def test_a_conditional_denoiser_refuses_to_run_without_labels():
    denoiser = make_denoiser("edm", class_gaussian_oracle(SHAPE), SCHEDULE, SHAPE)
    assert denoiser.label_dim == 3
    with pytest.raises(ValueError, match=r"class-conditional \(label_dim=3\): set class_labels first"):
        denoiser(torch.zeros(2, *SHAPE), 1.0)


def features_file(path, seeds: np.ndarray, rng: np.random.Generator) -> None:
    logits = rng.normal(size=(len(seeds), 4))
    ShardFeatures(
        stats=FeatureStats.from_features(rng.normal(size=(len(seeds), 3))), is_kind="logits", is_values=logits,
        seeds=seeds, extractor=signature({"kind": "digits_cnn"}), nfe=3, grid=np.arange(3), sample_wall_seconds=0.0,
        feature_wall_seconds=0.0, sample_device_seconds=0.0, feature_device_seconds=0.0, devices=("cpu",),
        speeds=("null",),
    ).save(path)


@pytest.mark.parametrize("label_dim", [None, 10])
def test_the_fd_is_record_states_the_label_protocol_of_a_conditional_model(tmp_path, label_dim):
    rng = np.random.default_rng(0)
    features_file(tmp_path / "f.npz", np.arange(8), rng)
    FeatureStats.from_features(rng.normal(size=(16, 3))).save(tmp_path / "ref.npz")
    (tmp_path / "ref.json").write_text(json.dumps({"extractor": signature({"kind": "digits_cnn"}), "reference": "r",
                                                   "n_images": 16, "reference_stats_sha256": "x"}))
    spec = {"extractor": {"kind": "digits_cnn"}, "n_samples": 8, "is_splits": 1, "context": "test",
            "bootstrap": {"resamples": 0}, **({} if label_dim is None else {"label_dim": label_dim})}
    fd_is.run(spec, tmp_path / "fd_is.json", [tmp_path / "f.npz"], tmp_path / "ref.npz", 1)
    record = json.loads((tmp_path / "fd_is.json").read_text())
    if label_dim is None:
        assert "class_labels" not in record
    else:
        assert record["class_labels"] == {"label_dim": 10, "protocol": LABEL_PROTOCOL}


def test_the_iddpm_denoiser_feeds_each_row_its_class_as_adm_y():
    torch.manual_seed(0)
    # Scale-shift norm: at one channel per GroupNorm group a plain shift by the embedding would be normalised away.
    net = build_network({"type": "adm_unet", "model_channels": 32, "out_channels": 2, "num_res_blocks": 1,
                         "attention_resolutions": [], "channel_mult": [1], "num_classes": 3,
                         "use_scale_shift_norm": True},
                        channels=1, image_size=4).eval()
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.2)  # ADM zero-initialises its output convs
    schedule = DiscreteSchedule.named("linear", 100)
    denoiser = make_denoiser("iddpm", net, schedule, (1, 4, 4))
    assert denoiser.label_dim == 3
    x = torch.randn(4, 1, 4, 4)
    with pytest.raises(ValueError, match=r"class-conditional \(num_classes=3\): set class_labels first"):
        denoiser(x, 10)
    y = torch.tensor([0, 1, 2, 1])
    denoiser.class_labels = y
    t = torch.full((4,), 10 * denoiser.time_scale)
    with torch.no_grad():
        want = net(x, t, y)[:, :1]
    assert torch.allclose(denoiser(x, 10).eps, want)
    denoiser.class_labels = torch.tensor([2, 1, 0, 1])
    assert not torch.allclose(denoiser(x, 10).eps[0], want[0])


def test_no_likelihood_is_planned_or_accepted_for_a_conditional_model():
    edm = {"family": "edm", "schedule": {"name": "edm"}}
    cfg = {"models": {"cond": {**edm, "label_dim": 10}, "uncond": edm}, "metrics": {"ode_nll": {}},
           "samplers": {"full": {"fn": "iddpm", "grid": "even", "nll": "learned"}},
           "experiments": [{"model": "cond", "samplers": ["full"], "K": [10]}]}
    assert ode_nll_models(cfg) == ["uncond"]
    cfg["metrics"]["ode_nll"]["models"] = ["cond"]
    with pytest.raises(ConfigError, match=r"'metrics.ode_nll.models\[0\]': model 'cond' is class-conditional"):
        check_ode_nll_models(cfg)
    with pytest.raises(ConfigError, match=r"'samplers.full.nll': model 'cond' is class-conditional \(label_dim\)"):
        check_shared_nll_grids(cfg)
