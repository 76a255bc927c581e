"""Loaders for the released checkpoint file layouts, each returning a plain ordered state_dict."""

from __future__ import annotations

import io
import pickle
import re
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

DATA_PARALLEL_PREFIX = "module."
_LISTED_KEYS = 20


class CheckpointLoadError(RuntimeError):
    """A checkpoint file that cannot be read or does not have the expected layout."""


class StateDictMismatch(RuntimeError):
    """A state_dict whose keys or shapes do not match the model it is loaded into."""

    def __init__(
        self,
        missing: list[str],
        unexpected: list[str],
        mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]],
        model_name: str,
    ) -> None:
        self.missing = missing
        self.unexpected = unexpected
        self.mismatched = mismatched
        lines = [f"state_dict does not fit {model_name}:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {_shorten(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {_shorten(unexpected)}")
        if mismatched:
            shapes = [f"{k}: checkpoint {list(got)} vs model {list(want)}"
                      for k, got, want in mismatched]
            lines.append(f"  shape mismatches ({len(mismatched)}): {_shorten(shapes)}")
        super().__init__("\n".join(lines))


def _shorten(items: list[str]) -> str:
    shown = ", ".join(items[:_LISTED_KEYS])
    hidden = len(items) - _LISTED_KEYS
    return shown + (f", ... and {hidden} more" if hidden > 0 else "")


def _reason(exc: BaseException) -> str:
    """The informative part of a torch.load failure, without torch's advice paragraphs."""
    text = str(exc)
    refused = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if refused:
        return f"refused global {refused.group(1)}"
    detail = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n\n|$)", text, re.DOTALL)
    if detail:
        return detail.group(1)
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"{type(exc).__name__}: {first.split('. ')[0]}" if first else type(exc).__name__


def _torch_load(path: Path, body: io.BytesIO | None = None, what: str | None = None) -> Any:
    """torch.load with weights_only=True of ``path`` (or of ``body``, a member ``what`` read from it); any failure
    becomes one error that names the file."""
    path = Path(path)
    if body is None and not path.is_file():
        raise CheckpointLoadError(f"checkpoint {path} does not exist or is not a file")
    if what is not None:
        path = Path(f"{path}:{what}")
    try:
        return torch.load(path if body is None else body, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointLoadError(
            f"checkpoint {path} is corrupted or holds objects that weights-only loading refuses "
            f"({_reason(exc)})"
        ) from None
    except Exception as exc:
        # Truncated zip archives and legacy files fail in many ways deep inside torch
        # (RuntimeError, EOFError, IndexError, struct.error, ...): all mean an unreadable file.
        raise CheckpointLoadError(
            f"checkpoint {path} is truncated or corrupted ({_reason(exc)})"
        ) from None


def _as_state_dict(obj: Any, path: Path, what: str) -> OrderedDict[str, torch.Tensor]:
    """Check that obj maps str keys to tensors; return it as an OrderedDict in its own order."""
    if not isinstance(obj, Mapping):
        raise CheckpointLoadError(
            f"{what} in {path} should be a mapping of name -> tensor, found {type(obj).__name__}"
        )
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not torch.is_tensor(v)]
    if bad:
        raise CheckpointLoadError(
            f"{what} in {path} should map names to tensors; entries that do not: {_shorten(bad)}"
        )
    return OrderedDict(obj)


def load_plain_state_dict(path: Path) -> OrderedDict[str, torch.Tensor]:
    """Read a torch.save(model.state_dict()) file (pytorch_diffusion, improved-diffusion)."""
    obj = _torch_load(path)
    if isinstance(obj, (list, tuple)):
        raise CheckpointLoadError(
            f"{path} holds a {type(obj).__name__} of {len(obj)} elements, not a state_dict; "
            "for the DDIM/NCSNv2 list layout use load_ddim_list_checkpoint"
        )
    return _as_state_dict(obj, Path(path), "the checkpoint")


def _strip_data_parallel(state: OrderedDict[str, torch.Tensor], path: Path, what: str):
    prefixed = [k.startswith(DATA_PARALLEL_PREFIX) for k in state]
    if not any(prefixed):
        return state
    if not all(prefixed):
        plain = [k for k, p in zip(state, prefixed, strict=True) if not p]
        raise CheckpointLoadError(
            f"{what} in {path} mixes {DATA_PARALLEL_PREFIX!r}-prefixed and plain keys: "
            f"{_shorten(plain)}"
        )
    return OrderedDict((k[len(DATA_PARALLEL_PREFIX):], v) for k, v in state.items())


def load_ddim_list_checkpoint(path: Path, use_ema: bool = True) -> OrderedDict[str, torch.Tensor]:
    """Read the DDIM/NCSNv2 list [state_dict, optimizer, epoch, step, (ema_shadow)].

    Element 0 carries DataParallel's 'module.' prefix, which is stripped. With use_ema the last
    element (EMA shadow: parameters only, no prefix) replaces those parameters; buffers stay.
    """
    path = Path(path)
    obj = _torch_load(path)
    if not isinstance(obj, (list, tuple)) or not obj:
        raise CheckpointLoadError(
            f"{path} should hold a list [state_dict, optimizer, epoch, step, ema_shadow], "
            f"found {type(obj).__name__}"
        )
    state = _strip_data_parallel(_as_state_dict(obj[0], path, "element 0"), path, "element 0")
    if not use_ema:
        return state
    if len(obj) < 2 or not isinstance(obj[-1], Mapping):
        raise CheckpointLoadError(
            f"{path} has no EMA shadow: its last element (of {len(obj)}) is "
            f"{type(obj[-1]).__name__}, not a mapping; pass use_ema=False for the raw weights"
        )
    shadow = _strip_data_parallel(_as_state_dict(obj[-1], path, "the EMA shadow"), path,
                                  "the EMA shadow")
    unknown = [k for k in shadow if k not in state]
    if unknown:
        raise CheckpointLoadError(
            f"EMA shadow in {path} names keys absent from element 0: {_shorten(unknown)}"
        )
    wrong = [f"{k}: {list(v.shape)} vs {list(state[k].shape)}" for k, v in shadow.items()
             if v.shape != state[k].shape]
    if wrong:
        raise CheckpointLoadError(
            f"EMA shadow in {path} has shapes unlike element 0: {_shorten(wrong)}"
        )
    return OrderedDict((k, shadow.get(k, v)) for k, v in state.items())


# NCSN's release: run.zip of its run/ folder, one run/logs/<doc>/checkpoint.pth per trained model (ermongroup/ncsn
# README.md L83-85, main.py L32).
NCSN_RUN_ZIP = "ncsn_run_zip"


def load_ncsn_run_zip(path: Path, member: str) -> OrderedDict[str, torch.Tensor]:
    """Read one run's checkpoint.pth from NCSN's run.zip: the list [state_dict, optimizer state] that
    runners/anneal_runner.py L179-184 saves; its test() loads states[0] into the DataParallel-wrapped network
    (L223-227), so the keys carry 'module.', which is stripped. NCSN keeps no EMA copy."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointLoadError(f"checkpoint {path} does not exist or is not a file")
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if member not in names:
                runs = [n for n in names if n.endswith("/checkpoint.pth")]
                raise CheckpointLoadError(
                    f"{path} has no member {member!r}; its checkpoint.pth members: {_shorten(runs) or 'none'} "
                    "(set the checkpoint's 'member' to the CIFAR-10 run's)"
                )
            body = io.BytesIO(archive.read(member))
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        raise CheckpointLoadError(f"checkpoint {path} is not a readable zip archive ({_reason(exc)})") from None
    obj = _torch_load(path, body, member)
    where = Path(f"{path}:{member}")
    if not isinstance(obj, (list, tuple)) or not obj:
        raise CheckpointLoadError(
            f"{where} should hold a list [state_dict, optimizer state], found {type(obj).__name__}"
        )
    return _strip_data_parallel(_as_state_dict(obj[0], where, "element 0"), where, "element 0")


def load_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Load state_dict into model, refusing missing, unexpected and wrongly shaped keys."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        (k, tuple(state_dict[k].shape), tuple(v.shape))
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or mismatched:
        raise StateDictMismatch(missing, unexpected, mismatched, type(model).__name__)
    model.load_state_dict(state_dict, strict=True)


# What Analytic-DPM's CKPT.save writes (baofff/Analytic-DPM cifar_imagenet_codes/interface/utils/ckpt.py).
ANALYTIC_DPM_CKPT_KEYS = (
    "it", "best_val_loss", "models_states", "optimizers_states", "lr_schedulers_states", "ema_models_states",
)


def load_analytic_dpm_checkpoint(
    path: Path, use_ema: bool = True, model_key: str = "eps_model"
) -> OrderedDict[str, torch.Tensor]:
    """Read Analytic-DPM's ``<it>.ckpt.pth``: torch.save of the dict of CKPT's attributes.

    {it, best_val_loss, models_states, optimizers_states, lr_schedulers_states, ema_models_states}, where
    models_states and ema_models_states map a model's name ('eps_model' for the CIFAR-10 runs) to the bare
    network's state_dict (no 'module.' prefix: DataParallel wraps another reference). With use_ema the EMA
    copy is read, as every evaluation profile of the paper does ('ema': True); else the trained weights.
    """
    path = Path(path)
    obj = _torch_load(path)
    if not isinstance(obj, Mapping) or "models_states" not in obj:
        found = sorted(map(str, obj)) if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointLoadError(
            f"{path} should hold Analytic-DPM's checkpoint dict with keys {list(ANALYTIC_DPM_CKPT_KEYS)}; "
            f"found {found}"
        )
    which = "ema_models_states" if use_ema else "models_states"
    states = obj.get(which)
    if not isinstance(states, Mapping):
        hint = "; pass use_ema=False for the trained weights" if use_ema else ""
        raise CheckpointLoadError(
            f"{path}: {which!r} is {type(states).__name__}, not a mapping of model name -> state_dict{hint}"
        )
    if model_key not in states:
        raise CheckpointLoadError(f"{path}: {which!r} has no model {model_key!r}; it names {sorted(map(str, states))}")
    return _as_state_dict(states[model_key], path, f"{which}[{model_key!r}]")


# Buffers of score_sde_pytorch's networks (NCSN, NCSNv2, DDPM, NCSN++ / DDPM++ register the noise
# table `sigmas`): state_dict entries that are not parameters, so not in the EMA's shadow_params.
SCORE_SDE_BUFFERS = ("sigmas",)
SCORE_SDE_KEYS = ("optimizer", "model", "ema", "step")


def load_score_sde_checkpoint(
    path: Path,
    use_ema: bool = True,
    *,
    parameter_names: list[str] | None = None,
    buffers: tuple[str, ...] = SCORE_SDE_BUFFERS,
) -> OrderedDict[str, torch.Tensor]:
    """Read score_sde_pytorch's checkpoint_N.pth: dict(optimizer, model, ema, step) (utils.save_checkpoint).

    'model' is the DataParallel-wrapped network's state_dict ('module.' prefix, stripped here);
    'ema' is ExponentialMovingAverage.state_dict(), dict(decay, num_updates, shadow_params) with
    shadow_params a list of tensors in the order of the network's trainable parameters. With use_ema
    the shadow replaces those parameters and buffers stay. Which entries are parameters: the
    ``parameter_names`` given (the target network's trainable parameters, in order, unprefixed),
    else every entry whose last name part is not in ``buffers``; the count and every shape are
    checked, so a wrong guess fails instead of shifting weights.
    """
    path = Path(path)
    obj = _torch_load(path)
    if not isinstance(obj, Mapping) or not {"model", "ema"} <= set(obj):
        found = sorted(map(str, obj)) if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointLoadError(
            f"{path} should hold score_sde's dict with keys {list(SCORE_SDE_KEYS)}, found {found}"
        )
    state = _strip_data_parallel(_as_state_dict(obj["model"], path, "'model'"), path, "'model'")
    if not use_ema:
        return state
    ema = obj["ema"]
    shadow = ema.get("shadow_params") if isinstance(ema, Mapping) else None
    if not isinstance(shadow, (list, tuple)) or not all(torch.is_tensor(t) for t in shadow):
        raise CheckpointLoadError(
            f"'ema' in {path} should be ExponentialMovingAverage.state_dict() with a list of tensors "
            f"'shadow_params'; found {type(shadow).__name__ if isinstance(ema, Mapping) else type(ema).__name__}"
        )
    if parameter_names is None:
        names = [k for k in state if k.rsplit(".", 1)[-1] not in buffers]
    else:
        names = list(parameter_names)
        unknown = [k for k in names if k not in state]
        if unknown:
            raise CheckpointLoadError(f"parameter names absent from 'model' in {path}: {_shorten(unknown)}")
    if len(names) != len(shadow):
        raise CheckpointLoadError(
            f"'ema' in {path} has {len(shadow)} shadow parameters but 'model' has {len(names)} parameter "
            f"entries (buffers taken as {list(buffers)}); pass the network's parameter_names"
        )
    wrong = [f"{k}: {list(t.shape)} vs {list(state[k].shape)}" for k, t in zip(names, shadow, strict=True)
             if t.shape != state[k].shape]
    if wrong:
        raise CheckpointLoadError(
            f"EMA shadow in {path} does not line up with 'model' (shape mismatches): {_shorten(wrong)}"
        )
    averaged = dict(zip(names, shadow, strict=True))
    return OrderedDict((k, averaged.get(k, v)) for k, v in state.items())
