"""The table specs a config lists: rows and columns name configured models, samplers and metrics."""

from __future__ import annotations

from pathlib import Path

from bench.config.cells import Cell, cells
from bench.config.nll import PF_ODE, ode_nll_models
from bench.config.precision_recall import PR_METRICS, check_precision_recall_table
from bench.config.recon import recon_cells
from bench.config.schema import ConfigError, read_yaml

# Digits metrics (embedded default), PF-ODE likelihoods, the papers' Inception FID / IS (paper profile),
# DDIM's reconstruction error (metrics.recon) and improved precision / recall (metrics.precision_recall).
METRIC_NAMES = ("fd_digits", "is_digits", "nll_bpd", "ode_nll_bpd", "fid", "is", "recon_mse", *PR_METRICS)
# A table's `reference_split` scores its cells' samples against that split's statistics: FD metrics only
# (IS has no reference).
FD_METRICS = ("fd_digits", "fid")


# The oracle table's metric and model name in metrics.csv (bench.steps.oracle; config key 'oracle').
ORACLE_METRIC, ORACLE_MODEL = "oracle_energy", "oracle"


def check_tables(cfg: dict, root: Path) -> None:
    defined = {(c.model, c.sampler, c.K) for c in cells(cfg)}
    for i, rel in enumerate(cfg["tables"]):
        path = root / rel
        if not path.exists():
            raise ConfigError(f"config key 'tables[{i}]': table spec {rel!r} does not exist under {root}")
        spec = read_yaml(path)
        metric = spec.get("metric") if isinstance(spec, dict) else None
        rows = spec.get("rows", []) if isinstance(spec, dict) else []
        planned_only = isinstance(rows, list) and all("unavailable" in row for row in rows)
        # A spec whose every row is unavailable records a paper table this benchmark cannot measure.
        oracle = metric == ORACLE_METRIC and not planned_only
        if oracle and "oracle" not in cfg:
            raise ConfigError(f"table spec {rel}: metric {ORACLE_METRIC!r} needs the config key 'oracle'")
        derived = spec.get("derived") if isinstance(spec, dict) else None
        if derived is not None and derived.get("metric") not in METRIC_NAMES:
            raise ConfigError(
                f"table spec {rel}: derived.metric {derived.get('metric')!r} is not allowed; "
                f"allowed: {list(METRIC_NAMES)}"
            )
        if "reference_split" in spec and not planned_only:
            check_reference_split(cfg, spec, rel)
        if metric in PR_METRICS and not planned_only:
            check_precision_recall_table(cfg, spec, rel)
        if metric not in METRIC_NAMES and not planned_only and not oracle and derived is None:
            raise ConfigError(
                f"table spec {rel}: metric {metric!r} is not allowed; allowed: {[*METRIC_NAMES, ORACLE_METRIC]} "
                "(or any name, for a table with a 'derived' key)"
            )
        if isinstance(spec, dict) and spec.get("rows") == "all":
            # A cross-product table's rows are whatever cells ran on its dataset: nothing to cross-check.
            continue
        field = spec["columns"]["field"]
        pf_ode_models = ode_nll_models(cfg)
        reconstructed = {(c.model, c.sampler, c.K) for c in recon_cells(cfg)}
        check_row_labels(spec, rel)
        for r, row in enumerate(spec.get("rows", [])):
            if "unavailable" in row:
                continue
            models = {**cfg["models"], ORACLE_MODEL: None} if oracle else cfg["models"]
            for part in (row, *row.get("at", {}).values()):
                for key, table in (("model", models), ("sampler", cfg["samplers"])):
                    if key in part and part[key] not in table and not (key == "sampler" and part[key] == PF_ODE):
                        raise ConfigError(
                            f"table spec {rel}: rows[{r}] ({row.get('label')!r}) names unknown {key} {part[key]!r}; "
                            f"the config defines {sorted(table)}"
                        )
            for value in spec["columns"]["values"]:
                if str(value) in {str(k) for k in row.get("unavailable_at", {})}:
                    continue
                at = {str(k): v for k, v in row.get("at", {}).items()}
                selected = {**row, field: value, **at.get(str(value), {})}
                if metric == "ode_nll_bpd":
                    if selected.get("model") not in pf_ode_models or selected.get("sampler", PF_ODE) != PF_ODE:
                        raise ConfigError(
                            f"table spec {rel}: rows[{r}] ({row.get('label')!r}) at "
                            f"{field}={value} selects model={selected.get('model')!r}, "
                            f"sampler={selected.get('sampler')!r}; PF-ODE likelihoods exist for sampler "
                            f"{PF_ODE!r} of models {pf_ode_models} (continuous-time models, with metrics.ode_nll)"
                        )
                    continue
                if metric == "recon_mse":
                    cell = (selected.get("model"), selected.get("sampler"), selected.get("K"))
                    if cell not in reconstructed:
                        raise ConfigError(
                            f"table spec {rel}: rows[{r}] ({row.get('label')!r}) at {field}={value} refers to "
                            f"reconstruction model={cell[0]!r}, sampler={cell[1]!r}, K={cell[2]!r}, which no "
                            "metrics.recon experiment defines"
                        )
                    continue
                if derived is not None:
                    curve = (selected.get("model"), selected.get("sampler"))
                    if curve not in {(m, smp) for m, smp, _ in defined}:
                        raise ConfigError(
                            f"table spec {rel}: rows[{r}] ({row.get('label')!r}) at {field}={value} reads the "
                            f"{derived['metric']} curve of model={curve[0]!r}, sampler={curve[1]!r}, "
                            "which no experiment defines"
                        )
                    continue
                cell = (selected.get("model"), selected.get("sampler"), selected.get("K"))
                # An oracle row runs the samplers of oracle.model on the mixture: its cells are that model's.
                if oracle and cell[0] == ORACLE_MODEL:
                    cell = (cfg["oracle"]["model"], *cell[1:])
                if cell not in defined:
                    raise ConfigError(
                        f"table spec {rel}: rows[{r}] ({row.get('label')!r}) at "
                        f"{spec['columns']['field']}={value} refers to cell model={cell[0]!r}, "
                        f"sampler={cell[1]!r}, K={cell[2]!r}, which no experiment defines"
                    )


def check_row_labels(spec: dict, rel: str) -> None:
    """Two rows with one label would print as two lines a reader cannot tell apart."""
    first: dict[str, int] = {}
    for r, row in enumerate(spec.get("rows", [])):
        label = row.get("label")
        if label in first:
            raise ConfigError(
                f"table spec {rel}: rows[{r}] repeats the label {label!r} of rows[{first[label]}]; "
                "each row of a table needs its own label"
            )
        first[label] = r


def check_reference_split(cfg: dict, spec: dict, rel: str) -> None:
    if spec["metric"] not in FD_METRICS:
        raise ConfigError(
            f"table spec {rel}: reference_split {spec['reference_split']!r} needs an FD metric; metric "
            f"{spec['metric']!r} has no reference; allowed: {list(FD_METRICS)}"
        )
    if "fd_is" not in cfg["metrics"]:
        raise ConfigError(f"table spec {rel}: reference_split needs the config key 'metrics.fd_is'")


def profile_reference_split(cfg: dict) -> str | None:
    """The split whose statistics metrics.fd_is scores every cell against (None: published statistics)."""
    return cfg["metrics"]["fd_is"].get("reference_split")


def reference_split_cells(cfg: dict, root: Path) -> dict[Cell, list[str]]:
    """The splits each cell's FD is scored against beside metrics.fd_is's reference, from the tables naming a
    `reference_split`; the samples and features stay the cell's own, only the reference differs."""
    wanted: dict[Cell, list[str]] = {}
    for rel in cfg["tables"]:
        spec = read_yaml(Path(root) / rel)
        split = spec.get("reference_split")
        if split is None:
            continue
        field = spec["columns"]["field"]
        for row in spec["rows"]:
            if "unavailable" in row:
                continue
            for value in spec["columns"]["values"]:
                if str(value) in {str(k) for k in row.get("unavailable_at", {})}:
                    continue
                selected = {**row, field: value}
                cell = Cell(selected["model"], selected["sampler"], int(selected["K"]))
                if split not in wanted.setdefault(cell, []):
                    wanted[cell].append(split)
    return wanted
