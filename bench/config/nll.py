"""The likelihood metrics of a config: which models get a PF-ODE NLL, and the grids and decoders of the VLB NLL."""

from __future__ import annotations

from bench.config.schema import ConfigError, need
from bench.families import continuous_families
from bench.samplers import own_moments_size

# The `sampler` of an ode_nll_bpd row in metrics.csv and in table specs: the PF-ODE solve itself.
PF_ODE = "pf_ode"


def ode_nll_models(cfg: dict) -> list[str]:
    """The models that get a PF-ODE likelihood, when metrics.ode_nll is set: those of its ``models``
    list, else every continuous-time model."""
    if "ode_nll" not in cfg["metrics"]:
        return []
    chosen = cfg["metrics"]["ode_nll"].get("models")
    # A class-conditional model's likelihood needs each test image's own label, which no split here carries.
    return [
        name for name, m in cfg["models"].items()
        if m["family"] in continuous_families() and (chosen is None or name in chosen) and "label_dim" not in m
    ]


def check_ode_nll_models(cfg: dict) -> None:
    chosen = cfg["metrics"].get("ode_nll", {}).get("models", [])
    for i, name in enumerate(chosen):
        need(name, cfg["models"], f"metrics.ode_nll.models[{i}]", "model")
        family = cfg["models"][name]["family"]
        if "label_dim" in cfg["models"][name]:
            raise ConfigError(
                f"config key 'metrics.ode_nll.models[{i}]': model {name!r} is class-conditional (label_dim); "
                f"its likelihood would need each test image's label: allowed: unconditional models"
            )
        if family not in continuous_families():
            raise ConfigError(
                f"config key 'metrics.ode_nll.models[{i}]': model {name!r} of family {family!r} has no "
                f"PF-ODE likelihood; allowed: models of the families {continuous_families()}"
            )


# The bounds whose decoder variance a sampler's nll_decoder chooses; the analytic bound always takes
# Analytic-DPM's and the learned one iDDPM's.
FIXED_VARIANCE_BOUNDS = ("beta", "beta_tilde")


def check_shared_nll_grids(cfg: dict) -> None:
    """The samplers of a model that share one NLL job (same grid name) must realise the same grid and,
    for the fixed-variance bounds, name the same decoder variance."""
    for name, s in cfg["samplers"].items():
        if "nll_decoder" in s and s.get("nll") not in FIXED_VARIANCE_BOUNDS:
            raise ConfigError(
                f"config key 'samplers.{name}.nll_decoder': only a sampler with nll one of "
                f"{list(FIXED_VARIANCE_BOUNDS)} chooses the decoder variance, not nll {s.get('nll')!r}"
            )
    seen: dict[tuple[str, str], tuple[str, dict]] = {}
    decoders: dict[tuple[str, str], tuple[str, str]] = {}
    for exp in cfg["experiments"]:
        for name in exp["samplers"]:
            s = cfg["samplers"][name]
            if "nll" not in s:
                continue
            if "label_dim" in cfg["models"][exp["model"]]:
                raise ConfigError(
                    f"config key 'samplers.{name}.nll': model {exp['model']!r} is class-conditional (label_dim), "
                    f"whose NLL would need each test image's label; allowed: a sampler without 'nll' on it"
                )
            if s["nll"] in FIXED_VARIANCE_BOUNDS:
                decoder = s.get("nll_decoder", "trajectory")
                first_decoder = decoders.setdefault((exp["model"], s["grid"]), (name, decoder))
                if first_decoder[1] != decoder:
                    raise ConfigError(
                        f"config key 'samplers.{name}.nll_decoder': {decoder!r} differs from {first_decoder[1]!r} "
                        f"of sampler {first_decoder[0]!r}, which shares the NLL job of model {exp['model']!r} "
                        f"on grid {s['grid']!r}"
                    )
            options = s.get("grid_options", {})
            first = seen.setdefault((exp["model"], s["grid"]), (name, options))
            if first[1] != options:
                raise ConfigError(
                    f"config key 'samplers.{name}.grid_options': {options} differ from {first[1]} of sampler "
                    f"{first[0]!r}, which shares the NLL job of model {exp['model']!r} on grid {s['grid']!r}"
                )


def nll_grid_options(cfg: dict, model: str, grid: str) -> dict:
    """The grid options of the NLL job of (model, grid), common to its samplers (see check_shared_nll_grids)."""
    for exp in cfg["experiments"]:
        if exp["model"] == model:
            for name in exp["samplers"]:
                s = cfg["samplers"][name]
                if "nll" in s and s["grid"] == grid:
                    return s.get("grid_options", {})
    return {}


def nll_decoder(cfg: dict, model: str, grid: str) -> str:
    """The decoder variance of the fixed-variance bounds of the NLL job of (model, grid) (check_shared_nll_grids)."""
    for exp in cfg["experiments"]:
        if exp["model"] == model:
            for name in exp["samplers"]:
                s = cfg["samplers"][name]
                if s.get("nll") in FIXED_VARIANCE_BOUNDS and s["grid"] == grid:
                    return s.get("nll_decoder", "trajectory")
    return "trajectory"


def nll_variances(cfg: dict, model: str, grid: str, M: int | None = None) -> list[str]:
    """The reverse variances whose bounds the nll job of (model, grid, M) evaluates: those of every sampler of that
    grid on the model, shown in a table or not, whose own Monte-Carlo size of Gamma_n (moments_M) is M (None: the
    config's moments.M), so that Analytic-DPM Table 5's bound by M reads its M's Gamma_n."""
    return sorted({
        cfg["samplers"][name]["nll"]
        for exp in cfg["experiments"] if exp["model"] == model
        for name in exp["samplers"]
        if "nll" in cfg["samplers"][name] and cfg["samplers"][name]["grid"] == grid
        and own_moments_size(cfg["samplers"][name], cfg["moments"]) == M
    })
