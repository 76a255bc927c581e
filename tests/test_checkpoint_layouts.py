"""Checkpoint layout loaders: plain state_dict, the DDIM/NCSNv2 list and score_sde's dict, with clear failures."""

from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torch import nn

from bench.checkpoints.layouts import (
    CheckpointLoadError,
    StateDictMismatch,
    load_ddim_list_checkpoint,
    load_plain_state_dict,
    load_score_sde_checkpoint,
    load_strict,
)


def _small_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), nn.Linear(4, 2), nn.BatchNorm1d(2)
    )
    model[3].running_mean.uniform_()
    return model


def _ddim_list(model: nn.Module, ema: OrderedDict, *, with_ema: bool = True) -> list:
    """ermongroup/ddim's training save: [module.-prefixed weights, optimizer, epoch, step, ema]."""
    optimizer = torch.optim.Adam(model.parameters())
    states = [
        OrderedDict((f"module.{k}", v) for k, v in model.state_dict().items()),
        optimizer.state_dict(),
        12,
        3456,
    ]
    return states + [ema] if with_ema else states


def _shadow(model: nn.Module) -> OrderedDict:
    """EMA shadow as ddim's EMAHelper keeps it: parameters only, no prefix, other values."""
    return OrderedDict((k, p.detach() * 0.5 + 1.0) for k, p in model.named_parameters())


def test_plain_state_dict_round_trip(tmp_path):
    model = _small_model()
    path = tmp_path / "model-790000.ckpt"
    torch.save(model.state_dict(), path)
    loaded = load_plain_state_dict(path)
    assert isinstance(loaded, OrderedDict)
    assert list(loaded) == list(model.state_dict())
    for key, value in model.state_dict().items():
        assert torch.equal(loaded[key], value), key
    fresh = _small_model(seed=1)
    load_strict(fresh, loaded)
    assert torch.equal(fresh[0].weight, model[0].weight)


def test_ddim_list_uses_ema_for_parameters_and_keeps_buffers(tmp_path):
    model = _small_model()
    shadow = _shadow(model)
    path = tmp_path / "ckpt.pth"
    torch.save(_ddim_list(model, shadow), path)
    loaded = load_ddim_list_checkpoint(path)
    reference = model.state_dict()
    assert list(loaded) == list(reference)
    for key in reference:
        expected = shadow[key] if key in shadow else reference[key]
        assert torch.equal(loaded[key], expected), key
    assert torch.equal(loaded["3.running_mean"], model[3].running_mean)
    assert not torch.equal(loaded["0.weight"], model[0].weight)


def test_ddim_list_without_ema_strips_the_prefix(tmp_path):
    model = _small_model()
    path = tmp_path / "ckpt.pth"
    torch.save(_ddim_list(model, _shadow(model)), path)
    loaded = load_ddim_list_checkpoint(path, use_ema=False)
    assert list(loaded) == list(model.state_dict())
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())


def test_ddim_list_without_shadow_asks_for_use_ema_false(tmp_path):
    model = _small_model()
    path = tmp_path / "ckpt.pth"
    torch.save(_ddim_list(model, OrderedDict(), with_ema=False), path)
    with pytest.raises(CheckpointLoadError, match=r"no EMA shadow.*int.*use_ema=False"):
        load_ddim_list_checkpoint(path)
    assert list(load_ddim_list_checkpoint(path, use_ema=False)) == list(model.state_dict())


def test_ema_key_absent_from_the_model_is_reported(tmp_path):
    model = _small_model()
    shadow = _shadow(model)
    shadow["9.weight"] = torch.zeros(1)
    path = tmp_path / "ckpt.pth"
    torch.save(_ddim_list(model, shadow), path)
    with pytest.raises(CheckpointLoadError, match=r"ckpt\.pth names keys absent.*9\.weight"):
        load_ddim_list_checkpoint(path)


def test_layouts_are_not_confused(tmp_path):
    model = _small_model()
    listed, plain = tmp_path / "list.pth", tmp_path / "plain.ckpt"
    torch.save(_ddim_list(model, _shadow(model)), listed)
    torch.save(model.state_dict(), plain)
    with pytest.raises(CheckpointLoadError, match=r"list\.pth holds a list of 5 elements"):
        load_plain_state_dict(listed)
    with pytest.raises(CheckpointLoadError, match=r"plain\.ckpt should hold a list"):
        load_ddim_list_checkpoint(plain)


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("keep", [0.1, 0.5, 0.99])
def test_truncated_file_gives_a_clear_error_naming_it(tmp_path, legacy, keep):
    model = _small_model()
    whole = tmp_path / "whole.ckpt"
    torch.save(model.state_dict(), whole, _use_new_zipfile_serialization=not legacy)
    blob = whole.read_bytes()
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(blob[: int(len(blob) * keep)])
    # A cut legacy pickle can also end inside a global's name: reported as corrupted too.
    named = re.escape(str(cut))
    with pytest.raises(CheckpointLoadError, match=rf"checkpoint {named} is .*corrupted"):
        load_plain_state_dict(cut)


def test_non_weight_objects_are_refused(tmp_path):
    path = tmp_path / "odd.ckpt"
    torch.save({"weight": torch.ones(1), "config": Path("x")}, path)
    with pytest.raises(CheckpointLoadError, match=r"odd\.ckpt .*refuses \(refused global pathlib"):
        load_plain_state_dict(path)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(CheckpointLoadError, match=r"nothing\.ckpt does not exist"):
        load_plain_state_dict(tmp_path / "nothing.ckpt")


def test_load_strict_lists_missing_unexpected_and_mismatched():
    model = _small_model()
    state = OrderedDict(model.state_dict())
    del state["2.bias"]
    state["extra.weight"] = torch.zeros(1)
    state["0.weight"] = torch.zeros(5, 3, 3, 3)
    with pytest.raises(StateDictMismatch) as caught:
        load_strict(model, state)
    error = caught.value
    assert error.missing == ["2.bias"]
    assert error.unexpected == ["extra.weight"]
    assert error.mismatched == [("0.weight", (5, 3, 3, 3), (4, 3, 3, 3))]
    message = str(error)
    assert "missing keys (1): 2.bias" in message
    assert "unexpected keys (1): extra.weight" in message
    assert "0.weight: checkpoint [5, 3, 3, 3] vs model [4, 3, 3, 3]" in message
    assert not torch.equal(model[0].weight, torch.zeros(4, 3, 3, 3))


def test_load_strict_shortens_long_key_lists():
    model = nn.Sequential(*[nn.Linear(1, 1) for _ in range(30)])
    with pytest.raises(StateDictMismatch, match=r"missing keys \(60\): 0\.weight.*and 40 more"):
        load_strict(model, {})


# ---------------------------------------------------------------------------------------------
# score_sde_pytorch's checkpoint_N.pth: dict(optimizer, model, ema, step)


class _ScoreSdeLike(nn.Module):
    """Parameters around a `sigmas` buffer, as score_sde's networks register it; one frozen parameter-free layer."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.register_buffer("sigmas", torch.linspace(50.0, 0.01, 7))
        self.all_modules = nn.ModuleList([nn.Linear(4, 8), nn.GroupNorm(2, 8), nn.Conv2d(8, 8, 3)])


def _score_sde_file(path: Path, model: nn.Module, *, shadow_offset: float = 1.0) -> list[torch.Tensor]:
    """Save as score_sde's utils.save_checkpoint would: DataParallel keys, Adam state, EMA of trainable params."""
    wrapped = nn.DataParallel(model)
    optimizer = torch.optim.Adam(wrapped.parameters())
    shadow = [p.detach().clone() + shadow_offset for p in wrapped.parameters() if p.requires_grad]
    ema = {"decay": 0.999, "num_updates": 3, "shadow_params": shadow}
    torch.save({"optimizer": optimizer.state_dict(), "model": wrapped.state_dict(), "ema": ema, "step": 950001}, path)
    return shadow


def test_score_sde_dict_uses_ema_for_parameters_and_keeps_buffers(tmp_path):
    model = _ScoreSdeLike()
    path = tmp_path / "checkpoint_8.pth"
    shadow = _score_sde_file(path, model)
    loaded = load_score_sde_checkpoint(path)
    assert list(loaded) == list(model.state_dict())  # 'module.' stripped, order kept
    params = [name for name, _ in model.named_parameters()]
    for name, want in zip(params, shadow, strict=True):
        assert torch.equal(loaded[name], want), name
    assert torch.equal(loaded["sigmas"], model.sigmas)
    fresh = _ScoreSdeLike(seed=1)
    load_strict(fresh, loaded)
    assert torch.equal(fresh.all_modules[2].weight, model.all_modules[2].weight + 1.0)
    # The same with the target network's parameter names, and the raw weights without the EMA.
    assert all(torch.equal(a, b) for a, b in zip(
        load_score_sde_checkpoint(path, parameter_names=params).values(), loaded.values(), strict=True))
    raw = load_score_sde_checkpoint(path, use_ema=False)
    assert all(torch.equal(raw[k], v) for k, v in model.state_dict().items())


def test_score_sde_dict_refuses_a_shadow_that_does_not_line_up(tmp_path):
    model = _ScoreSdeLike()
    path = tmp_path / "checkpoint_8.pth"
    _score_sde_file(path, model)
    # Taking `sigmas` for a parameter gives one entry too many: refused, not shifted.
    with pytest.raises(CheckpointLoadError, match=r"has 6 shadow parameters but 'model' has 7 parameter entries"):
        load_score_sde_checkpoint(path, buffers=())
    with pytest.raises(CheckpointLoadError, match="shape mismatches"):
        names = [n for n, _ in model.named_parameters()]
        load_score_sde_checkpoint(path, parameter_names=[names[1], names[0], *names[2:]])
    with pytest.raises(CheckpointLoadError, match="absent from 'model'"):
        load_score_sde_checkpoint(path, parameter_names=["nope.weight"])


def test_score_sde_dict_and_other_layouts_are_not_confused(tmp_path):
    model = _small_model()
    plain = tmp_path / "plain.pth"
    torch.save(model.state_dict(), plain)
    with pytest.raises(CheckpointLoadError, match=r"score_sde's dict with keys \['optimizer', 'model', 'ema', 'step'\]"):
        load_score_sde_checkpoint(plain)
    listed = tmp_path / "list.pth"
    torch.save(_ddim_list(model, _shadow(model)), listed)
    with pytest.raises(CheckpointLoadError, match="found list"):
        load_score_sde_checkpoint(listed)
    bad_ema = tmp_path / "bad_ema.pth"
    torch.save({"optimizer": {}, "model": model.state_dict(), "ema": {"decay": 0.9}, "step": 1}, bad_ema)
    with pytest.raises(CheckpointLoadError, match="shadow_params"):
        load_score_sde_checkpoint(bad_ema)
