"""What differs between the ROS 2 distributions the package supports (Jazzy, Kilted), in one place.

Everything else in ``ros/`` is written once for both; a difference found later goes here, named
for what it is rather than for the release that has it.
"""
from __future__ import annotations

import os
from collections.abc import Mapping

try:  # Kilted and later: a TypedDict naming the keys rclpy passes to two-argument callbacks
    from rclpy.subscription import MessageInfo
except ImportError:  # Jazzy: the same keys in a plain dict (no publisher_gid)
    MessageInfo = dict  # type: ignore[misc,assignment]

#: Fast DDS 3 (Kilted and later) reads FASTDDS_DEFAULT_PROFILES_FILE, Fast DDS 2 (Humble, Iron,
#: Jazzy) only FASTRTPS_DEFAULT_PROFILES_FILE.
PROFILE_VARIABLES = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")
FAST_DDS_2_DISTROS = ("humble", "iron", "jazzy")


def ros_distro(environment: Mapping[str, str] | None = None) -> str:
    """The ROS 2 distribution in ``environment`` (default: this process's), lower case; '' if unset."""
    return (os.environ if environment is None else environment).get("ROS_DISTRO", "").strip().lower()


def fastdds_profile_variable(environment: Mapping[str, str] | None = None) -> str:
    """The environment variable through which this distribution's Fast DDS reads an XML profile.
    Without ROS_DISTRO the installed rclpy tells: MessageInfo came with Kilted, as Fast DDS 3 did."""
    distro = ros_distro(environment)
    fast_dds_2 = distro in FAST_DDS_2_DISTROS if distro else MessageInfo is dict
    return PROFILE_VARIABLES[fast_dds_2]


def fastdds_profile_set(environment: Mapping[str, str] | None = None) -> bool:
    """Whether ``environment`` already names a Fast DDS profile, under either variable."""
    environment = os.environ if environment is None else environment
    return any(environment.get(name) for name in PROFILE_VARIABLES)
