"""Start the affordance grounding node (and optionally RViz).

    ros2 launch affordance_clip_ros grounding.launch.py image_topic:=/camera/color/image_raw
    ros2 launch affordance_clip_ros grounding.launch.py use_depth:=true rviz:=true \\
        depth_topic:=/camera/aligned_depth_to_color/image_raw camera_info_topic:=/camera/color/camera_info
    ros2 topic pub --once /affordance/query std_msgs/msg/String "{data: 'cut with'}"

Parameters come from params_file (default: the package's config/grounding.yaml); the arguments
below override it. By default the node runs with the package's Fast DDS profile (shared memory
+ 4 MB UDP buffers, see config/fastdds_profile.xml) so best-effort camera images between
processes are not lost; use_fastdds_profile:=false keeps the environment's DDS configuration.
Give the camera driver the same FASTDDS_DEFAULT_PROFILES_FILE for shared memory on both sides.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

PACKAGE = "affordance_clip_ros"

# name, default, description (the single list of launch arguments)
ARGUMENTS = (
    ("image_topic", "/camera/color/image_raw", "colour image topic (rgb8, bgr8, rgba8, bgra8, mono8, mono16)"),
    ("depth_topic", "/camera/aligned_depth_to_color/image_raw",
     "depth registered to the colour image (16UC1 mm or 32FC1 m); used when use_depth is true"),
    ("camera_info_topic", "/camera/color/camera_info", "CameraInfo of the colour image; used when use_depth is true"),
    ("query_topic", "/affordance/query", "std_msgs/String prompts, several separated by ';'"),
    ("use_depth", "false", "publish 3D contact points and markers from depth + camera_info"),
    ("device", "auto", "auto (CUDA when present), cpu, cuda or cuda:N"),
    ("clip_pretrained", "openai", "CLIP weights: openai (from the cache), a file path, or none (random, tests)"),
    ("fpn_checkpoint", "", "trained FPN .safetensors; empty = training-free dense CLIP head"),
    ("params_file", PathJoinSubstitution([FindPackageShare(PACKAGE), "config", "grounding.yaml"]),
     "YAML parameter file loaded before the arguments above"),
    ("namespace", "", "namespace of the node (outputs are <namespace>/affordance_grounding/...)"),
    ("rviz", "false", "start RViz with config/grounding.rviz (overlay, heatmap, markers)"),
    ("use_fastdds_profile", "true", "run the node with config/fastdds_profile.xml (shared memory, big buffers)"),
)


def generate_launch_description() -> LaunchDescription:
    config = {name: LaunchConfiguration(name) for name, _, _ in ARGUMENTS}
    share = FindPackageShare(PACKAGE)
    fastdds_profile = PathJoinSubstitution([share, "config", "fastdds_profile.xml"])
    rviz_config = PathJoinSubstitution([share, "config", "grounding.rviz"])

    node = Node(
        package=PACKAGE,
        executable="grounding_node",
        name="affordance_grounding",
        namespace=config["namespace"],
        output="screen",
        emulate_tty=True,
        parameters=[
            config["params_file"],
            {
                "use_depth": ParameterValue(config["use_depth"], value_type=bool),
                "device": ParameterValue(config["device"], value_type=str),
                "clip_pretrained": ParameterValue(config["clip_pretrained"], value_type=str),
                "fpn_checkpoint": ParameterValue(config["fpn_checkpoint"], value_type=str),
            },
        ],
        remappings=[
            ("image", config["image_topic"]),
            ("depth", config["depth_topic"]),
            ("camera_info", config["camera_info_topic"]),
            ("/affordance/query", config["query_topic"]),
        ],
    )
    rviz = Node(
        package="rviz2",
        executable="rviz2",
        name="affordance_rviz",
        namespace=config["namespace"],
        arguments=["-d", rviz_config],
        condition=IfCondition(config["rviz"]),
        output="log",
    )
    return LaunchDescription([
        *[DeclareLaunchArgument(name, default_value=default, description=text) for name, default, text in ARGUMENTS],
        # Applies to the processes started after it (the node, RViz).
        SetEnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE", fastdds_profile,
                               condition=IfCondition(config["use_fastdds_profile"])),
        node,
        rviz,
    ])
