"""Start the affordance grounding node (and optionally RViz).

    ros2 launch affordance_clip_ros grounding.launch.py image_topic:=/camera/color/image_raw
    ros2 launch affordance_clip_ros grounding.launch.py use_depth:=true rviz:=true \\
        depth_topic:=/camera/aligned_depth_to_color/image_raw camera_info_topic:=/camera/color/camera_info
    ros2 topic pub --once /affordance/query std_msgs/msg/String "{data: 'cut with'}"

Parameters come from params_file (default: the package's config/grounding.yaml). The arguments
use_depth, device, clip_pretrained and fpn_checkpoint override it only when given; left empty,
the file's values stand.

use_fastdds_profile: auto (default) runs the node with the package's Fast DDS profile (shared
memory + 4 MB UDP buffers, see config/fastdds_profile.xml), so best-effort camera images between
processes are not lost, unless FASTDDS_DEFAULT_PROFILES_FILE or FASTRTPS_DEFAULT_PROFILES_FILE
is already set (a robot's own profile is kept); true always uses the package's profile, false
never. On Humble and Jazzy (Fast DDS 2) the variable set is FASTRTPS_DEFAULT_PROFILES_FILE. Give the camera driver
the same FASTDDS_DEFAULT_PROFILES_FILE for shared memory on both sides.
"""
import os

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

from affordance_clip_ros.ros.compat import fastdds_profile_set, fastdds_profile_variable

PACKAGE = "affordance_clip_ros"

# name, default, description (the single list of launch arguments)
ARGUMENTS = (
    ("image_topic", "/camera/color/image_raw", "colour image topic (rgb8, bgr8, rgba8, bgra8, mono8, mono16)"),
    ("depth_topic", "/camera/aligned_depth_to_color/image_raw",
     "depth registered to the colour image (16UC1 mm or 32FC1 m); used when use_depth is true"),
    ("camera_info_topic", "/camera/color/camera_info", "CameraInfo of the colour image; used when use_depth is true"),
    ("query_topic", "/affordance/query", "std_msgs/String prompts, several separated by ';'"),
    ("use_depth", "", "true: publish 3D contact points and markers from depth + camera_info "
     "(empty: params_file's value)"),
    ("device", "", "auto (CUDA when present), cpu, cuda or cuda:N (empty: params_file's value)"),
    ("clip_pretrained", "", "CLIP weights: openai (from the cache), a file path, or none (random, tests) "
     "(empty: params_file's value)"),
    ("fpn_checkpoint", "", "trained FPN .safetensors (empty: params_file's value; the packaged file has none, "
     "which means the training-free dense CLIP head)"),
    ("compile", "", "how the image path runs: auto (CUDA graphs on a GPU, recorded at start-up, no compiler), off, "
     "cuda-graphs, or torch.compile: default, reduce-overhead, max-autotune (empty: params_file's value)"),
    ("params_file", PathJoinSubstitution([FindPackageShare(PACKAGE), "config", "grounding.yaml"]),
     "YAML parameter file; use_depth, device, clip_pretrained, fpn_checkpoint and compile override it when given"),
    ("namespace", "", "namespace of the node (outputs are <namespace>/affordance_grounding/...)"),
    ("rviz", "false", "start RViz with config/grounding.rviz (overlay, heatmap, markers)"),
    ("use_fastdds_profile", "auto", "run the node with config/fastdds_profile.xml (shared memory, big buffers): "
     "auto = unless FASTDDS_DEFAULT_PROFILES_FILE is set, true, false"),
)
# Arguments that override params_file when not empty, with their parameter types.
PARAMETER_ARGUMENTS = {"use_depth": bool, "device": str, "clip_pretrained": str, "fpn_checkpoint": str, "compile": str}


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
    overrides = {name: ParameterValue(LaunchConfiguration(name), value_type=kind)
                 for name, kind in PARAMETER_ARGUMENTS.items() if value[name]}
    node = Node(
        package=PACKAGE,
        executable="grounding_node",
        name="affordance_grounding",
        namespace=value["namespace"],
        output="screen",
        emulate_tty=True,
        parameters=[value["params_file"], overrides],
        remappings=[
            ("image", value["image_topic"]),
            ("depth", value["depth_topic"]),
            ("camera_info", value["camera_info_topic"]),
            ("/affordance/query", value["query_topic"]),
        ],
    )
    rviz = Node(
        package="rviz2",
        executable="rviz2",
        name="affordance_rviz",
        namespace=value["namespace"],
        arguments=["-d", PathJoinSubstitution([share, "config", "grounding.rviz"])],
        condition=IfCondition(value["rviz"]),
        output="log",
    )
    environment = getattr(context, "environment", os.environ)  # launch < Humble: os.environ itself
    profile = []  # applies to the processes started after it (the node, RViz)
    if _use_package_profile(value["use_fastdds_profile"], fastdds_profile_set(environment)):
        variable = fastdds_profile_variable(environment)
        profile = [SetEnvironmentVariable(variable, PathJoinSubstitution([share, "config", "fastdds_profile.xml"]))]
    return [*profile, rviz, node]  # RViz first: when it is missing, launch stops before starting the node


def _use_package_profile(choice: str, already_set: bool) -> bool:
    choice = choice.lower()
    if choice not in ("auto", "true", "false"):
        raise ValueError(f"use_fastdds_profile must be auto, true or false, got '{choice}'")
    return choice == "true" or (choice == "auto" and not already_set)
