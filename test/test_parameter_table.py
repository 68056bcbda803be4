"""The parameter table is the one source: GrounderConfig's defaults and the `affordance-clip`
model options agree with it, and any difference is named."""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import yaml

from affordance_clip_ros.cli_common import MODEL_OPTIONS, add_model_arguments, add_parameter_arguments
from affordance_clip_ros.model import GrounderConfig
from affordance_clip_ros.parameter_table import MODEL_PARAMS, PARAMS, SPECS, check_value

ROS_DOC = Path(__file__).resolve().parents[1] / "docs" / "ros.md"


def _as_table_value(name: str, value):
    """GrounderConfig spells "no checkpoint" None and the templates as a tuple; the table "" and a list."""
    if name == "fpn_checkpoint" and value is None:
        return ""
    return list(value) if isinstance(value, tuple) else value


def test_grounder_config_defaults_equal_the_table():
    config_defaults = {f.name: f.default for f in dataclasses.fields(GrounderConfig)}
    shared = [spec for spec in PARAMS if spec.name in config_defaults]
    assert {s.name for s in shared} >= set(MODEL_PARAMS) | {"num_peaks", "peak_threshold", "peak_min_distance",
                                                            "prompt_templates"}
    for spec in shared:
        got = _as_table_value(spec.name, config_defaults[spec.name])
        assert got == spec.default, f"{spec.name}: GrounderConfig {got!r}, table {spec.default!r}"


def test_model_options_come_from_the_table():
    parser = argparse.ArgumentParser()
    add_model_arguments(parser)
    add_parameter_arguments(parser, ("num_peaks", "peak_threshold", "peak_min_distance"))
    actions = {a.dest: a for a in parser._actions}
    for name in (*MODEL_OPTIONS, "num_peaks", "peak_threshold", "peak_min_distance"):
        spec, action = SPECS[name], actions[name]
        assert action.option_strings == [spec.flag], name
        assert (action.default if action.default is not None else "") == spec.default, \
            f"{spec.flag}: default {action.default!r}, table {spec.default!r}"
        assert tuple(action.choices or ()) == spec.choices, name
        assert spec.description in action.help, name
    assert parser.parse_args(["--input-size", "320", "--precision", "int8"]).input_size == 320


def test_evaluate_defaults_to_fp32():
    parser = argparse.ArgumentParser()
    add_model_arguments(parser, precision="fp32")
    assert parser.parse_args([]).precision == "fp32"


def test_the_ros_page_lists_the_table():
    """docs/ros.md's parameter table: the same names in the same order, defaults, and run-time flags."""
    text = ROS_DOC.read_text()
    section = text[text.index("## Parameters"):]
    section = section[:section.index("\n## ", 1)]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in section.splitlines()
            if line.startswith("| ") and not line.startswith("| name")]
    assert [r[0] for r in rows] == [spec.name for spec in PARAMS], \
        f"only on the page: {[r[0] for r in rows if r[0] not in SPECS]}, " \
        f"only in the table: {[s.name for s in PARAMS if s.name not in [r[0] for r in rows]]}"
    for name, default, _, run_time in rows:
        spec = SPECS[name]
        assert yaml.safe_load(default) == spec.default, f"{name}: page {default}, table {spec.default!r}"
        assert run_time == ("no" if spec.read_only else "yes"), f"{name}: page says run time '{run_time}'"


def test_camera_names_become_topic_names_or_are_refused():
    assert check_value("cameras", []) is None and check_value("cameras", ["head", "wrist_left2"]) is None
    assert "'head' is given twice" in check_value("cameras", ["head", "wrist", "head"])
    for bad in ("", "2nd", "wrist/left", "head cam", "~head"):
        assert f"'{bad}' is not a camera name" in check_value("cameras", ["head", bad]), bad
