"""Test support (not part of the package): the installed node as a subprocess, domain ids, a
camera player, and real RGB-D data. Imported as ``support`` by the tests (pytest puts test/ on ``sys.path``) and by
scripts/ros_demo.py and benchmarks/ros_latency.py (which put it there themselves)."""
from affordance_clip_ros.ros.client import GroundingClient, use_fastdds_profile_here

from .camera_player import CameraPlayer
from .fixtures import (MOTORCYCLE_BASELINE_M, MOTORCYCLE_CX, MOTORCYCLE_CY, MOTORCYCLE_DOFFS, MOTORCYCLE_F,
                       motorcycle_point, motorcycle_rgbd, one_phrase_world_weights)
from .node_process import (NodeProcess, free_domain_id, installed_executable, installed_share, namespaced_client,
                           namespaced_remappings, ros_env)

__all__ = ["CameraPlayer", "MOTORCYCLE_BASELINE_M", "MOTORCYCLE_CX", "MOTORCYCLE_CY", "MOTORCYCLE_DOFFS",
           "MOTORCYCLE_F", "GroundingClient", "NodeProcess", "free_domain_id", "installed_executable",
           "installed_share", "motorcycle_point", "motorcycle_rgbd", "namespaced_client", "namespaced_remappings",
           "one_phrase_world_weights", "ros_env", "use_fastdds_profile_here"]
