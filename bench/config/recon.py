"""DDIM's reconstruction metric of a config (metrics.recon): its cells, and the checks that they are DDIM's ODE."""

from __future__ import annotations

from bench.config.cells import Cell
from bench.config.schema import ConfigError, need, sampler_check
from bench.families import compatible_samplers

# The decoder of a reconstruction: the one sampler function whose eta = 0 update is the ODE the encoder reverses.
RECON_SAMPLER_FN = "ddim"


def recon_cells(cfg: dict) -> list[Cell]:
    """Every (model, sampler, K) metrics.recon asks for, in a stable order, without duplicates."""
    wanted = cfg["metrics"].get("recon", {}).get("experiments", [])
    return list(dict.fromkeys(Cell(e["model"], s, K) for e in wanted for s in e["samplers"] for K in e["K"]))


def check_recon(cfg: dict) -> None:
    """Each metrics.recon experiment names an unconditional discrete-time model and a deterministic DDIM sampler
    (eta = 0, no x0 clipping; its grids need no moments) with K its chain allows."""
    from bench.samplers import validation

    for i, exp in enumerate(cfg["metrics"].get("recon", {}).get("experiments", [])):
        where = f"metrics.recon.experiments[{i}]"
        need(exp["model"], cfg["models"], f"{where}.model", "model")
        model = cfg["models"][exp["model"]]
        if "label_dim" in model:
            raise ConfigError(
                f"config key '{where}.model': model {exp['model']!r} is class-conditional (label_dim); its "
                "reconstruction would need each image's label; allowed: unconditional models"
            )
        if RECON_SAMPLER_FN not in compatible_samplers(model["family"]):
            raise ConfigError(
                f"config key '{where}.model': model {exp['model']!r} of family {model['family']!r} has no DDIM "
                f"sampler to decode with; allowed: models whose family allows sampler function {RECON_SAMPLER_FN!r}"
            )
        for j, name in enumerate(exp["samplers"]):
            key = f"{where}.samplers[{j}]"
            need(name, cfg["samplers"], key, "sampler")
            s = cfg["samplers"][name]
            options = s.get("options", {})
            if s["fn"] != RECON_SAMPLER_FN or options.get("eta", 0.0) != 0 or options.get("clip_x0", False):
                raise ConfigError(
                    f"config key '{key}': sampler {name!r} (fn {s['fn']!r}, options {options}) is not DDIM's ODE; "
                    f"allowed: a sampler of fn {RECON_SAMPLER_FN!r} with eta 0 and clip_x0 false"
                )
            T = model["schedule"]["T"]
            for k, K in enumerate(exp["K"]):
                if not 1 <= K <= T:
                    raise ConfigError(
                        f"config key '{where}.K[{k}]': value {K} is not allowed; K must be an integer in "
                        f"[1, T={T}] for model {exp['model']!r}"
                    )
                sampler_check(validation.check_steps, name, s, T, K, f"{where}.K[{k}]")
