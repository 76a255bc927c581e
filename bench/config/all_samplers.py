"""``samplers: all`` in an experiment: every configured sampler the model's family allows and its K can run."""

from __future__ import annotations

from bench.config.schema import ConfigError, sampler_check
from bench.families import compatible_samplers

ALL = "all"


def skipped_reason(cfg: dict, model_name: str, sampler_name: str, Ks: list[int]) -> str | None:
    """Why ``samplers: all`` leaves sampler ``sampler_name`` out for model ``model_name`` at ``Ks`` (None: kept)."""
    from bench.samplers import validation

    model, sampler = cfg["models"][model_name], cfg["samplers"][sampler_name]
    allowed = compatible_samplers(model["family"])
    if sampler["fn"] not in allowed:
        return f"family {model['family']!r} does not take sampler function {sampler['fn']!r} (it takes {allowed})"
    if validation.needs_moments(sampler) and "moments" not in cfg:
        return "it needs the Analytic-DPM moments and the config has no 'moments' key"
    T = model["schedule"].get("T")
    for K in Ks if T is not None else ():
        try:
            sampler_check(validation.check_steps, sampler_name, sampler, T, K, f"K={K}")
        except ConfigError as err:
            return str(err)
    return None


def expand_all_samplers(cfg: dict) -> list[tuple[int, str, str, str]]:
    """Replace each experiment's ``samplers: all`` by the samplers it can run, in the config's order (in place);
    return (experiment index, model, sampler, reason) of each sampler left out."""
    skipped = []
    for i, exp in enumerate(cfg.get("experiments", [])):
        if exp.get("samplers") != ALL or exp.get("model") not in cfg.get("models", {}):
            continue
        kept = []
        for name in cfg.get("samplers", {}):
            reason = skipped_reason(cfg, exp["model"], name, exp["K"])
            if reason is None:
                kept.append(name)
            else:
                skipped.append((i, exp["model"], name, reason))
        if not kept:
            raise ConfigError(
                f"config key 'experiments[{i}].samplers': 'all' leaves no sampler for model {exp['model']!r}: "
                + "; ".join(f"{sampler}: {reason}" for j, _, sampler, reason in skipped if j == i)
            )
        exp["samplers"] = kept
    return skipped
