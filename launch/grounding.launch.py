"""Start the affordance grounding node (and optionally RViz).

    ros2 launch affordance_clip_ros grounding.launch.py image_topic:=/camera/color/image_raw
    ros2 launch affordance_clip_ros grounding.launch.py use_depth:=true rviz:=true \\
        depth_topic:=/camera/aligned_depth_to_color/image_raw camera_info_topic:=/camera/color/camera_info
    ros2 topic pub --once /affordance/query std_msgs/msg/String "{data: 'cut with'}"
    ros2 launch affordance_clip_ros grounding.launch.py cameras:="[head, wrist]" \\
        image_topic:=/{camera}/color/image_raw     # one model, two cameras: /head/color/image_raw, ...
    ros2 launch affordance_clip_ros grounding.launch.py managed:=true autostart:=false  # a lifecycle manager drives it

managed: true starts managed_grounding_node, the lifecycle node; autostart (default true) takes it
through configure and activate at once, false leaves it unconfigured for the robot's lifecycle
manager (nav2_lifecycle_manager, `ros2 lifecycle set`).

Parameters come from params_file (default: the package's config/grounding.yaml). The arguments
use_depth, device, clip_pretrained and fpn_checkpoint override it only when given; left empty,
the file's values stand.

use_fastdds_profile: auto (default) runs the node with the package's Fast DDS profile (shared
memory + 4 MB UDP buffers, see config/fastdds_profile.xml), unless FASTDDS_DEFAULT_PROFILES_FILE
or FASTRTPS_DEFAULT_PROFILES_FILE is already set (a robot's own profile is kept); true always uses
the package's profile, false never. The variable set is FASTDDS_DEFAULT_PROFILES_FILE on Kilted
(Fast DDS 3) and FASTRTPS_DEFAULT_PROFILES_FILE on Jazzy (Fast DDS 2). Best-effort camera images
between processes arrive only when the camera driver has the profile too: give it the same
variable (docs/ros.md, "Camera QoS and DDS").

cameras ("[head, wrist]" or "head, wrist"): one node serves several cameras; camera N subscribes
N/image (N/depth, N/camera_info) and publishes under ~/N/. Then image_topic, depth_topic and
camera_info_topic apply to every camera when they contain {camera} (replaced by its name); without
it, camera N's topics stay <namespace>/N/image and so on.
"""
import os

from launch import LaunchDescription
from launch.actions import (DeclareLaunchArgument, EmitEvent, OpaqueFunction, RegisterEventHandler,
                            SetEnvironmentVariable)
from launch.conditions import IfCondition
from launch.events import matches_action
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode, Node
from launch_ros.descriptions import ParameterValue
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from launch_ros.substitutions import FindPackageShare
from lifecycle_msgs.msg import Transition

from affordance_clip_ros.parameter_table import SPECS
from affordance_clip_ros.ros.compat import fastdds_profile_set, fastdds_profile_variable

PACKAGE = "affordance_clip_ros"
RVIZ_OUTPUTS = ("overlay", "heatmap", "markers", "contact_point")  # the node's outputs config/grounding.rviz shows

# Parameters that a launch argument overrides in params_file when not empty (description and type: the table's).
PARAMETER_ARGUMENTS = ("use_depth", "device", "clip_pretrained", "fpn_checkpoint", "compile")
# name, default, description (the single list of launch arguments)
ARGUMENTS = (
    ("image_topic", "/camera/color/image_raw", "colour image topic (rgb8, bgr8, rgba8, bgra8, mono8, mono16)"),
    ("depth_topic", "/camera/aligned_depth_to_color/image_raw",
     "depth registered to the colour image (16UC1 mm or 32FC1 m); used when use_depth is true"),
    ("camera_info_topic", "/camera/color/camera_info", "CameraInfo of the colour image; used when use_depth is true"),
    ("query_topic", "/affordance/query", "std_msgs/String prompts, several separated by ';'"),
    *[(name, "", f"{SPECS[name].description} (empty: params_file's value)") for name in PARAMETER_ARGUMENTS],
    ("params_file", PathJoinSubstitution([FindPackageShare(PACKAGE), "config", "grounding.yaml"]),
     f"YAML parameter file; {', '.join(PARAMETER_ARGUMENTS)} override it when given"),
    ("namespace", "", "namespace of the node (outputs are <namespace>/affordance_grounding/...)"),
    ("rviz", "false", "start RViz with config/grounding.rviz (overlay, heatmap, markers; with cameras, the first "
     "camera's)"),
    ("cameras", "", "camera names for one node, '[head, wrist]' or 'head, wrist': camera N subscribes N/image "
     "(with use_depth N/depth, N/camera_info) and publishes under ~/N/; the topic arguments then apply per camera "
     "when they contain {camera} (empty: params_file's value, one camera)"),
    ("use_fastdds_profile", "auto", "run the node with config/fastdds_profile.xml (shared memory, big buffers): "
     "auto = unless the robot sets its own profile (FASTDDS_/FASTRTPS_DEFAULT_PROFILES_FILE), true, false"),
    ("managed", "false", "true: start managed_grounding_node, the lifecycle node (standard lifecycle services)"),
    ("autostart", "true", "with managed:=true: configure and activate the node at once; false: leave it "
     "unconfigured for the robot's lifecycle manager"),
)


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription([
        *[DeclareLaunchArgument(name, default_value=default, description=text) for name, default, text in ARGUMENTS],
        OpaqueFunction(function=_launch_setup),
    ])


def _launch_setup(context) -> list:
    """The actions, once the arguments' values are known."""
    value = {name: LaunchConfiguration(name).perform(context) for name, _, _ in ARGUMENTS}
    share = FindPackageShare(PACKAGE)
    # launch_ros converts a substitution to value_type, but takes a plain value only when it already has that type.
    overrides = {name: ParameterValue(LaunchConfiguration(name), value_type=type(SPECS[name].default))
                 for name in PARAMETER_ARGUMENTS if value[name]}
    managed, autostart = _boolean("managed", value["managed"]), _boolean("autostart", value["autostart"])
    cameras = _camera_names(value["cameras"])
    if cameras:
        overrides["cameras"] = cameras
    node = (LifecycleNode if managed else Node)(
        package=PACKAGE,
        executable="managed_grounding_node" if managed else "grounding_node",
        name="affordance_grounding",
        namespace=value["namespace"],
        output="screen",
        emulate_tty=True,
        parameters=[value["params_file"], overrides],
        remappings=[*_camera_remappings(value, cameras), ("/affordance/query", value["query_topic"])],
    )
    rviz = Node(
        package="rviz2",
        executable="rviz2",
        name="affordance_rviz",
        namespace=value["namespace"],
        arguments=["-d", PathJoinSubstitution([share, "config", "grounding.rviz"])],
        remappings=_rviz_remappings(cameras),
        condition=IfCondition(value["rviz"]),
        output="log",
    )
    environment = getattr(context, "environment", os.environ)  # launch < Humble: os.environ itself
    profile = []  # applies to the processes started after it (the node, RViz)
    if _use_package_profile(value["use_fastdds_profile"], fastdds_profile_set(environment)):
        variable = fastdds_profile_variable(environment)
        profile = [SetEnvironmentVariable(variable, PathJoinSubstitution([share, "config", "fastdds_profile.xml"]))]
    # RViz first: when it is missing, launch stops before starting the node
    return [*profile, rviz, node, *(_autostart(node) if managed and autostart else [])]


def _autostart(node) -> list:
    """Configure the lifecycle node, and activate it once that configure has succeeded (not after
    a later deactivate, which the robot asked for)."""
    def transition(transition_id: int) -> EmitEvent:
        return EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node), transition_id=transition_id))
    activate = RegisterEventHandler(OnStateTransition(target_lifecycle_node=node, start_state="configuring",
                                                      goal_state="inactive",
                                                      entities=[transition(Transition.TRANSITION_ACTIVATE)]))
    return [activate, transition(Transition.TRANSITION_CONFIGURE)]


def _boolean(name: str, text: str) -> bool:
    if text.lower() not in ("true", "false"):
        raise ValueError(f"{name} must be true or false, got '{text}'")
    return text.lower() == "true"


def _camera_names(text: str) -> list[str]:
    """'[head, wrist]', 'head, wrist' or 'head' -> ['head', 'wrist']; '' -> []."""
    return [name.strip().strip("'\"") for name in text.strip().strip("[]").split(",") if name.strip()]


def _rviz_remappings(cameras: list[str]) -> list[tuple[str, str]]:
    """With several cameras, RViz's displays (config/grounding.rviz) show the first camera's outputs."""
    if not cameras:
        return []
    return [(f"affordance_grounding/{output}", f"affordance_grounding/{cameras[0]}/{output}")
            for output in RVIZ_OUTPUTS]


def _camera_remappings(value: dict[str, str], cameras: list[str]) -> list[tuple[str, str]]:
    """The node's camera topics -> the topic arguments: for one camera as given; for several, per
    camera where an argument holds {camera}."""
    roles = {"image": value["image_topic"], "depth": value["depth_topic"], "camera_info": value["camera_info_topic"]}
    if not cameras:
        if templated := [f"{role}_topic" for role, topic in roles.items() if "{camera}" in topic]:
            raise ValueError(f"{', '.join(templated)} contain {{camera}} but no cameras are given; set cameras, "
                             "e.g. cameras:=\"[head, wrist]\"")
        return list(roles.items())
    return [(f"{name}/{role}", topic.replace("{camera}", name))
            for name in cameras for role, topic in roles.items() if "{camera}" in topic]


def _use_package_profile(choice: str, already_set: bool) -> bool:
    choice = choice.lower()
    if choice not in ("auto", "true", "false"):
        raise ValueError(f"use_fastdds_profile must be auto, true or false, got '{choice}'")
    return choice == "true" or (choice == "auto" and not already_set)
