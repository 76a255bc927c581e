"""Checkpoint layout loaders: plain state_dict and the DDIM/NCSNv2 list, with clear failures."""

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
