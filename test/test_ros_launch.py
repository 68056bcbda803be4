"""The launch file, parameter YAML, Fast DDS profile and RViz config, checked without launch_ros
(launch_ros is not in the PyPI-wheel ROS environment): the launch file is parsed (ast) and also run against
recording stand-ins for the launch / launch_ros classes; every file it names must be installed.

    make build && bash scripts/with_ros.sh .venv-kilted/bin/python -m pytest -q test/test_ros_launch.py
"""
from __future__ import annotations

import ast
import dataclasses
import filecmp
import os
import subprocess
import sys
import types
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

pytest.importorskip("rclpy", reason="needs the ROS 2 environment (scripts/with_ros.sh)")

from affordance_clip_ros.ros import grounding_node
from affordance_clip_ros.ros import node_parameters as params

PKG = "affordance_clip_ros"
REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch" / "grounding.launch.py"
EXPECTED_ARGUMENTS = {"image_topic", "depth_topic", "camera_info_topic", "query_topic", "use_depth", "device",
                      "clip_pretrained", "fpn_checkpoint", "compile", "params_file", "namespace", "rviz",
                      "use_fastdds_profile", "cameras", "managed", "autostart"}
# Where each argument must end up.
TO_NODE_REMAP = {"image_topic": "image", "depth_topic": "depth", "camera_info_topic": "camera_info",
                 "query_topic": grounding_node.QUERY_TOPIC}
THIS_DISTRO_VARIABLE = {"kilted": "FASTDDS_DEFAULT_PROFILES_FILE", "jazzy": "FASTRTPS_DEFAULT_PROFILES_FILE"}[
    os.environ["ROS_DISTRO"]]  # the wheel set these tests run on (scripts/with_ros.sh sets it)
TO_NODE_PARAM = {"use_depth": bool, "device": str, "clip_pretrained": str, "fpn_checkpoint": str, "compile": str}


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


def test_declares_exactly_the_issue_arguments(tree, launch_file):
    defaults = {name: default for name, default, _ in launch_file["ARGUMENTS"]}
    assert set(defaults) == EXPECTED_ARGUMENTS
    assert len(_calls(tree, "DeclareLaunchArgument")) == 1  # one loop over ARGUMENTS declares them all
    assert defaults["use_fastdds_profile"] == "auto"  # unless the robot has its own profile
    assert defaults["rviz"] == "false"
    assert defaults["query_topic"] == grounding_node.QUERY_TOPIC
    for name in [*TO_NODE_PARAM, "cameras"]:  # empty: the params file decides
        assert defaults[name] == "", name


def test_every_file_it_names_is_installed(tree):
    share = installed_share()
    named = [c for c in _calls(tree, "PathJoinSubstitution")]
    paths = {"/".join(ast.literal_eval(e) for e in c.args[0].elts[1:]) for c in named}
    assert paths == {"config/grounding.yaml", "config/fastdds_profile.xml", "config/grounding.rviz"}
    for rel in paths | {"launch/grounding.launch.py"}:
        assert (share / rel).is_file(), f"{rel} is not installed under {share}"
        assert filecmp.cmp(REPO / rel, share / rel, shallow=False), f"installed {rel} is stale: run make build"
    for name in ("grounding_node", "managed_grounding_node"):
        exe = share.parents[1] / "lib" / PKG / name
        assert exe.is_file() and os.access(exe, os.X_OK), name


# --- the launch file, executed against recording stand-ins -----------------------------------

class _Recorded:
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


class _LaunchConfiguration(_Recorded):
    def perform(self, context) -> str:
        return context.launch_configurations[self.args[0]]


class _ParameterValue(_Recorded):
    """As launch_ros's: a substitution is converted to value_type later, a plain value must have it."""

    def __init__(self, value, *, value_type):
        if not isinstance(value, _LaunchConfiguration) and not isinstance(value, value_type):
            raise TypeError(f"value={value!r} is not an instance of {value_type}")
        super().__init__(value, value_type=value_type)


def _stand_in_modules() -> dict[str, types.ModuleType]:
    names = {"launch": ["LaunchDescription"],
             "launch.actions": ["DeclareLaunchArgument", "EmitEvent", "OpaqueFunction", "RegisterEventHandler",
                                "SetEnvironmentVariable"],
             "launch.conditions": ["IfCondition"], "launch.events": ["matches_action"],
             "launch.substitutions": ["LaunchConfiguration", "PathJoinSubstitution"],
             "launch_ros.actions": ["LifecycleNode", "Node"], "launch_ros.descriptions": ["ParameterValue"],
             "launch_ros.event_handlers": ["OnStateTransition"], "launch_ros.events": [],
             "launch_ros.events.lifecycle": ["ChangeState"], "launch_ros.substitutions": ["FindPackageShare"],
             "launch_ros": []}
    modules = {}
    for module, classes in names.items():
        mod = types.ModuleType(module)
        for cls in classes:
            special = {"LaunchConfiguration": _LaunchConfiguration, "ParameterValue": _ParameterValue}
            setattr(mod, cls, special.get(cls) or type(cls, (_Recorded,), {}))
        modules[module] = mod
    return modules


@pytest.fixture
def launch_file(monkeypatch) -> dict:
    """The launch file's namespace, run against the stand-ins."""
    for name, module in _stand_in_modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    namespace: dict = {}
    exec(compile(LAUNCH.read_text(), str(LAUNCH), "exec"), namespace)
    return namespace


def _launch(launch_file: dict, environment: dict | None = None, **given: str) -> dict[str, list]:
    """Run the description as `ros2 launch ... name:=value` would: declared defaults, then
    ``given``; returns the actions it starts, by kind."""
    [entities] = launch_file["generate_launch_description"]().args
    declared = {e.args[0]: e.kwargs["default_value"] for e in entities if type(e).__name__ == "DeclareLaunchArgument"}
    [setup] = [e for e in entities if type(e).__name__ == "OpaqueFunction"]
    context = types.SimpleNamespace(launch_configurations={**declared, **given}, environment=environment or {})
    actions: dict[str, list] = {}
    for action in setup.kwargs["function"](context):
        actions.setdefault(type(action).__name__, []).append(action)
    return actions


def test_generate_launch_description_declares_every_argument(launch_file):
    [entities] = launch_file["generate_launch_description"]().args
    declared = [e for e in entities if type(e).__name__ == "DeclareLaunchArgument"]
    assert {d.args[0] for d in declared} == EXPECTED_ARGUMENTS
    assert all(d.kwargs.get("description") for d in declared)


def test_every_argument_reaches_the_node(launch_file):
    given = {"image_topic": "/cam/rgb", "depth_topic": "/cam/depth", "camera_info_topic": "/cam/info",
             "query_topic": "/robot/query", "use_depth": "true", "device": "cuda:1", "clip_pretrained": "/w.bin",
             "fpn_checkpoint": "/fpn.safetensors", "compile": "reduce-overhead", "params_file": "/robot/params.yaml",
             "namespace": "arm",
             "rviz": "true", "use_fastdds_profile": "true"}
    actions = _launch(launch_file, **given)
    nodes = {n.kwargs["executable"]: n for n in actions["Node"]}
    assert list(nodes) == ["rviz2", "grounding_node"]  # a missing RViz stops launch before the node starts
    node = nodes["grounding_node"].kwargs
    assert node["package"] == PKG and node["name"] == grounding_node.NODE_NAME and node["namespace"] == "arm"
    assert dict(node["remappings"]) == {topic: given[arg] for arg, topic in TO_NODE_REMAP.items()}
    params_file, overrides = node["parameters"]
    assert params_file == "/robot/params.yaml"  # first: the arguments given override it
    assert set(overrides) == set(TO_NODE_PARAM)
    for name, value in overrides.items():
        [configuration] = value.args
        assert configuration.args == (name,) and value.kwargs["value_type"] is TO_NODE_PARAM[name]
        assert type(params.SPECS[name].default) is TO_NODE_PARAM[name]
    rviz = nodes["rviz2"].kwargs
    assert rviz["namespace"] == "arm" and rviz["arguments"][0] == "-d" and rviz["condition"].args == ("true",)
    assert rviz["remappings"] == []  # one camera: the config's topics as they are
    [profile] = actions["SetEnvironmentVariable"]
    assert profile.args[0] == THIS_DISTRO_VARIABLE  # no ROS_DISTRO given to the launch: rclpy decides


def test_parameters_not_given_come_from_the_params_file(launch_file):
    """A robot's YAML with use_depth: true or its own weights must not be overridden by defaults."""
    [node] = [n for n in _launch(launch_file)["Node"] if n.kwargs["executable"] == "grounding_node"]
    params_file, overrides = node.kwargs["parameters"]
    assert overrides == {}
    assert type(params_file).__name__ == "PathJoinSubstitution"  # the package's config/grounding.yaml
    [node] = [n for n in _launch(launch_file, use_depth="true")["Node"]
              if n.kwargs["executable"] == "grounding_node"]
    assert set(node.kwargs["parameters"][1]) == {"use_depth"}


@pytest.mark.parametrize("given", ["[head, wrist]", "head,wrist", " head , wrist ", "['head', 'wrist']"])
def test_cameras_argument_sets_the_parameter_and_remaps_each_camera(launch_file, given):
    actions = _launch(launch_file, cameras=given, image_topic="/{camera}/color/image_raw",
                      camera_info_topic="/{camera}/color/camera_info", use_depth="true")
    [node] = [n for n in actions["Node"] if n.kwargs["executable"] == "grounding_node"]
    assert node.kwargs["parameters"][1]["cameras"] == ["head", "wrist"]
    assert dict(node.kwargs["remappings"]) == {
        "head/image": "/head/color/image_raw", "head/camera_info": "/head/color/camera_info",
        "wrist/image": "/wrist/color/image_raw", "wrist/camera_info": "/wrist/color/camera_info",
        grounding_node.QUERY_TOPIC: grounding_node.QUERY_TOPIC}  # depth_topic has no {camera}: N/depth stays
    [rviz] = [n for n in actions["Node"] if n.kwargs["executable"] == "rviz2"]  # RViz shows the first camera
    prefix = grounding_node.NODE_NAME
    assert dict(rviz.kwargs["remappings"]) == {f"{prefix}/{name}": f"{prefix}/head/{name}"
                                               for name in ("overlay", "heatmap", "markers", "contact_point")}


def test_a_camera_placeholder_without_cameras_is_refused(launch_file):
    with pytest.raises(ValueError, match=r"image_topic contain \{camera\} but no cameras are given"):
        _launch(launch_file, image_topic="/{camera}/color/image_raw")


@pytest.mark.parametrize("choice, already_set, applied", [
    ("auto", None, True), ("auto", "FASTDDS_DEFAULT_PROFILES_FILE", False),
    ("auto", "FASTRTPS_DEFAULT_PROFILES_FILE", False),
    ("true", "FASTDDS_DEFAULT_PROFILES_FILE", True), ("True", None, True), ("false", None, False)])
def test_fastdds_profile_keeps_a_profile_the_robot_already_has(launch_file, choice, already_set, applied):
    environment = {already_set: "/robot/fleet.xml"} if already_set else {}
    actions = _launch(launch_file, environment, use_fastdds_profile=choice)
    assert bool(actions.get("SetEnvironmentVariable")) == applied
    first = next(iter(actions))
    assert first == ("SetEnvironmentVariable" if applied else "Node")  # before the node starts


@pytest.mark.parametrize("distro, variable", [("kilted", "FASTDDS_DEFAULT_PROFILES_FILE"),
                                             ("", THIS_DISTRO_VARIABLE),
                                             ("jazzy", "FASTRTPS_DEFAULT_PROFILES_FILE"),
                                             ("humble", "FASTRTPS_DEFAULT_PROFILES_FILE")])
def test_fastdds_profile_variable_is_the_one_the_distros_fast_dds_reads(launch_file, distro, variable):
    """Fast DDS 3 (Kilted on) reads FASTDDS_DEFAULT_PROFILES_FILE, Fast DDS 2 (Humble, Jazzy) the older
    name; without ROS_DISTRO, the one of the installed rclpy's distro."""
    [profile] = _launch(launch_file, {"ROS_DISTRO": distro} if distro else {})["SetEnvironmentVariable"]
    assert profile.args[0] == variable


def test_fastdds_profile_argument_refuses_other_values(launch_file):
    with pytest.raises(ValueError, match="use_fastdds_profile must be auto, true or false"):
        _launch(launch_file, use_fastdds_profile="yes")


def test_managed_starts_the_lifecycle_node_and_autostart_configures_then_activates_it(launch_file):
    from lifecycle_msgs.msg import Transition

    unmanaged = _launch(launch_file, namespace="arm")
    actions = _launch(launch_file, namespace="arm", managed="true")
    assert "LifecycleNode" not in unmanaged and "EmitEvent" not in unmanaged
    [node] = actions["LifecycleNode"]
    [plain] = [n for n in unmanaged["Node"] if n.kwargs["executable"] == "grounding_node"]
    assert node.kwargs["executable"] == "managed_grounding_node"
    assert {k: v for k, v in node.kwargs.items() if k != "executable"} == \
        {k: v for k, v in plain.kwargs.items() if k != "executable"}  # the same name, parameters and topics
    [configure] = actions["EmitEvent"]
    assert configure.kwargs["event"].kwargs["transition_id"] == Transition.TRANSITION_CONFIGURE
    assert configure.kwargs["event"].kwargs["lifecycle_node_matcher"].args == (node,)
    [handler] = actions["RegisterEventHandler"]
    [on_configured] = handler.args
    # after configure succeeded only: a robot's later deactivate (active -> inactive) is left alone
    assert on_configured.kwargs["target_lifecycle_node"] is node
    assert (on_configured.kwargs["start_state"], on_configured.kwargs["goal_state"]) == ("configuring", "inactive")
    [activate] = on_configured.kwargs["entities"]
    assert activate.kwargs["event"].kwargs["transition_id"] == Transition.TRANSITION_ACTIVATE
    assert list(actions).index("RegisterEventHandler") < list(actions).index("EmitEvent")  # listening first

    left_to_the_robot = _launch(launch_file, managed="true", autostart="false")
    assert "LifecycleNode" in left_to_the_robot and "EmitEvent" not in left_to_the_robot
    assert "RegisterEventHandler" not in left_to_the_robot
    with pytest.raises(ValueError, match="managed must be true or false"):
        _launch(launch_file, managed="yes")


# --- config files ------------------------------------------------------------------------------

def test_yaml_defaults_equal_the_parameter_table():
    doc = yaml.safe_load((REPO / "config" / "grounding.yaml").read_text())
    values = doc["/**"]["ros__parameters"]
    assert set(values) == set(params.SPECS), f"only in the YAML: {set(values) - set(params.SPECS)}, " \
                                             f"only in the table: {set(params.SPECS) - set(values)}"
    for name, spec in params.SPECS.items():
        assert values[name] == spec.default and type(values[name]) is type(spec.default), \
            f"{name}: YAML {values[name]!r}, table {spec.default!r}"


def test_what_the_launch_file_imports_of_the_package_loads_no_torch():
    """`ros2 launch` imports the parameter table and the distro module: torch must not come with
    them (seconds of start-up and hundreds of MB in the launch process)."""
    imports = [n for n in ast.walk(ast.parse(LAUNCH.read_text())) if isinstance(n, ast.ImportFrom)
               and n.module.startswith("affordance_clip_ros")]
    assert imports
    code = "; ".join(f"import {n.module}" for n in imports) + "; import sys; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stdout + out.stderr


def test_launch_parameter_arguments_take_their_descriptions_from_the_parameter_table(launch_file):
    descriptions = {name: text for name, _, text in launch_file["ARGUMENTS"]}
    for name in launch_file["PARAMETER_ARGUMENTS"]:
        assert name in params.SPECS, f"launch argument {name} is not a parameter of the table"
        assert descriptions[name].startswith(params.SPECS[name].description), name


def test_settings_has_one_field_per_table_entry():
    names = [f.name for f in dataclasses.fields(params.Settings)]
    assert names == [spec.name for spec in params.PARAMS], \
        f"only in Settings: {set(names) - set(params.SPECS)}, only in the table: {set(params.SPECS) - set(names)}"


def test_parameter_descriptors():
    read_only = {spec.name for spec in params.PARAMS if spec.read_only}
    assert read_only == set(params.MODEL_PARAMS) | {"use_depth", "cameras", "image_qos", "image_transport",
                                                        "pipeline"}
    for spec in params.PARAMS:
        d = params.descriptor(spec)
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
