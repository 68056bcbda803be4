"""What a grasp planner uses, against the installed node over real rclpy / Fast DDS (CPU, tiny
CLIP): the ~/ground service (own prompts, given image or next camera frame, several clients at
once, bad requests, the stream not starved), contact poses with surface normals on the real
Motorcycle RGB-D frame (~/result, ~/contact_poses, ~/markers), reduced and mono8 maps in
~/result, and no contact point where nothing in view matches the prompt.

    make build && bash scripts/with_ros.sh .venv-kilted/bin/python -m pytest -q test/test_ros_planner.py
"""
from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="needs the ROS 2 environment (scripts/with_ros.sh)")

import skimage.data
from rclpy.qos import ReliabilityPolicy
from rclpy.serialization import serialize_message
from scipy.spatial.transform import Rotation
from std_msgs.msg import Header
from visualization_msgs.msg import Marker

import support
from affordance_clip_ros.model import find_peaks
from affordance_clip_ros.ros.conversions import image_to_numpy, numpy_to_image
from affordance_clip_ros.ros.frames import stamp_ns
from affordance_clip_ros.ros.messages import approach_quaternion, contact_poses, heatmap_image
from affordance_clip_ros.ros.result_messages import reduce_heatmap

if not support.installed_executable().is_file():
    pytest.fail("grounding_node is not installed: run `make build`", pytrace=False)
support.use_fastdds_profile_here()

TINY = {"clip_model": "RN-tiny", "clip_pretrained": "none", "device": "cpu"}
STREAM_PROMPTS = "drink with"


def start(tag: str, salt: int, log_path, **parameters):
    domain = support.free_domain_id(salt)
    ns = f"/t{os.getpid()}_{tag}"
    node = support.NodeProcess({**TINY, "image_qos": "auto", **parameters}, namespace=ns,
                               remappings=support.namespaced_remappings(ns), env=support.ros_env(domain),
                               params_file=support.installed_share() / "config" / "grounding.yaml",
                               log_path=log_path).start()
    return node, support.namespaced_client(ns, domain)


@pytest.fixture(scope="module")
def coffee() -> np.ndarray:
    return skimage.data.coffee()


@pytest.fixture(scope="module")
def motorcycle():
    return support.motorcycle_rgbd()


@pytest.fixture(scope="module")
def grounding(coffee, tmp_path_factory):
    node, client = start("planner", 3, tmp_path_factory.mktemp("planner") / "node.log", use_depth=True,
                         prompts=STREAM_PROMPTS, max_depth_age=0.05, peak_threshold=0.0)
    try:
        got = client.stream_until(lambda: client.results and client.node_subscription_reliability()
                                  == ReliabilityPolicy.RELIABLE, coffee, timeout=90.0)
        assert got, f"node never answered; its log:\n{node.log()}"
        assert client.ground_client.wait_for_service(timeout_sec=10.0), node.log()
        yield node, client
    finally:
        client.close()
        node.stop()


class Stream:
    """Publish a camera frame (with depth and CameraInfo when given) every ``period`` s on a thread."""

    def __init__(self, client, rgb, depth=None, info=None, period: float = 0.1, frame_id: str = "camera_optical_frame"):
        self.client, self.args, self.period, self.frame_id = client, (rgb, depth, info), period, frame_id
        self.headers: list = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.headers.append(self.client.publish_frame(*self.args, frame_id=self.frame_id))
            self._stop.wait(self.period)

    def __enter__(self) -> "Stream":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(2.0)


# --- ~/ground ---------------------------------------------------------------------------------

def test_ground_a_given_image_with_its_own_prompts_leaves_the_stream_prompts(grounding, coffee):
    node, client = grounding
    header = client.header(frame_id="request_frame")
    response = client.ground(["cut with", "hold", "pour"], image=numpy_to_image(coffee, "rgb8", header))
    assert response.success, response.message
    result = response.result
    assert [m.prompt for m in result.maps] == ["cut with", "hold", "pour"]
    assert result.header == header and result.inference_ms > 0
    for m in result.maps:
        assert (m.heatmap.height, m.heatmap.width, m.heatmap.encoding, m.scale) == (400, 600, "32FC1", 1.0)
        assert m.heatmap.header == header
    assert client.get_parameters("prompts") == {"prompts": STREAM_PROMPTS}
    client.clear()
    streamed = client.stream_until(lambda: list(client.results), coffee, timeout=30.0)
    assert streamed and streamed[0].maps[0].prompt == STREAM_PROMPTS  # the stream goes on with its prompts


def test_ground_the_next_camera_frame_with_its_depth_gives_normals(grounding, motorcycle):
    node, client = grounding
    rgb, depth, info = motorcycle
    asked_ns = client.node.get_clock().now().nanoseconds
    with Stream(client, rgb, (depth, "32FC1"), info, frame_id="motorcycle_frame"):
        response = client.ground(["sit on", "hold"], timeout=20.0)
    assert response.success, response.message
    result = response.result
    assert result.header.frame_id == "motorcycle_frame" and stamp_ns(result.header.stamp) >= asked_ns
    peaks = [p for m in result.maps for p in m.peaks]
    assert peaks and all(p.has_point for p in peaks), response.message
    assert_unit_normals_facing_the_camera(peaks)


def assert_unit_normals_facing_the_camera(peaks) -> None:
    with_normal = [p for p in peaks if p.has_normal]
    assert len(with_normal) >= 0.8 * len(peaks)
    for p in with_normal:
        n = np.array([p.normal.x, p.normal.y, p.normal.z])
        assert abs(np.linalg.norm(n) - 1.0) < 1e-5
        assert n @ np.array([p.point.x, p.point.y, p.point.z]) < 0


def test_several_clients_at_once_each_get_their_own_answer(grounding, coffee):
    node, client = grounding
    others = [support.namespaced_client(client.namespace, client.context.get_domain_id(), outputs=(),
                                        node_name=f"planner_{i}") for i in range(3)]
    try:
        askers = [client, *others]
        prompts = [[f"prompt {i}", f"other {i}"] for i in range(len(askers))]
        with ThreadPoolExecutor(len(askers)) as pool:
            responses = list(pool.map(lambda a, p: a.ground(p, image=coffee, timeout=30.0), askers, prompts))
    finally:
        for other in others:
            other.close()
    for response, asked in zip(responses, prompts):
        assert response.success, response.message
        assert [m.prompt for m in response.result.maps] == asked


@pytest.mark.parametrize("case, expected", [
    ("no prompts", "prompts: empty"),
    ("blank prompt", "prompts: prompt 1 is empty"),
    ("bad encoding", "image: "),
    ("short data", "image: "),
    ("unknown camera", "camera: 'left'"),
    ("depth of another size", "depth: "),
    ("depth without image", "depth: given without an image"),
    ("camera_info without image", "camera_info: given without an image"),
    ("negative timeout", "timeout_s"),
])
def test_bad_requests_get_a_reason_and_the_node_goes_on(grounding, coffee, case, expected):
    node, client = grounding
    image = numpy_to_image(coffee, "rgb8", client.header())
    prompts, kwargs = ["cut with"], {"image": image}
    if case == "no prompts":
        prompts = []
    elif case == "blank prompt":
        prompts = ["cut with", "  "]
    elif case == "bad encoding":
        image.encoding = "yuv422_funny"
    elif case == "short data":
        image.data = bytes(image.data[:100])
    elif case == "depth of another size":
        kwargs.update(depth=np.ones((10, 10), np.float32), camera_info=support.motorcycle_rgbd()[2])
    elif case == "depth without image":
        kwargs = {"depth": numpy_to_image(np.ones((4, 4), np.float32), "32FC1", client.header())}
    elif case == "camera_info without image":
        kwargs = {"camera_info": support.motorcycle_rgbd()[2]}
    response = (client.ground(prompts, timeout=-1.0, **kwargs) if case == "negative timeout"
                else client.ground(prompts, camera="left", **kwargs) if case == "unknown camera"
                else client.ground(prompts, **kwargs))
    assert not response.success and expected in response.message, response.message
    assert node.running
    assert client.ground(["hold"], image=coffee).success


def test_no_camera_frame_before_the_timeout(grounding):
    node, client = grounding
    start = time.monotonic()
    response = client.ground(["hold"], timeout=0.5)
    assert not response.success and "no camera frame on" in response.message, response.message
    assert 0.4 < time.monotonic() - start < 3.0 and node.running


def test_requests_do_not_starve_the_stream(grounding, coffee):
    """While two clients ask back to back, the stream goes on: frames and requests take turns."""
    node, client = grounding
    client.set_parameters(peak_threshold=0.3)
    with Stream(client, coffee, period=0.05, frame_id="busy_stream"):
        client.wait_for(lambda: any(r.header.frame_id == "busy_stream" for r in client.results), 10.0)
        with client.lock:
            before = len(client.results)
        with ThreadPoolExecutor(2) as pool:
            served = sum(pool.map(lambda _: sum(client.ground(["pour"], image=coffee).success for _ in range(4)),
                                  range(2)))
        with client.lock:
            streamed = len(client.results) - before
    client.set_parameters(peak_threshold=0.0)
    assert served == 8
    assert streamed >= served // 2, f"{streamed} stream results while {served} requests were served"


# --- contact poses, normals, markers ------------------------------------------------------------

def test_motorcycle_stream_contact_poses_normals_and_arrows(grounding, motorcycle):
    node, client = grounding
    rgb, depth, info = motorcycle
    client.set_parameters(prompts="sit on; hold")
    try:
        def complete():
            for r in client.results:
                if r.header.frame_id == "moto_stream" and r.maps[0].prompt == "sit on" and \
                        any(p.header.stamp == r.header.stamp for p in client.poses) and \
                        any(m.markers and m.markers[0].header.stamp == r.header.stamp for m in client.markers):
                    return r
            return None
        client.clear()
        result = client.stream_until(complete, rgb, timeout=60.0, depth=(depth, "32FC1"), info=info,
                                     frame_id="moto_stream")
        assert result, node.log()
        with client.lock:
            poses = next(p for p in client.poses if p.header.stamp == result.header.stamp)
            markers = next(m for m in client.markers if m.markers and m.markers[0].header.stamp == result.header.stamp)
    finally:
        client.set_parameters(prompts=STREAM_PROMPTS)
    first = [p for p in result.maps[0].peaks if p.has_point]
    assert first and poses.header == result.header
    assert_unit_normals_facing_the_camera([p for m in result.maps for p in m.peaks if p.has_point])
    assert len(poses.poses) == len(first)  # one pose per 3D peak of the first prompt, best first
    for peak, pose in zip(first, poses.poses):
        assert (pose.position.x, pose.position.y, pose.position.z) == (peak.point.x, peak.point.y, peak.point.z)
        q = pose.orientation
        z_axis = Rotation.from_quat([q.x, q.y, q.z, q.w]).as_matrix()[:, 2]
        if peak.has_normal:
            np.testing.assert_allclose(z_axis, [-peak.normal.x, -peak.normal.y, -peak.normal.z], atol=1e-5)
    arrows = [m for m in markers.markers if m.action == Marker.ADD and m.type == Marker.ARROW]
    assert len(arrows) == sum(p.has_normal for m in result.maps for p in m.peaks)
    for arrow in arrows:
        assert arrow.ns.endswith("/approach") and len(arrow.points) == 2
        tip, tail = arrow.points[1], arrow.points[0]
        peak = next(p for m in result.maps for p in m.peaks if p.has_normal and p.point == tip)
        direction = np.array([tip.x - tail.x, tip.y - tail.y, tip.z - tail.z])
        np.testing.assert_allclose(direction / np.linalg.norm(direction),
                                   [-peak.normal.x, -peak.normal.y, -peak.normal.z], atol=1e-5)


def test_depth_holes_give_points_without_normals_and_no_crash(grounding, motorcycle):
    """Depth on every 4th pixel only: a 51-pixel median still finds depth, a 3-pixel plane fit
    never has enough; the peaks come with points and without normals, the poses along the ray."""
    node, client = grounding
    rgb, depth, info = motorcycle
    holes = np.full_like(depth, np.nan)
    holes[::4, ::4] = depth[::4, ::4]
    client.set_parameters(depth_window=51, normal_window=3)
    try:
        response = client.ground(["sit on"], image=rgb, depth=holes, camera_info=info, timeout=20.0)
    finally:
        client.set_parameters(depth_window=5, normal_window=15)
    assert response.success, response.message
    peaks = response.result.maps[0].peaks
    assert peaks and all(p.has_point and not p.has_normal for p in peaks)
    assert all((p.normal.x, p.normal.y, p.normal.z) == (0.0, 0.0, 0.0) for p in peaks)
    assert node.running


def test_poses_without_normal_approach_along_the_viewing_ray():
    point = (0.3, -0.2, 1.5)
    poses = contact_poses(Header(frame_id="camera_optical_frame"), [[point, None]], [[None]]).poses
    q = poses[0].orientation
    z_axis = Rotation.from_quat([q.x, q.y, q.z, q.w]).as_matrix()[:, 2]
    np.testing.assert_allclose(z_axis, np.array(point) / np.linalg.norm(point), atol=1e-9)
    for approach in [(0, 0, 1), (0, 1, 0), (0, -1, 0), (0.3, -0.8, 0.2)]:  # along y too: still a rotation
        q = approach_quaternion(approach)
        matrix = Rotation.from_quat([q.x, q.y, q.z, q.w]).as_matrix()
        np.testing.assert_allclose(matrix[:, 2], np.array(approach) / np.linalg.norm(approach), atol=1e-9)


# --- lighter results ---------------------------------------------------------------------------

def result_heatmap(heatmap, header, **kw):
    """A map as ~/result carries it: (Image, scale)."""
    array, scale = reduce_heatmap(heatmap, **kw)
    return heatmap_image(array, header), scale


def test_result_heatmap_scale_and_mono8():
    heatmap = np.linspace(0, 1, 480 * 640, dtype=np.float32).reshape(480, 640)
    header = Header(frame_id="camera_optical_frame")
    full, scale = result_heatmap(heatmap, header)
    assert (full.width, full.height, full.encoding, scale) == (640, 480, "32FC1", 1.0)
    small, scale = result_heatmap(heatmap, header, max_side=160, encoding="mono8")
    assert (small.width, small.height, small.encoding, scale) == (160, 120, "mono8", 0.25)
    values = image_to_numpy(small)
    assert values.dtype == np.uint8 and abs(int(values[60, 80]) - round(255 * heatmap[240, 320])) <= 2
    same, scale = result_heatmap(heatmap, header, max_side=2000)  # never enlarged
    assert (same.width, scale) == (640, 1.0)


def test_reduced_mono8_result_keeps_full_resolution_peaks(grounding, coffee):
    node, client = grounding
    client.set_parameters(result_max_side=150, result_encoding="mono8")
    try:
        def matched():
            for r in client.results:
                if r.header.frame_id == "light" and r.maps[0].heatmap.encoding == "mono8":
                    h = next((h for h in client.heatmaps if h.header.stamp == r.header.stamp), None)
                    if h is not None:
                        return r, h
            return None
        client.clear()
        got = client.stream_until(matched, coffee, timeout=30.0, frame_id="light")
    finally:
        client.set_parameters(result_max_side=0, result_encoding="32FC1")
    assert got, node.log()
    result, full = got
    m = result.maps[0]
    assert (m.heatmap.width, m.heatmap.height, m.scale) == (150, 100, pytest.approx(0.25))
    full_map = image_to_numpy(full)  # ~/heatmap stays at full resolution, float
    assert full_map.shape == (400, 600)
    assert m.peaks and [(p.u, p.v) for p in m.peaks] == [(p.u, p.v) for p in find_peaks(full_map, 5, 0.0, 20)]
    assert max(abs(p.score - full_map[int(p.v), int(p.u)]) for p in m.peaks) < 1e-6


def test_result_sizes_shrink(coffee):
    """640x480 maps of 16 prompts: the message sizes the parameters give (bytes, serialized)."""
    from affordance_clip_ros.msg import AffordanceMap, AffordanceResult
    heatmap = np.random.default_rng(0).random((480, 640), dtype=np.float32)
    header = Header(frame_id="camera_optical_frame")

    def size(**kw) -> int:
        image, scale = result_heatmap(heatmap, header, **kw)
        return len(serialize_message(AffordanceResult(maps=[AffordanceMap(heatmap=image, scale=scale)] * 16)))
    full, mono, small = size(), size(encoding="mono8"), size(max_side=160, encoding="mono8")
    assert full > 16 * 640 * 480 * 4 and mono < full / 3.9 and small < full / 60


# --- nothing matches -----------------------------------------------------------------------------

def test_no_contact_point_where_nothing_matches(tmp_path, coffee):
    """A model to which every image shows a wall: streaming "cut with" over DDS publishes results
    with no contact point at the default threshold, and ~/ground answers the same."""
    weights = support.one_phrase_world_weights(tmp_path / "wall_world.safetensors", "wall")
    node, client = start("wall", 4, tmp_path / "node.log", clip_pretrained=str(weights), prompts="cut with; hold")
    try:
        results = client.stream_until(lambda: len(client.results) >= 3 and client.results, coffee, timeout=90.0)
        assert results, node.log()
        for result in results:
            assert [m.peaks for m in result.maps] == [[], []]
            assert image_to_numpy(result.maps[0].heatmap).max() < 0.3
        response = client.ground(["cut with", "pour", "wall"], image=coffee)
        assert response.success and [len(m.peaks) > 0 for m in response.result.maps] == [False, False, True]
    finally:
        client.close()
        node.stop()

