"""The colcon build of the package: generated messages, one importable copy, rclpy round trips.

Run through the ROS environment after `make build`:
    bash scripts/with_ros.sh .venv-kilted/bin/python -m pytest -q test/test_ros_build.py
Without an installed affordance_clip_ros on AMENT_PREFIX_PATH the module fails at collection with
that instruction, so a broken build can never pass as skipped tests.
"""
from __future__ import annotations

import filecmp
import os
import time
import uuid
import warnings
from pathlib import Path

import numpy as np
import pytest

PKG = "affordance_clip_ros"


def _abs(path) -> Path:
    """Absolute and normalised, symlinks kept: with `colcon build --symlink-install` the
    installed files are links into the source tree, and must still count as installed."""
    return Path(os.path.abspath(path))


REPO = _abs(__file__).parents[1]


def _installed_prefix() -> Path | None:
    """The prefix on AMENT_PREFIX_PATH that holds this package (as ament_index finds it)."""
    for prefix in filter(None, os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep)):
        if Path(prefix, "share", "ament_index", "resource_index", "packages", PKG).is_file():
            return _abs(prefix)
    return None


if _installed_prefix() is None:
    pytest.fail(f"{PKG} is not installed on AMENT_PREFIX_PATH: run `make build`, then the tests "
                "through scripts/with_ros.sh", pytrace=False)

import rclpy
from geometry_msgs.msg import Point
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import Image
from std_msgs.msg import Header

import affordance_clip_ros
from affordance_clip_ros import msg as pkg_msg
from affordance_clip_ros.msg import AffordanceMap, AffordanceResult, ContactPoint
from affordance_clip_ros.srv import Ground

# The messages and the service of docs/ros.md, in declaration order, as rosidl names the types.
EXPECTED_FIELDS = {
    ContactPoint: {"u": "float", "v": "float", "score": "float", "has_point": "boolean",
                   "point": "geometry_msgs/Point", "has_normal": "boolean", "normal": "geometry_msgs/Vector3"},
    AffordanceMap: {"prompt": "string", "heatmap": "sensor_msgs/Image", "scale": "float",
                    "peaks": "sequence<affordance_clip_ros/ContactPoint>"},
    AffordanceResult: {"header": "std_msgs/Header",
                       "maps": "sequence<affordance_clip_ros/AffordanceMap>",
                       "inference_ms": "float"},
    Ground.Request: {"prompts": "sequence<string>", "image": "sensor_msgs/Image", "depth": "sensor_msgs/Image",
                     "camera_info": "sensor_msgs/CameraInfo", "timeout_s": "float", "camera": "string"},
    Ground.Response: {"success": "boolean", "message": "string", "result": "affordance_clip_ros/AffordanceResult"},
}


# --- which copy is imported ------------------------------------------------------------------

def test_msg_resolves_from_the_colcon_install():
    prefix = _installed_prefix()
    msg_file = _abs(pkg_msg.__file__)
    assert msg_file.is_relative_to(prefix), f"{msg_file} is not under the install prefix {prefix}"
    assert not msg_file.is_relative_to(REPO / PKG), "msg resolved from the source tree"
    # the repository's own install/<distro>/ when run through scripts/with_ros.sh
    if prefix.is_relative_to(REPO):
        assert msg_file.is_relative_to(REPO / "install" / os.environ.get("ROS_DISTRO", "kilted"))


def test_package_and_msg_are_one_copy():
    pkg_dir = _abs(affordance_clip_ros.__file__).parent
    assert _abs(pkg_msg.__file__).parent.parent == pkg_dir
    assert [_abs(p) for p in affordance_clip_ros.__path__] == [pkg_dir]
    assert not pkg_dir.is_relative_to(REPO / PKG)
    # Subpackages come from the same directory too (no second copy on sys.path).
    import affordance_clip_ros.model as model
    assert _abs(model.__file__).parent.parent == pkg_dir


def test_install_is_a_current_copy_of_the_sources():
    """Our __init__.py replaced rosidl's empty one, and every source file that existed at the
    last build (JSON configs included) is installed and identical: the install rules miss
    nothing. Files changed after that build (colcon rewrites share/<pkg>/package.dsv at the end
    of every build) are only reported: run `make build` again to include them."""
    pkg_dir = _abs(affordance_clip_ros.__file__).parent
    stamp = _installed_prefix() / "share" / PKG / "package.dsv"
    built_at = stamp.stat().st_mtime if stamp.is_file() else float("inf")
    files = [p for p in (REPO / PKG).rglob("*")
             if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"]
    rel = [p.relative_to(REPO / PKG) for p in files]
    assert Path("__init__.py") in rel
    assert any(p.suffix == ".json" and p.parts[:2] == ("model", "configs") for p in rel)
    assert filecmp.cmp(REPO / PKG / "__init__.py", pkg_dir / "__init__.py", shallow=False), \
        "the installed __init__.py is not ours (rosidl's empty one won?)"
    newer = [str(r) for p, r in zip(files, rel) if p.stat().st_mtime > built_at]
    if newer:
        warnings.warn(f"changed since the last build, not checked (run make build): {newer}", stacklevel=2)
    checked = [r for p, r in zip(files, rel) if p.stat().st_mtime <= built_at]
    missing = [str(r) for r in checked if not (pkg_dir / r).is_file()]
    assert not missing, f"not installed: {missing}"
    differ = [str(r) for r in checked
              if not filecmp.cmp(REPO / PKG / r, pkg_dir / r, shallow=False)]
    assert not differ, f"installed copy differs from the source: {differ}"


def test_executables_installed():
    prefix = _installed_prefix()
    node, managed = prefix / "lib" / PKG / "grounding_node", prefix / "lib" / PKG / "managed_grounding_node"
    cli = prefix / "bin" / "affordance-clip"
    for exe in (node, managed, cli):
        assert exe.is_file() and os.access(exe, os.X_OK), exe
    assert "affordance_clip_ros.ros.executable import main" in node.read_text()
    assert "main(signals=SIGNALS, managed=True)" in managed.read_text()
    assert "affordance_clip_ros.cli" in cli.read_text()


# --- message definitions ---------------------------------------------------------------------

@pytest.mark.parametrize("msg_type", list(EXPECTED_FIELDS), ids=lambda t: t.__name__)
def test_fields_match_the_design(msg_type):
    assert msg_type.get_fields_and_field_types() == EXPECTED_FIELDS[msg_type]
    m = msg_type()  # constructs with defaults
    for name in EXPECTED_FIELDS[msg_type]:
        assert hasattr(m, name)


def test_constructors_and_type_checks():
    p = ContactPoint(u=12.5, v=3.0, score=0.75, has_point=True, point=Point(x=0.1, y=-0.2, z=0.9))
    assert (p.u, p.v, p.score, p.has_point) == (12.5, 3.0, 0.75, True)
    assert p.point.z == pytest.approx(0.9)
    assert ContactPoint().has_point is False
    # Field type checks (on in Kilted only with check_fields=True or ROS_PYTHON_CHECK_FIELDS=1).
    with pytest.raises(AssertionError):
        ContactPoint(u="left", check_fields=True)
    with pytest.raises(AssertionError):
        ContactPoint(score=1e39, check_fields=True)  # beyond float32
    with pytest.raises(AssertionError):
        ContactPoint(has_point=1, check_fields=True)
    with pytest.raises(AssertionError):
        ContactPoint(point=(0.0, 0.0, 0.0), check_fields=True)
    with pytest.raises(AssertionError):
        AffordanceMap(prompt=b"pour", check_fields=True)
    with pytest.raises(AssertionError):
        AffordanceMap(peaks=[Point()], check_fields=True)
    with pytest.raises(AssertionError):
        AffordanceResult(maps=[ContactPoint()], check_fields=True)
    with pytest.raises(AssertionError):
        AffordanceResult(inference_ms="fast", check_fields=True)
    r = AffordanceResult(inference_ms=1.5)
    assert isinstance(r.header, Header) and isinstance(r.maps, list)
    assert isinstance(AffordanceMap().heatmap, Image)


def _heatmap(h: int, w: int, seed: int) -> tuple[Image, np.ndarray]:
    values = np.random.default_rng(seed).random((h, w), dtype=np.float32)
    img = Image(height=h, width=w, encoding="32FC1", is_bigendian=0, step=w * 4,
                data=values.tobytes())
    return img, values


def _result(frame_id: str = "camera_color_optical_frame") -> tuple[AffordanceResult, list]:
    header = Header(frame_id=frame_id)
    header.stamp.sec, header.stamp.nanosec = 1_700_000_000, 123_456_789
    maps, arrays = [], []
    for i, prompt in enumerate(["cut with", "pour"]):
        img, values = _heatmap(48, 64, seed=i)
        img.header = header
        peaks = [ContactPoint(u=10.0 + i, v=20.0, score=0.875, has_point=True,
                              point=Point(x=0.01, y=0.02, z=0.5)),
                 ContactPoint(u=30.0, v=5.5, score=0.375, has_point=False)]
        maps.append(AffordanceMap(prompt=prompt, heatmap=img, peaks=peaks))
        arrays.append(values)
    return AffordanceResult(header=header, maps=maps, inference_ms=42.25), arrays


def _check_heatmaps(msg: AffordanceResult, arrays: list) -> None:
    for m, values in zip(msg.maps, arrays):
        got = np.frombuffer(bytes(m.heatmap.data), dtype=np.float32).reshape(
            m.heatmap.height, m.heatmap.width)
        np.testing.assert_array_equal(got, values)


def test_serialization_round_trip():
    result, arrays = _result()
    data = serialize_message(result)
    assert isinstance(data, bytes) and len(data) > 2 * 48 * 64 * 4
    back = deserialize_message(data, AffordanceResult)
    assert back == result
    assert [m.prompt for m in back.maps] == ["cut with", "pour"]
    assert back.maps[0].peaks[1].has_point is False
    assert back.header.stamp.nanosec == 123_456_789
    _check_heatmaps(back, arrays)


# --- publish / subscribe over Fast DDS -------------------------------------------------------

def test_publish_subscribe_between_two_nodes():
    assert os.environ.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp") == "rmw_fastrtps_cpp"
    context = rclpy.Context()
    rclpy.init(context=context)
    executor = SingleThreadedExecutor(context=context)
    nodes = []
    try:
        # A unique topic: other test runs may share this machine and domain.
        topic = f"/test_ros_build/result_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        talker = rclpy.create_node("affordance_result_talker", context=context)
        listener = rclpy.create_node("affordance_result_listener", context=context)
        nodes += [talker, listener]
        received: list[AffordanceResult] = []
        listener.create_subscription(AffordanceResult, topic, received.append, qos)
        pub = talker.create_publisher(AffordanceResult, topic, qos)
        executor.add_node(talker)
        executor.add_node(listener)
        from rclpy.utilities import get_rmw_implementation_identifier
        assert get_rmw_implementation_identifier() == "rmw_fastrtps_cpp"

        sent, arrays = _result()
        # Publish until one arrives (the first ones may precede discovery), bounded in time.
        deadline = time.monotonic() + 30.0
        next_publish = 0.0
        while not received and time.monotonic() < deadline:
            if time.monotonic() >= next_publish:
                pub.publish(sent)
                next_publish = time.monotonic() + 0.2
            executor.spin_once(timeout_sec=0.05)
        assert received, "no AffordanceResult received within 30 s"
        got = received[0]
        assert got == sent
        assert got.header.frame_id == "camera_color_optical_frame"
        _check_heatmaps(got, arrays)
    finally:
        executor.shutdown()
        for node in nodes:
            node.destroy_node()
        rclpy.shutdown(context=context)
