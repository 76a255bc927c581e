"""The sampler registry: specs found in their modules, and the one answer to "does this sampler read Gamma_n"."""

import inspect

import pytest

from bench import samplers
from bench.core.spaces import SPACES
from bench.samplers import SAMPLER_SPECS, needs_moments, register, trajectory_variance
from bench.samplers.spec import SamplerSpec


def test_every_spec_is_its_modules_function_in_a_known_space():
    for name, spec in SAMPLER_SPECS.items():
        assert spec.name == name and spec.space in SPACES, name
        module = inspect.getmodule(spec.fn)
        declared = getattr(module, "SPECS", ()) + ((module.SPEC,) if hasattr(module, "SPEC") else ())
        assert spec in declared, f"{name}'s spec is not declared beside its function in {module.__name__}"
        assert inspect.signature(spec.fn).parameters["noise"].kind is inspect.Parameter.KEYWORD_ONLY


@pytest.mark.parametrize("entry, expected", [
    ({"fn": "ddim", "grid": "uniform"}, False),
    ({"fn": "analytic_ddpm", "grid": "even", "inputs": {"gamma": "moments"}}, True),
    ({"fn": "ddpm", "grid": "even", "nll": "analytic"}, True),
    ({"fn": "ddpm", "grid": "even", "nll": "beta"}, False),
    ({"fn": "ddpm", "grid": "optimal", "options": {"variance": "beta"}}, True),
    ({"fn": "edm_heun", "grid": "edm"}, False),
])
def test_needs_moments_is_an_input_a_bound_or_a_grid_that_reads_them(entry, expected):
    assert needs_moments(entry) is expected


def test_trajectory_variance_comes_from_the_spec():
    assert trajectory_variance({"fn": "analytic_ddim", "grid": "optimal"}) == "analytic"
    assert trajectory_variance({"fn": "ddpm", "grid": "optimal", "options": {"variance": "beta_tilde"}}) == "beta_tilde"
    assert trajectory_variance({"fn": "ddpm", "grid": "optimal"}) == "beta"


def test_a_name_is_registered_once():
    ddim = SAMPLER_SPECS["ddim"]
    register(ddim)  # the same spec again is no change
    with pytest.raises(ValueError, match="sampler function 'ddim' is registered twice"):
        register(SamplerSpec("ddim", ddim.fn, "discrete", lambda K, o: K))
    assert samplers.get_sampler("ddim") is ddim.fn
