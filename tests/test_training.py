"""Training: the loss falls, an interrupted run resumes to the same weights, the U-Net trains from config."""

import pytest
import torch

from bench.checkpoints.model_file import load_model, save_model
from bench.core.schedules import DiscreteSchedule
from bench.data.digits import levels_to_unit, load_digits_split
from bench.families import training_loss
from bench.nets.factory import build_network
from bench.steps.train import TrainConfig, train_eps_model

SCH = DiscreteSchedule.named("linear", 100)


def digits():
    split = load_digits_split("train")
    return torch.from_numpy(levels_to_unit(split.images[:256], split.max_level))


def mlp():
    torch.manual_seed(0)
    return build_network({"type": "mlp", "width": 64, "depth": 2, "emb_dim": 16}, channels=1, image_size=8)


def test_loss_decreases_on_digits():
    _, losses = train_eps_model(mlp(), digits(), SCH, TrainConfig(120, 64, 2e-3, 0.9, seed=0), progress=False)
    assert sum(losses[-20:]) / 20 < 0.7 * sum(losses[:20]) / 20


def test_resume_reproduces_an_uninterrupted_run(tmp_path, capsys):
    cfg = TrainConfig(steps=40, batch_size=32, lr=1e-3, ema=0.9, seed=3, checkpoint_every=10)
    full, full_losses = train_eps_model(mlp(), digits(), SCH, cfg, progress=False)
    state = tmp_path / "state.resume"
    half = TrainConfig(**{**cfg.__dict__, "steps": 25})
    train_eps_model(mlp(), digits(), SCH, half, resume_path=state, progress=False)
    assert state.exists()  # saved at step 20, as if the job had been killed there
    resumed, resumed_losses = train_eps_model(mlp(), digits(), SCH, cfg, resume_path=state, progress=True)
    assert f"train: resuming from step 20 of 40 ({state})" in capsys.readouterr().err
    assert resumed_losses == full_losses
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_ddpm_unet_is_selectable_and_trains(tmp_path):
    net_cfg = {"type": "ddpm_unet", "ch": 32, "ch_mult": [1, 2], "attn_resolutions": [4], "num_res_blocks": 1,
               "dropout": 0.0}
    torch.manual_seed(0)
    net = build_network(net_cfg, channels=1, image_size=8)
    ema, losses = train_eps_model(net, digits(), SCH, TrainConfig(30, 16, 1e-3, 0.5, seed=0), progress=False)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
    model_cfg = {"network": net_cfg, "schedule": {"name": "linear", "T": 100}}
    path = save_model(tmp_path / "unet.pt", ema, model_cfg, (1, 8, 8), 16, {"steps": 30})
    loaded, schedule, ckpt = load_model(path)
    x, t = torch.randn(4, 1, 8, 8), torch.full((4,), 50.0)
    assert torch.equal(loaded(x, t), ema(x, t)) and schedule.T == 100 and ckpt["max_level"] == 16


def learned_variance_mlp():
    torch.manual_seed(0)
    return build_network(
        {"type": "mlp", "width": 64, "depth": 2, "emb_dim": 16, "out_channels": 2}, channels=1, image_size=8
    )


@pytest.mark.parametrize("loss", ["hybrid", "vlb"])
def test_loss_aware_run_resumes_to_the_uninterrupted_run_with_the_samplers_state(tmp_path, loss):
    schedule = DiscreteSchedule.named("cosine", 20)
    loss_fn = training_loss({"family": "iddpm", "loss": {"name": loss}}, 16)
    cfg = TrainConfig(steps=24, batch_size=32, lr=1e-3, ema=0.9, seed=3, checkpoint_every=8, t_sampler="loss_aware")
    full, full_losses = train_eps_model(learned_variance_mlp(), digits(), schedule, cfg, progress=False, loss_fn=loss_fn)
    state = tmp_path / "state.resume"
    half = TrainConfig(**{**cfg.__dict__, "steps": 18})
    train_eps_model(learned_variance_mlp(), digits(), schedule, half, resume_path=state, progress=False, loss_fn=loss_fn)
    saved = torch.load(state, weights_only=True)["t_sampler"]
    assert saved["counts"].tolist() == [10] * 20  # saved at step 16, past the warm-up: p_t is no longer uniform
    resumed, resumed_losses = train_eps_model(
        learned_variance_mlp(), digits(), schedule, cfg, resume_path=state, progress=False, loss_fn=loss_fn
    )
    assert resumed_losses == full_losses
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_loss_aware_t_sampler_is_checked_against_the_loss_and_the_resume_state(tmp_path):
    schedule = DiscreteSchedule.named("cosine", 20)
    cfg = TrainConfig(steps=4, batch_size=8, lr=1e-3, ema=0.9, seed=0, checkpoint_every=2, t_sampler="loss_aware")
    with pytest.raises(ValueError, match="'loss_aware' needs a loss that weights its samples.*not simple_loss"):
        train_eps_model(mlp(), digits(), schedule, cfg, progress=False)
    with pytest.raises(ValueError, match=r"t_sampler 'importance' is not one of \['uniform', 'loss_aware'\]"):
        train_eps_model(mlp(), digits(), schedule, TrainConfig(4, 8, 1e-3, 0.9, 0, t_sampler="importance"))
    state = tmp_path / "state.resume"
    uniform = TrainConfig(**{**cfg.__dict__, "steps": 3, "t_sampler": "uniform"})
    loss_fn = training_loss({"family": "iddpm", "loss": {"name": "hybrid"}}, 16)
    train_eps_model(learned_variance_mlp(), digits(), schedule, uniform, resume_path=state, progress=False,
                    loss_fn=loss_fn)
    with pytest.raises(ValueError, match="saved by a run with t_sampler 'uniform', this run has 'loss_aware'"):
        train_eps_model(learned_variance_mlp(), digits(), schedule, cfg, resume_path=state, progress=False,
                        loss_fn=loss_fn)
