"""`python -m bench --help` and each step's `--help` describe every step and every flag."""

from __future__ import annotations

import argparse

from bench.cli import STEPS, build_parser
from bench.perf.cli import build_parser as build_perf_parser


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def _undescribed_flags(parser: argparse.ArgumentParser) -> list[str]:
    return [a.option_strings[0] for a in parser._actions
            if a.option_strings and not isinstance(a, argparse._HelpAction) and not (a.help or "").strip()]


def test_every_step_has_a_one_line_description_and_every_flag_a_help_text():
    sub = _subparsers(build_parser())
    described = {choice.dest: choice.help for choice in sub._choices_actions}
    assert set(sub.choices) == set(STEPS) | {"perf"}
    assert all(described[name] and "\n" not in described[name] for name in sub.choices)
    for name, parser in sub.choices.items():
        assert not _undescribed_flags(parser), (name, _undescribed_flags(parser))
    assert not _undescribed_flags(build_perf_parser())


def test_plan_validate_and_perf_take_the_config_flag_as_snakemake_spells_it():
    sub = _subparsers(build_parser())
    for step in ("plan", "validate"):
        for flag in ("--configfile", "--config"):
            assert str(sub.choices[step].parse_args([flag, "c.yaml"]).config) == "c.yaml"
    for flag in ("--cells", "--configfile", "--config"):
        assert str(build_perf_parser().parse_args([flag, "c.yaml"]).cells) == "c.yaml"
