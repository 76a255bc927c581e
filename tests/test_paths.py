"""bench.steps.paths: the one cell path pattern, as the rules' wildcards, the report's image grids and Cell.key read it."""

from __future__ import annotations

import re

import numpy as np
from snakemake.io import regex_from_filepattern

from bench.config import Cell
from bench.report.image_grids import first_shards, shared_sample_grids, write_sample_grids
from bench.steps.paths import CELL_DIR, NLL_CELL, cell_dir, cell_key, nll_cell, parse_cell_key


def test_a_formatted_cell_folder_gives_back_its_wildcards_in_a_rules_path():
    pattern = re.compile(regex_from_filepattern(f"results/samples/{CELL_DIR}/shard{{shard}}.npz"))
    m = pattern.match(f"results/samples/{cell_dir('digits', 'mlp', 'ddim_eta0', 25)}/shard0003.npz")
    assert m.groupdict() == {"dataset": "digits", "model": "mlp", "sampler": "ddim_eta0", "K": "25", "shard": "0003"}
    m = re.compile(regex_from_filepattern(f"results/cells/{NLL_CELL}.json")).match(
        f"results/cells/{nll_cell('digits', 'mlp', 'even', 100)}.json"
    )
    assert m.groupdict() == {"dataset": "digits", "model": "mlp", "grid": "even", "K": "100"}


def test_cell_key_is_the_cell_folder_without_its_dataset_and_parses_back():
    assert cell_dir("digits", "mlp", "ddim_eta0", 25) == "digits/" + cell_key("mlp", "ddim_eta0", 25)
    assert Cell("mlp", "ddim_eta0", 25).key == cell_key("mlp", "ddim_eta0", 25)
    assert parse_cell_key(Cell("mlp", "ddim_eta0", 25).key) == ("mlp", "ddim_eta0", 25)
    assert parse_cell_key("mlp/ddim_eta0/K25.tmp") is None
    assert parse_cell_key("digits/mlp/ddim_eta0/K25") is None


def _write_shard(path, seeds):
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, images=np.zeros((len(seeds), 1, 8, 8), np.uint8), seeds=np.asarray(seeds), max_level=np.int64(16))


def test_the_reports_grids_find_shards_and_name_pngs_by_the_same_pattern(tmp_path):
    samples, report = tmp_path / "samples", tmp_path / "report"
    _write_shard(samples / cell_dir("digits", "mlp", "ddim_eta0", 25) / "shard0001.npz", [20, 21])
    _write_shard(samples / cell_dir("digits", "mlp", "ddim_eta0", 25) / "shard0000.npz", [0, 1])
    _write_shard(samples / "digits/mlp/ddim_eta0/Kx/shard0000.npz", [0])  # not a cell folder
    found = first_shards(samples)
    assert found == {("digits", "mlp", "ddim_eta0", 25): samples / "digits/mlp/ddim_eta0/K25/shard0000.npz"}
    grids = write_sample_grids(samples, report, n_images=2)
    grid = grids[("digits", "mlp", "ddim_eta0", 25)]
    assert grid.relpath == f"samples/{cell_dir('digits', 'mlp', 'ddim_eta0', 25)}.png"
    assert (report / grid.relpath).is_file()
    shared = {cell_key("mlp", "ddim", 25): cell_key("mlp", "ddim_eta0", 25)}
    assert shared_sample_grids(grids, shared) == {("digits", "mlp", "ddim", 25): grid}
