"""Fuzz of the config loader: whatever the input, it is accepted or refused with ConfigError, never another exception."""

import copy
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.config import ConfigError, load_config, read_yaml, validate_config

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TEXT = (ROOT / "workflows/config/default.yaml").read_text()
DEFAULT = read_yaml(ROOT / "workflows/config/default.yaml")
FUZZ = settings(max_examples=75, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

scalars = st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True) | st.text(max_size=12)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)


def paths(node, prefix=()):
    """Every path to a value inside the config, containers included."""
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from paths(v, (*prefix, i))


PATHS = [p for p in paths(DEFAULT) if p]


def accepted_or_config_error(load) -> None:
    try:
        load()
    except ConfigError:
        pass


@FUZZ
@given(text=st.text(max_size=300) | st.binary(max_size=300).map(lambda b: b.decode("latin-1")))
def test_random_text(tmp_path, text):
    path = tmp_path / "fuzz.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogateescape")
    accepted_or_config_error(lambda: load_config(path, root=ROOT))


@FUZZ
@given(data=st.binary(max_size=200))
def test_random_bytes(tmp_path, data):
    path = tmp_path / "fuzz.yaml"
    path.write_bytes(data)
    accepted_or_config_error(lambda: load_config(path, root=ROOT))


@FUZZ
@given(cut=st.integers(0, len(DEFAULT_TEXT)), length=st.integers(0, 40), insert=st.text(max_size=20))
def test_edited_default_text(tmp_path, cut, length, insert):
    path = tmp_path / "fuzz.yaml"
    path.write_text(DEFAULT_TEXT[:cut] + insert + DEFAULT_TEXT[cut + length:])
    accepted_or_config_error(lambda: load_config(path, root=ROOT))


@FUZZ
@given(edits=st.lists(st.tuples(st.sampled_from(PATHS), st.booleans(), values), min_size=1, max_size=3))
def test_mutated_default_config(edits):
    cfg = copy.deepcopy(DEFAULT)
    for path, delete, value in edits:
        node = cfg
        try:
            for key in path[:-1]:
                node = node[key]
            if delete:
                del node[path[-1]]
            else:
                node[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit removed or replaced this path
    accepted_or_config_error(lambda: validate_config(yaml.safe_load(yaml.safe_dump(cfg)), root=ROOT))
