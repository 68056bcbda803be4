"""Reliability of the grounding node (issue #7): bad images, bad depth and camera info, bad
prompts, floods, exceptions inside inference, signals, start-up errors. Each against the
running installed node (tiny random CLIP on CPU), plus the pure helpers they rely on.

    make build && bash scripts/with_ros.sh .venv-kilted/bin/python -m pytest -q test/test_ros_robustness.py

Run with -s to see the measured memory (VmRSS) of the node before and after the flood.
"""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from unittest import mock

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="needs the ROS 2 environment (scripts/with_ros.sh)")

import cv2
import skimage.data
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header
from visualization_msgs.msg import Marker

from affordance_clip_ros.model.grounder import AffordancePrediction
from affordance_clip_ros.model.peaks import Peak
import support
from affordance_clip_ros.ros.frames import DepthBuffer, Frame, LatestSlot, ThrottledLog
from affordance_clip_ros.ros.messages import marker_array, result_message
from affordance_clip_ros.ros.queries import MAX_PROMPT_CHARS, MAX_PROMPTS, NewestQueries, parse_prompts

if not support.installed_executable().is_file():
    pytest.fail("grounding_node is not installed: run `make build`", pytrace=False)
# This process talks to the node with the same Fast DDS profile the launch file gives the node.
# Set at import (collection), before any test creates a participant: Fast DDS reads it once.
support.use_fastdds_profile_here()

TINY = {"clip_model": "RN-tiny", "clip_pretrained": "none", "device": "cpu"}
TEXT_CACHE = 32


# --- pure helpers ----------------------------------------------------------------------------

def test_parse_prompts():
    assert parse_prompts(" cut with ;pour;; cut  with ;") == (("cut with", "pour"), ())
    assert parse_prompts("") == ((), ()) and parse_prompts(" ; \t ;\n") == ((), ())
    long = parse_prompts("x" * 10_000)
    assert len(long.prompts[0]) == MAX_PROMPT_CHARS and long.notes
    many = parse_prompts(";".join(f"p{i}" for i in range(40)))
    assert len(many.prompts) == MAX_PROMPTS and many.notes
    assert parse_prompts("verser le café ☕; 掴む").prompts == ("verser le café ☕", "掴む")


def test_query_messages_are_taken_once_and_only_when_newer_than_the_last_from_their_publisher():
    queries = NewestQueries()
    a1 = {"publisher_gid": {"data": [1]}, "publication_sequence_number": 1, "source_timestamp": 100}
    a2 = {**a1, "publication_sequence_number": 2, "source_timestamp": 200}
    b1 = {"publisher_gid": {"data": [2]}, "publication_sequence_number": 1, "source_timestamp": 150}
    assert queries.take(a1) and queries.take(a2)
    assert not queries.take(a2) and not queries.take(a1)  # the copy through the other subscription; an older one
    assert queries.take(b1)  # another publisher counts on its own
    old_rclpy = NewestQueries()  # no publisher ids: ordered by the time they were sent
    x, y = {"source_timestamp": 100}, {"source_timestamp": 300}
    assert old_rclpy.take(x) and old_rclpy.take(y) and not old_rclpy.take(y) and not old_rclpy.take(x)
    assert old_rclpy.take({"publisher_gid": None, "publication_sequence_number": 1, "source_timestamp": 400})


def test_latest_slot_keeps_the_newest_and_never_blocks_put():
    slot = LatestSlot()
    replaced = [slot.put(Frame(i, 0.0)) for i in range(5)]
    assert replaced == [False, True, True, True, True]
    assert [f.msg for f in slot.take(0)] == [4] and slot.take(0.01) is None
    taken = []
    worker = threading.Thread(target=lambda: taken.append(slot.take()))
    worker.start()
    slot.put(Frame("x", 0.0))
    worker.join(2)
    assert [f.msg for f in taken[0]] == ["x"]
    slot.close()
    assert slot.take() is None


def test_latest_slot_keeps_the_newest_of_each_camera_and_hands_them_out_as_one_batch():
    """A camera at 100 Hz only replaces its own frame: the slow camera's waits for the next batch."""
    slot = LatestSlot()
    assert slot.put(Frame("wrist 0", 0.0, "wrist")) is False
    assert [slot.put(Frame(f"head {i}", 0.0, "head")) for i in range(20)] == [False] + [True] * 19
    assert [(f.camera, f.msg) for f in slot.take(0)] == [("wrist", "wrist 0"), ("head", "head 19")]
    slot.put(Frame("head 20", 0.0, "head"))
    assert [f.msg for f in slot.take(0)] == ["head 20"] and slot.take(0.01) is None


def test_latest_slot_takes_frames_and_requests_in_turn_and_rate_limits_frames_only():
    slot = LatestSlot()
    for i in range(3):
        slot.put_request(f"r{i}")
    slot.put(Frame("f0", 0.0))
    assert [item[0].msg if isinstance(item, list) else item for item in (slot.take(0), slot.take(0))] == ["r0", "f0"]
    slot.put(Frame("f1", 0.0))
    later = time.monotonic() + 0.3
    assert slot.take(0, frames_from=later) == "r1"  # the frame waits for its turn, a request does not
    assert slot.take(0, frames_from=later) == "r2"
    start = time.monotonic()
    assert slot.take(1.0, frames_from=later)[0].msg == "f1" and time.monotonic() >= later > start


def _depth_msg(stamp_ns: int) -> Image:
    msg = Image()
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 10**9)
    return msg


def test_depth_buffer_nearest_within_age_and_waits_for_a_late_one():
    buffer = DepthBuffer(max_items=3)
    for t in (1_000, 2_000, 3_000):
        buffer.add(_depth_msg(t * 10**6))
    assert buffer.nearest(2_100 * 10**6, 0.2).header.stamp.sec == 2
    assert buffer.nearest(2_500 * 10**6, 0.1) is None  # nearest is 0.5 s away
    assert buffer.nearest(900 * 10**6, 0.2) is None  # 1 s was dropped by the lookup at 2.1 s
    # The colour image is newer than all depth images: wait briefly for its depth twin.
    threading.Timer(0.1, lambda: buffer.add(_depth_msg(5_000 * 10**6))).start()
    start = time.monotonic()
    assert buffer.nearest(5_000 * 10**6, 0.01, wait_s=2.0).header.stamp.sec == 5
    assert time.monotonic() - start < 1.5


def test_depth_buffer_keeps_what_a_waiting_frame_needs_however_fast_depth_streams():
    """Kept until a lookup makes them too old, not by arrival: 30 later depth images do not push
    out the one a frame waiting for the model needs; each lookup drops what no later frame can use."""
    buffer = DepthBuffer()
    for k in range(31):
        buffer.add(_depth_msg((1_000 + k) * 10**6))
    assert buffer.nearest(1_000 * 10**6, 0.1).header.stamp.nanosec == 0  # still the exact twin
    assert len(buffer) == 31  # none is older than 1.000 s - 0.1 s
    assert buffer.nearest(1_125 * 10**6, 0.1).header.stamp.nanosec == 30 * 10**6
    assert len(buffer) == 6  # 1.025 .. 1.030 s may still serve a later frame
    buffer.forget_before(1_029 * 10**6)
    assert len(buffer) == 2
    small = DepthBuffer(max_items=4)  # no colour frames at all: memory stays bounded
    for k in range(10):
        small.add(_depth_msg(k))
    assert len(small) == 4


def test_depth_buffer_pairs_before_inference_only_when_nothing_nearer_can_come():
    buffer = DepthBuffer()
    assert buffer.nearest_if_final(1_000 * 10**6, 0.1) == (True, None)  # no depth stream at all
    buffer.add(_depth_msg(1_000 * 10**6))
    assert buffer.nearest_if_final(1_033 * 10**6, 0.1) == (False, None)  # its own depth may still come
    assert len(buffer) == 1  # nothing dropped meanwhile
    paired, msg = buffer.nearest_if_final(1_000 * 10**6, 0.1)
    assert paired and msg.header.stamp.nanosec == 0


def test_depth_buffer_waits_for_late_depth_after_the_old_ones_were_dropped():
    """Depth that arrives more than max_depth_age after its colour frame (host-side alignment):
    the buffer is empty by then, but depth is streaming, so the lookup waits for it."""
    buffer = DepthBuffer()
    buffer.add(_depth_msg(1_000 * 10**6))
    assert buffer.nearest(1_200 * 10**6, 0.1) is None and len(buffer) == 0  # 0.2 s too old: dropped
    threading.Timer(0.15, lambda: buffer.add(_depth_msg(1_200 * 10**6))).start()
    assert buffer.nearest(1_200 * 10**6, 0.1, wait_s=1.0).header.stamp.nanosec == 200 * 10**6


class _Logger:
    def __init__(self):
        self.lines: list[tuple[str, str]] = []

    def info(self, text):
        self.lines.append(("info", text))

    def warning(self, text):
        self.lines.append(("warning", text))

    def error(self, text):
        self.lines.append(("error", text))


def test_throttled_log_counts_suppressed_messages():
    now, logger = [0.0], _Logger()
    log = ThrottledLog(logger, 5.0, clock=lambda: now[0])
    assert log.warning("a", "first")
    assert not log.warning("a", "again") and log.error("b", "other")
    now[0] = 6.0
    log.info("a", "later")
    assert logger.lines == [("warning", "first"), ("error", "other"),
                            ("info", "later (1 similar message(s) suppressed)")]


def test_throttled_log_with_the_rclpy_logger_mixes_severities():
    """rclpy refuses two severities from one calling line; ThrottledLog must not trip on that."""
    from rclpy.logging import get_logger
    log = ThrottledLog(get_logger("throttle_test"), 0.0)
    for _ in range(2):
        assert log.info("k1", "i") and log.warning("k2", "w") and log.error("k3", "e")


def test_markers_delete_all_first_and_skip_peaks_without_3d():
    header = Header(frame_id="cam")
    preds = [AffordancePrediction("cut with", np.zeros((4, 4), np.float32), [Peak(1, 1, 0.9), Peak(2, 2, 0.5)]),
             AffordancePrediction("pour", np.zeros((4, 4), np.float32), [Peak(3, 3, 0.7)])]
    points = [[(0.1, 0.2, 1.0), None], [(0.0, 0.0, 2.0)]]
    markers = marker_array(header, preds, points).markers
    assert markers[0].action == Marker.DELETEALL
    assert [(m.ns, m.type) for m in markers[1:]] == [("cut with", Marker.SPHERE), ("cut with", Marker.TEXT_VIEW_FACING),
                                                     ("pour", Marker.SPHERE), ("pour", Marker.TEXT_VIEW_FACING)]
    assert marker_array(header, preds, [[], []]).markers[0].action == Marker.DELETEALL
    result = result_message(header, preds, points, 12.5)
    assert [[p.has_point for p in m.peaks] for m in result.maps] == [[True, False], [True]]
    assert result.maps[1].peaks[0].point.z == 2.0 and result.maps[0].heatmap.header == header


# --- the running node ------------------------------------------------------------------------

def start_node(tag: str, salt: int, log_path, **overrides):
    domain = support.free_domain_id(salt)
    ns = f"/t{os.getpid()}_{tag}"
    remaps = support.namespaced_remappings(ns)
    node = support.NodeProcess({**TINY, "image_qos": "auto", **overrides}, namespace=ns, remappings=remaps,
                               env=support.ros_env(domain), log_path=log_path).start()
    return node, domain, ns


def wait_answering(node, client, rgb, timeout=90.0, reliability=ReliabilityPolicy.RELIABLE):
    """Stream until the node answers and its image subscription has ``reliability``."""
    ok = client.stream_until(lambda: client.results and client.node_subscription_reliability() == reliability,
                             rgb, timeout=timeout)
    assert ok, f"node never answered:\n{node.log()}"


@pytest.fixture(scope="module")
def coffee():
    return skimage.data.coffee()


@pytest.fixture(scope="module")
def robust(coffee, tmp_path_factory):
    node, domain, ns = start_node("robust", salt=2, log_path=tmp_path_factory.mktemp("robust") / "node.log",
                                  use_depth=True, prompts="hold", text_cache_size=TEXT_CACHE,
                                  max_depth_age=0.05, peak_threshold=0.0)  # random weights: peaks in every frame
    client = support.namespaced_client(ns, domain)
    try:
        wait_answering(node, client, coffee)
        yield node, client
    finally:
        client.close()
        node.stop()


def counters(client) -> dict[str, int]:
    d = client.latest_diagnostics(timeout=3.0, after=len(client.diagnostics))
    return {k: int(v) for k, v in d.items() if k.startswith("frames_") or k == "text_cache_entries"}


def one_result(client, rgb, frame_id: str, timeout: float = 30.0, count: int = 1, **kw):
    """Stream frames tagged ``frame_id`` until ``count`` results for them arrived; returns the last.
    (count=2 when a CameraInfo changes with the frames: the first frame may meet the previous one.)"""
    client.clear()
    found = client.stream_until(lambda: len(mine := [r for r in client.results if r.header.frame_id == frame_id])
                                >= count and mine, rgb, timeout=timeout, frame_id=frame_id, **kw)
    return found[-1] if found else None




def has_3d(result) -> bool:
    return any(p.has_point for m in result.maps for p in m.peaks)


def test_depth_without_camera_info_gives_no_3d(robust):
    node, client = robust
    assert all(r.successful for r in client.set_parameters(prompts="ride", peak_threshold=0.1, num_peaks=8))
    left, depth, _ = support.motorcycle_rgbd()
    before = counters(client)["frames_without_3d"]
    result = one_result(client, left, "no_info", depth=(depth, "32FC1"))
    assert result is not None and not has_3d(result)
    assert counters(client)["frames_without_3d"] > before
    assert node.wait_for_log("no CameraInfo received", 5)
    assert client.wait_for(lambda: any(d["_level"] == 1 and "without 3D points" in d["_message"]
                                       for d in client.diagnostics), 3.0), client.diagnostics[-3:]


def test_depth_of_another_camera_frame_is_used_with_a_warning(robust):
    """Depth not registered to the colour image (another frame_id) gives wrong points: say so."""
    node, client = robust
    assert all(r.successful for r in client.set_parameters(prompts="ride"))
    left, depth, info = support.motorcycle_rgbd()
    client.clear()

    def publish_capture() -> None:
        header = client.header(frame_id="colour_optical")
        info.header = header
        client.publish_camera_info(info)
        client.publish_depth(depth, Header(stamp=header.stamp, frame_id="depth_optical"), "32FC1")
        client.publish_image(left, header)
    deadline = time.monotonic() + 30
    while not any(r.header.frame_id == "colour_optical" for r in client.results) and time.monotonic() < deadline:
        publish_capture()
        client.wait_for(lambda: client.results, 0.25)
    assert node.wait_for_log("depth is in 'depth_optical' but the image is in 'colour_optical'", 5), node.log()[-2000:]


def test_diagnostics_warn_when_the_camera_goes_silent(robust):
    """Prompts set, outputs subscribed, but no image for 5 s (camera unplugged, wrong remapping): WARN."""
    node, client = robust
    assert all(r.successful for r in client.set_parameters(prompts="hold"))
    client.clear()
    assert client.wait_for(lambda: any(d["_level"] == 1 and "no image on" in d["_message"]
                                       for d in client.diagnostics), 10.0), client.diagnostics[-2:]


def test_bad_depth_and_camera_info_give_no_3d_then_recover(robust):
    node, client = robust
    left, depth, info = support.motorcycle_rgbd()
    h, w = depth.shape
    zero_focal = CameraInfo(width=w, height=h)
    zero_focal.k = [0.0, 0.0, support.MOTORCYCLE_CX, 0.0, 0.0, support.MOTORCYCLE_CY, 0.0, 0.0, 1.0]
    cases = {
        "nan": (np.full_like(depth, np.nan), "32FC1", info),
        "inf": (np.full_like(depth, np.inf), "32FC1", info),
        "negative": (np.full_like(depth, -1.5), "32FC1", info),
        "zero_m": (np.zeros_like(depth), "32FC1", info),
        "zero_mm": (np.zeros(depth.shape, np.uint16), "16UC1", info),
        "other_size": (cv2.resize(depth, (w // 2, h // 2), interpolation=cv2.INTER_NEAREST), "32FC1", info),
        "mono8_depth": (np.full(depth.shape, 3, np.uint8), "mono8", info),
        "zero_focal": (depth, "32FC1", zero_focal),
    }
    before, with_peaks = counters(client)["frames_without_3d"], 0
    for name, (array, encoding, camera) in cases.items():
        result = one_result(client, left, f"bad_depth_{name}", depth=(array, encoding), info=camera, count=2)
        assert result is not None, f"{name}: node stopped answering\n{node.log()}"
        assert not has_3d(result), f"{name}: {result}\n{node.log()[-3000:]}"
        assert node.running()
        # a frame whose (random-weight, near-flat) maps have no peak needs no 3D point and is not counted
        with_peaks += any(m.peaks for m in result.maps)
    assert with_peaks and counters(client)["frames_without_3d"] - before >= with_peaks
    assert "no 3D contact points for this frame" in node.log()
    result = one_result(client, left, "good_depth", depth=(depth, "32FC1"), info=info, count=2)
    assert result is not None and has_3d(result)


def bad_images() -> dict[str, Image]:
    ok = dict(height=4, width=5, encoding="rgb8", step=15, data=bytes(60))
    cases = {
        "yuv422": dict(ok, encoding="yuv422", step=10, data=bytes(40)),
        "8UC3": dict(ok, encoding="8UC3"),
        "32FC1_as_colour": dict(ok, encoding="32FC1", step=20, data=bytes(80)),
        "16UC1_as_colour": dict(ok, encoding="16UC1", step=10, data=bytes(40)),
        "data_short": dict(ok, data=bytes(59)),
        "data_long": dict(ok, data=bytes(61)),
        "step_below_width": dict(ok, step=14, data=bytes(56)),
        "huge_header_tiny_data": dict(ok, height=100_000, width=100_000, step=300_000),
    }
    return {name: Image(**fields) for name, fields in cases.items()}


def test_bad_images_are_rejected_counted_and_the_next_frame_works(robust, coffee):
    node, client = robust
    assert all(r.successful for r in client.set_parameters(prompts="hold"))
    before = counters(client)
    for name, msg in bad_images().items():
        msg.header = client.header(frame_id=f"bad_{name}")
        client.image_pub.publish(msg)
        time.sleep(0.3)  # the idle worker takes each one (a newer frame would replace it)
    result = one_result(client, coffee, "after_bad_images")
    assert result is not None and result.maps[0].heatmap.width == coffee.shape[1]
    after = counters(client)
    assert after["frames_rejected"] - before["frames_rejected"] == len(bad_images())
    assert after["frames_failed"] == before["frames_failed"]
    log = node.log()
    assert "image rejected: encoding 'yuv422' is not a colour image" in log and "Traceback" not in log
    assert node.running()


def test_compressed_images_on_the_image_transport_topic(coffee, tmp_path):
    """image_transport: compressed: JPEG frames on <image>/compressed (what image_transport's
    compressed plugin publishes) give results at the frame's size; an undecodable one is rejected
    and counted, and the node goes on."""
    node, domain, ns = start_node("compressed", salt=5, log_path=tmp_path / "node.log", prompts="hold",
                                  image_transport="compressed")
    client = support.namespaced_client(ns, domain)
    try:
        publisher = client.node.create_publisher(CompressedImage, f"{client.image_topic}/compressed",
                                                 QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
        jpeg = cv2.imencode(".jpg", coffee[..., ::-1])[1].tobytes()

        def publish(data: bytes, frame_id: str) -> None:
            publisher.publish(CompressedImage(header=client.header(frame_id=frame_id), format="rgb8; jpeg compressed "
                                              "bgr8", data=data))

        def stream_until_result(frame_id: str):
            """Until a result, and the node's subscription matched our reliable publisher (image_qos
            auto re-subscribes once, and a frame sent meanwhile is lost)."""
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                publish(jpeg, frame_id)
                found = client.wait_for(lambda: [r for r in client.results if r.header.frame_id == frame_id], 0.25)
                if found and client.node_subscription_reliability(publisher.topic_name) == ReliabilityPolicy.RELIABLE:
                    return found[0]
            return None
        result = stream_until_result("jpeg")
        assert result is not None, node.log()
        assert (result.maps[0].heatmap.height, result.maps[0].heatmap.width) == coffee.shape[:2]
        before = counters(client)["frames_rejected"]
        publish(b"\xff\xd8 not a jpeg", "broken")
        time.sleep(0.5)
        assert stream_until_result("after_broken") is not None
        assert counters(client)["frames_rejected"] == before + 1
        assert "image rejected: compressed image" in node.log() and node.running()
    finally:
        client.close()
        node.stop()


def test_exception_inside_inference_is_logged_and_the_frame_skipped(robust, coffee):
    """A real failure path: a zero-size frame is a valid message, and the model itself refuses it
    (ValueError inside predict). The node logs it, counts it and goes on."""
    node, client = robust
    before = counters(client)
    for height, width in ((0, 5), (5, 0)):
        msg = Image(height=height, width=width, encoding="rgb8", step=3 * width, data=b"")
        msg.header = client.header(frame_id="zero_size")
        client.image_pub.publish(msg)
        time.sleep(0.3)
    assert node.wait_for_log("inference failed: ValueError", 5), node.log()
    result = one_result(client, coffee, "after_failure")
    assert result is not None
    after = counters(client)
    assert after["frames_failed"] - before["frames_failed"] == 2
    assert "Traceback" not in node.log() and node.running()


def test_8k_frame_is_downscaled_for_inference_with_bounded_memory(robust, coffee):
    node, client = robust
    before = counters(client)["frames_downscaled"]
    big = cv2.resize(coffee, (7680, 4320), interpolation=cv2.INTER_LINEAR)
    rss = [node.rss_kb()]
    for i in range(3):
        client.clear()
        header = client.publish_image(big, client.header(frame_id=f"8k_{i}"))
        assert client.wait_for(lambda header=header: [r for r in client.results if r.header.stamp == header.stamp],
                               60), node.log()
        with client.lock:
            result = next(r for r in client.results if r.header.stamp == header.stamp)
        assert (result.maps[0].heatmap.height, result.maps[0].heatmap.width) == (4320, 7680)
        assert all(0 <= p.u < 7680 and 0 <= p.v < 4320 for p in result.maps[0].peaks)
        assert one_result(client, coffee, f"after_8k_{i}") is not None  # the next frame works
        rss.append(node.rss_kb())
    print(f"\nVmRSS before 8K frames and after each of 3: {', '.join(f'{r / 1024:.0f}' for r in rss)} MiB")
    # Each 8K frame makes ~470 MB of messages (100 MB image in, 133 MB heatmap twice, 100 MB
    # overlay). Fast DDS keeps history buffers sized to the largest message seen and the
    # allocator keeps some freed memory, so RSS rises by a few hundred MB and then levels off;
    # unbounded growth would add ~470 MB per frame.
    assert rss[3] - rss[0] < 1024 * 1024, rss
    assert rss[3] - rss[2] < 300 * 1024, rss
    assert counters(client)["frames_downscaled"] - before == 3


def test_bad_prompts(robust, coffee):
    node, client = robust
    # empty and whitespace-only queries are ignored: the current prompts stay
    assert all(r.successful for r in client.set_parameters(prompts="hold"))
    for text in ("", "   ", " ; ;\t"):
        client.publish_prompt(text)
    assert node.wait_for_log("ignored an empty query", 5)
    time.sleep(0.3)
    assert client.get_parameters("prompts") == {"prompts": "hold"}
    # 10,000 characters: cut to MAX_PROMPT_CHARS (the model then truncates to CLIP's context)
    client.publish_prompt("grasp, " * 1429)  # 10,003 characters; 300 of them are still > 75 tokens
    result = one_result(client, coffee, "long_prompt")
    assert len(client.get_parameters("prompts")["prompts"]) <= MAX_PROMPT_CHARS
    result = one_result(client, coffee, "long_prompt_2")
    assert result is not None and len(result.maps[0].prompt) <= MAX_PROMPT_CHARS
    assert result.maps[0].prompt.startswith("grasp, grasp")
    assert "was cut to 300" in node.log()
    assert node.wait_for_log("truncated to CLIP's context", 5)
    # non-ASCII and emoji
    client.publish_prompt("verser le café ☕; 掴む; 🔪 cut")
    found = client.stream_until(lambda: [r for r in client.results if [m.prompt for m in r.maps] ==
                                         ["verser le café ☕", "掴む", "🔪 cut"]], coffee, timeout=20)
    assert found, node.log()
    # prompt spam: the last one wins, the text cache stays bounded
    for i in range(300):
        client.publish_prompt(f"spam prompt number {i}")
    client.publish_prompt("final prompt")
    found = client.stream_until(lambda: [r for r in client.results if [m.prompt for m in r.maps] ==
                                         ["final prompt"]], coffee, timeout=20)
    assert found, node.log()
    assert counters(client)["text_cache_entries"] <= TEXT_CACHE
    assert node.running()


def test_flood_at_100_hz_while_prompts_change(robust, coffee):
    node, client = robust
    def flood(seconds: float, prompts: bool) -> int:
        start, k, i = time.monotonic(), 0, 0
        while time.monotonic() < start + seconds:
            if prompts and i % 10 == 0:
                client.publish_prompt(f"flood {k}")
                k += 1
            client.publish_image(coffee, client.header(frame_id="flood"))
            i += 1
            time.sleep(max(0.0, start + i / 100.0 - time.monotonic()))
        return i
    flood(1.5, prompts=True)  # warm up: allocator pools, DDS histories, text cache
    time.sleep(1.0)
    rss_before = node.rss_kb()
    client.clear()
    before = counters(client)
    sent = flood(4.0, prompts=True)
    time.sleep(1.0)
    rss_after = node.rss_kb()
    after = counters(client)
    with client.lock:
        used = [int(r.maps[0].prompt.split()[1]) for r in client.results if r.header.frame_id == "flood"]
    delta = {k: after[k] - before[k] for k in after}
    print(f"\nflood: {sent} frames at 100 Hz in 4 s, node received {delta['frames_received']}, "
          f"processed {delta['frames_processed']}, replaced {delta['frames_replaced']}; VmRSS before "
          f"{rss_before / 1024:.0f} MiB, after {rss_after / 1024:.0f} MiB ({(rss_after - rss_before) / 1024:+.0f} MiB)")
    assert used and used == sorted(used)  # prompts are taken in order, never an older one again
    assert rss_after - rss_before < 100 * 1024, (rss_before, rss_after)
    # The latest prompt is used from the next frame processed after it arrived (at most the frame
    # in flight still has the previous one).
    client.clear()
    client.publish_prompt("after the flood")
    assert node.wait_for_log("prompts: after the flood", 5)
    headers = []
    for _ in range(4):
        headers.append(client.publish_image(coffee, client.header(frame_id="post_flood")))
        time.sleep(0.25)
    assert client.wait_for(lambda: [r for r in client.results if r.header.stamp == headers[-1].stamp], 10)
    with client.lock:
        prompts = [r.maps[0].prompt for r in client.results if r.header.frame_id == "post_flood"]
    assert prompts and all(p == "after the flood" for p in prompts[1:]) and prompts[-1] == "after the flood"
    assert node.running()


# --- process level: signals and start-up errors ------------------------------------------------

def test_sigint_and_sigterm_stop_the_node_within_2_s_without_traceback(coffee, tmp_path):
    """Both signals, each to its own node (started together), while frames are being processed.
    The two nodes also cover the fixed image_qos choices (the other nodes use auto): the SIGINT
    one subscribes reliable, the SIGTERM one sensor_data (best effort) from a best-effort camera."""
    qos = {signal.SIGINT: ("reliable", ReliabilityPolicy.RELIABLE),
           signal.SIGTERM: ("sensor_data", ReliabilityPolicy.BEST_EFFORT)}
    nodes = {sig: start_node(f"sig{int(sig)}", salt=3 + i, log_path=tmp_path / f"sig{int(sig)}.log", prompts="hold",
                             image_qos=qos[sig][0])
             for i, sig in enumerate(qos)}
    clients = {sig: support.namespaced_client(ns, domain, image_reliability=qos[sig][1])
               for sig, (_, domain, ns) in nodes.items()}
    outcome = {}
    try:
        for sig, (node, _, _) in nodes.items():
            wait_answering(node, clients[sig], coffee, reliability=qos[sig][1])
        for sig, (node, _, _) in nodes.items():
            for _ in range(5):  # inference in progress when the signal arrives
                clients[sig].publish_image(coffee)
            start = time.monotonic()
            node.send_signal(sig)
            rc = node.wait(10)
            outcome[sig] = (rc, time.monotonic() - start)
    finally:
        for sig, (node, _, _) in nodes.items():
            clients[sig].close()
            node.stop()
    for sig, (rc, elapsed) in outcome.items():
        log = nodes[sig][0].log()
        print(f"\n{signal.Signals(sig).name}: exit code {rc} after {elapsed:.2f} s")
        assert elapsed < 2.0, f"{signal.Signals(sig).name}: exit took {elapsed:.2f} s"
        assert rc == 0, log
        assert "Traceback" not in log and "[ERROR]" not in log, log
    assert set(outcome) == {signal.SIGINT, signal.SIGTERM}


STARTUP_CASES = {
    "missing_weights_file": ({"clip_pretrained": "/nonexistent/open_clip_model.safetensors"}, "clip_pretrained"),
    "openai_weights_offline": ({"clip_model": "RN101", "clip_pretrained": "openai"}, "clip_pretrained"),
    "missing_fpn_checkpoint": ({"fpn_checkpoint": "/nonexistent/fpn.safetensors"}, "fpn_checkpoint"),
    "input_size_out_of_range": ({"input_size": 100}, "input_size"),
}


def test_startup_errors_name_the_parameter_and_exit_non_zero(tmp_path):
    env = support.ros_env(support.free_domain_id(5), HF_HUB_OFFLINE="1")
    procs = {}
    for name, (overrides, _) in STARTUP_CASES.items():
        procs[name] = support.NodeProcess(dict(TINY, **overrides), namespace=f"/t{os.getpid()}_{name}", env=env,
                                          log_path=tmp_path / f"{name}.log").start()
    for name, proc in procs.items():
        try:
            rc = proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.stop()
            pytest.fail(f"{name}: the node did not exit")
        proc.stop()
        log, param = proc.log(), STARTUP_CASES[name][1]
        assert rc != 0, f"{name}: exit code {rc}\n{log}"
        assert param in log, f"{name}: the error does not name {param}\n{log}"
        assert "Traceback" not in log, f"{name}:\n{log}"
        errors = [line for line in log.splitlines() if "[ERROR]" in line]
        assert len(errors) == 1, f"{name}: expected one error line\n{log}"
    assert "Fix:" in procs["missing_weights_file"].log() and "Fix:" in procs["missing_fpn_checkpoint"].log()
    for name in ("missing_weights_file", "openai_weights_offline"):  # both ways a user sets it
        fix = procs[name].log().split("Fix:")[1]
        assert "grounding.launch.py clip_pretrained:=/" in fix and "--ros-args -p clip_pretrained:=/" in fix, fix


def test_an_unexpected_error_while_building_the_model_fails_start_up_instead_of_hanging():
    """The worker thread builds the model; whatever it raises reaches start() as a StartupError
    (one error naming it, exit code 1 in the executable), never a start() that waits for ever."""
    import rclpy
    from rclpy.parameter import Parameter

    from affordance_clip_ros.ros.grounding_node import GroundingNode, StartupError

    context = rclpy.Context()
    rclpy.init(context=context, domain_id=support.free_domain_id(7))
    node = GroundingNode(context=context, parameter_overrides=[Parameter(k, value=v) for k, v in TINY.items()])
    outcome: list[BaseException | None] = []
    try:
        with mock.patch.object(GroundingNode, "_build_grounder", side_effect=KeyError("model table")):
            starter = threading.Thread(target=lambda: outcome.append(_raised(node.start)), daemon=True)
            starter.start()
            starter.join(20.0)
        assert not starter.is_alive(), "start() still waiting after the worker failed"
        assert isinstance(outcome[0], StartupError) and "KeyError" in str(outcome[0]), outcome
    finally:
        node.stop()
        node.destroy_node()
        rclpy.try_shutdown(context=context)


def _raised(fn) -> BaseException | None:
    try:
        fn()
    except BaseException as e:  # the test inspects it
        return e
    return None
