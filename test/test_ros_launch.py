"""The launch file, parameter YAML, Fast DDS profile and RViz config, checked without launch_ros
(not installable here, DESIGN.md section 5): the launch file is parsed (ast) and also run against
recording stand-ins for the launch / launch_ros classes; every file it names must be installed.

    make build && bash scripts/with_ros.sh .venv/bin/python -m pytest -q test/test_ros_launch.py
"""
from __future__ import annotations

import ast
import filecmp
import os
import sys
import types
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

pytest.importorskip("rclpy", reason="needs the ROS 2 environment (scripts/with_ros.sh)")

from affordance_clip_ros.ros import grounding_node, params  # noqa: E402

PKG = "affordance_clip_ros"
REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch" / "grounding.launch.py"
EXPECTED_ARGUMENTS = {"image_topic", "depth_topic", "camera_info_topic", "query_topic", "use_depth", "device",
                      "clip_pretrained", "fpn_checkpoint", "params_file", "namespace", "rviz", "use_fastdds_profile"}
# Where each argument must end up.
TO_NODE_REMAP = {"image_topic": "image", "depth_topic": "depth", "camera_info_topic": "camera_info",
                 "query_topic": grounding_node.QUERY_TOPIC}
TO_NODE_PARAM = {"use_depth": bool, "device": str, "clip_pretrained": str, "fpn_checkpoint": str}


def installed_share() -> Path:
    for prefix in filter(None, os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep)):
        share = Path(prefix, "share", PKG)
        if Path(prefix, "share", "ament_index", "resource_index", "packages", PKG).is_file():
            return share
    pytest.fail("affordance_clip_ros is not installed: run `make build` and the tests through scripts/with_ros.sh",
                pytrace=False)


# --- the launch file, statically --------------------------------------------------------------

@pytest.fixture(scope="module")
def tree() -> ast.Module:
    return ast.parse(LAUNCH.read_text(), filename=str(LAUNCH))


def _calls(node: ast.AST, name: str) -> list[ast.Call]:
    return [n for n in ast.walk(node) if isinstance(n, ast.Call)
            and getattr(n.func, "id", getattr(n.func, "attr", None)) == name]


def _kw(call: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _config_refs(node: ast.AST) -> set[str]:
    """Argument names read as config["name"] (LaunchConfiguration) inside ``node``."""
    refs = {n.slice.value for n in ast.walk(node) if isinstance(n, ast.Subscript)
            and getattr(n.value, "id", None) == "config" and isinstance(n.slice, ast.Constant)}
    refs |= {c.args[0].value for c in _calls(node, "LaunchConfiguration")
             if c.args and isinstance(c.args[0], ast.Constant)}
    return refs


def _arguments(tree: ast.Module) -> dict[str, ast.AST]:
    assign = next(n for n in tree.body if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "ARGUMENTS")
    return {elt.elts[0].value: elt.elts[1] for elt in assign.value.elts}


def _node_call(tree: ast.Module, executable: str) -> ast.Call:
    [call] = [c for c in _calls(tree, "Node") if isinstance(_kw(c, "executable"), ast.Constant)
              and _kw(c, "executable").value == executable]
    return call


def test_declares_exactly_the_issue_arguments(tree):
    args = _arguments(tree)
    assert set(args) == EXPECTED_ARGUMENTS
    assert len(_calls(tree, "DeclareLaunchArgument")) == 1  # one loop over ARGUMENTS declares them all
    assert ast.literal_eval(args["use_fastdds_profile"]) == "true"  # on by default (DESIGN.md section 5)
    assert ast.literal_eval(args["rviz"]) == "false"
    assert ast.literal_eval(args["query_topic"]) == grounding_node.QUERY_TOPIC


def test_every_argument_reaches_the_node(tree):
    node = _node_call(tree, "grounding_node")
    assert _kw(node, "package").id == "PACKAGE" and ast.literal_eval(_kw(node, "name")) == grounding_node.NODE_NAME
    # remappings: (node's own topic name, argument)
    remaps = {ast.literal_eval(t.elts[0]): _config_refs(t.elts[1]) for t in _kw(node, "remappings").elts}
    assert remaps == {topic: {arg} for arg, topic in TO_NODE_REMAP.items()}
    # parameters: the params file first, then a dict of typed overrides
    [params_file, overrides] = _kw(node, "parameters").elts
    assert _config_refs(params_file) == {"params_file"}
    for key, value in zip(overrides.keys, overrides.values):
        name = ast.literal_eval(key)
        assert name in params.SPECS, f"launch sets unknown parameter {name}"
        assert isinstance(value, ast.Call) and value.func.id == "ParameterValue"
        assert _config_refs(value) == {name}
        assert _kw(value, "value_type").id == TO_NODE_PARAM[name].__name__
        assert type(params.SPECS[name].default) is TO_NODE_PARAM[name]
    assert {ast.literal_eval(k) for k in overrides.keys} == set(TO_NODE_PARAM)
    assert _config_refs(_kw(node, "namespace")) == {"namespace"}
    # the two that act outside the node's own arguments
    rviz = _node_call(tree, "rviz2")
    assert _config_refs(_kw(rviz, "condition")) == {"rviz"}
    [env] = _calls(tree, "SetEnvironmentVariable")
    assert ast.literal_eval(env.args[0]) == "FASTDDS_DEFAULT_PROFILES_FILE"
    assert _config_refs(_kw(env, "condition")) == {"use_fastdds_profile"}
    used = _config_refs(node) | {"rviz", "use_fastdds_profile"}
    assert used == EXPECTED_ARGUMENTS


def test_every_file_it_names_is_installed(tree):
    share = installed_share()
    named = [c for c in _calls(tree, "PathJoinSubstitution")]
    paths = {"/".join(ast.literal_eval(e) for e in c.args[0].elts[1:]) for c in named}
    assert paths == {"config/grounding.yaml", "config/fastdds_profile.xml", "config/grounding.rviz"}
    for rel in paths | {"launch/grounding.launch.py"}:
        assert (share / rel).is_file(), f"{rel} is not installed under {share}"
        assert filecmp.cmp(REPO / rel, share / rel, shallow=False), f"installed {rel} is stale: run make build"
    exe = share.parents[1] / "lib" / PKG / "grounding_node"
    assert exe.is_file() and os.access(exe, os.X_OK)


# --- the launch file, executed against recording stand-ins -----------------------------------

class _Recorded:
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


def _stand_in_modules() -> dict[str, types.ModuleType]:
    names = {"launch": ["LaunchDescription"], "launch.actions": ["DeclareLaunchArgument", "SetEnvironmentVariable"],
             "launch.conditions": ["IfCondition"],
             "launch.substitutions": ["LaunchConfiguration", "PathJoinSubstitution"],
             "launch_ros.actions": ["Node"], "launch_ros.descriptions": ["ParameterValue"],
             "launch_ros.substitutions": ["FindPackageShare"], "launch_ros": []}
    modules = {}
    for module, classes in names.items():
        mod = types.ModuleType(module)
        for cls in classes:
            setattr(mod, cls, type(cls, (_Recorded,), {}))
        modules[module] = mod
    return modules


def test_generate_launch_description_runs(monkeypatch):
    for name, module in _stand_in_modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    namespace: dict = {}
    exec(compile(LAUNCH.read_text(), str(LAUNCH), "exec"), namespace)
    description = namespace["generate_launch_description"]()
    [entities] = description.args
    declared = [e for e in entities if type(e).__name__ == "DeclareLaunchArgument"]
    assert {d.args[0] for d in declared} == EXPECTED_ARGUMENTS
    assert all(d.kwargs.get("description") for d in declared)
    nodes = {e.kwargs["executable"]: e for e in entities if type(e).__name__ == "Node"}
    assert set(nodes) == {"grounding_node", "rviz2"}
    assert nodes["grounding_node"].kwargs["package"] == PKG
    assert nodes["rviz2"].kwargs["arguments"][0] == "-d"


# --- config files ------------------------------------------------------------------------------

def test_yaml_defaults_equal_the_parameter_table():
    doc = yaml.safe_load((REPO / "config" / "grounding.yaml").read_text())
    values = doc["/**"]["ros__parameters"]
    assert set(values) == set(params.SPECS)
    for name, spec in params.SPECS.items():
        assert values[name] == spec.default and type(values[name]) is type(spec.default), name


def test_parameter_descriptors():
    read_only = {spec.name for spec in params.PARAMS if spec.read_only}
    assert read_only == set(params.MODEL_PARAMS) | {"use_depth", "image_qos"}
    for spec in params.PARAMS:
        d = spec.descriptor()
        assert d.description and d.name == spec.name
        if spec.range:
            low, high, _ = spec.range
            assert low <= spec.default <= high
            assert (d.integer_range or d.floating_point_range)
        assert params.check_value(spec.name, spec.default) is None, spec.name
    assert params.check_value("image_qos", "fast") and params.check_value("device", "gpu")
    assert params.check_value("prompt_templates", ["a photo"]) and params.check_value("depth_window", 4)
    assert params.check_value("precision", "fp8")
    assert params.validate([]).successful


def test_fastdds_profile():
    root = ET.parse(REPO / "config" / "fastdds_profile.xml").getroot()
    ns = {"d": "http://www.eprosima.com"}
    transports = {t.findtext("d:transport_id", namespaces=ns): t
                  for t in root.iterfind(".//d:transport_descriptor", ns)}
    kinds = {t.findtext("d:type", namespaces=ns): t for t in transports.values()}
    assert set(kinds) == {"SHM", "UDPv4"}
    assert int(kinds["SHM"].findtext("d:segment_size", namespaces=ns)) == 32 * 1024 * 1024
    assert int(kinds["UDPv4"].findtext("d:sendBufferSize", namespaces=ns)) == 4 * 1024 * 1024
    assert int(kinds["UDPv4"].findtext("d:receiveBufferSize", namespaces=ns)) == 4 * 1024 * 1024
    [participant] = root.iterfind(".//d:participant", ns)
    assert participant.get("is_default_profile") == "true"
    assert participant.findtext("d:rtps/d:useBuiltinTransports", namespaces=ns) == "false"
    used = [t.text for t in participant.iterfind("d:rtps/d:userTransports/d:transport_id", ns)]
    assert sorted(used) == sorted(transports)


def test_rviz_config_shows_the_node_outputs():
    doc = yaml.safe_load((REPO / "config" / "grounding.rviz").read_text())
    displays = {d["Class"]: d for d in doc["Visualization Manager"]["Displays"]}
    topics = sorted(d["Topic"]["Value"] for d in doc["Visualization Manager"]["Displays"] if "Topic" in d)
    prefix = grounding_node.NODE_NAME
    assert topics == sorted(f"{prefix}/{name}" for name in ("overlay", "heatmap", "markers", "contact_point"))
    assert {"rviz_default_plugins/Image", "rviz_default_plugins/MarkerArray",
            "rviz_default_plugins/PointStamped"} <= set(displays)
