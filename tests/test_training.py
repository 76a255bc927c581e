"""Training: the loss falls, an interrupted run resumes to the same weights, the U-Net trains from config."""

import torch

from bench.data.digits import levels_to_unit, load_digits_split
from bench.models import build_network, load_model, save_model
from bench.schedules import DiscreteSchedule
from bench.training import TrainConfig, train_eps_model

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


def test_resume_reproduces_an_uninterrupted_run(tmp_path):
    cfg = TrainConfig(steps=40, batch_size=32, lr=1e-3, ema=0.9, seed=3, checkpoint_every=10)
    full, full_losses = train_eps_model(mlp(), digits(), SCH, cfg, progress=False)
    state = tmp_path / "state.resume"
    half = TrainConfig(**{**cfg.__dict__, "steps": 25})
    train_eps_model(mlp(), digits(), SCH, half, resume_path=state, progress=False)
    assert state.exists()  # saved at step 20, as if the job had been killed there
    resumed, resumed_losses = train_eps_model(mlp(), digits(), SCH, cfg, resume_path=state, progress=False)
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
