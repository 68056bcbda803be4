"""The installed grounding node over real rclpy / Fast DDS on CPU with the tiny random CLIP:
outputs, headers, RGB-D 3D points, newest-frame processing, run-time prompts and parameters,
/diagnostics. One node process serves the whole module.

    make build && bash scripts/with_ros.sh .venv-kilted/bin/python -m pytest -q test/test_ros_node.py

Isolation from other runs on the same machine: a domain id derived from this process id, and a
namespace of its own for the node, its camera topics and its query topic.
"""
from __future__ import annotations

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
import time

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="needs the ROS 2 environment (scripts/with_ros.sh)")

import skimage.data
from rclpy.qos import ReliabilityPolicy
from std_msgs.msg import String
from visualization_msgs.msg import Marker

import support
from affordance_clip_ros.ros.conversions import image_to_numpy
from affordance_clip_ros.ros.frames import stamp_ns

if not support.installed_executable().is_file():
    pytest.fail("grounding_node is not installed: run `make build`", pytrace=False)
# This process talks to the node with the same Fast DDS profile the launch file gives the node.
# Set at import (collection), before any test creates a participant: Fast DDS reads it once.
support.use_fastdds_profile_here()

TINY = {"clip_model": "RN-tiny", "clip_pretrained": "none", "device": "cpu"}
F, CX, CY = support.MOTORCYCLE_F, support.MOTORCYCLE_CX, support.MOTORCYCLE_CY
DEPTH_WINDOW = 5


def namespaced_node(tag: str, salt: int, log_path, **overrides):
    """Start the installed node (tiny CLIP, installed params file) and a client in a fresh namespace."""
    domain = support.free_domain_id(salt)
    ns = f"/t{os.getpid()}_{tag}"
    remaps = support.namespaced_remappings(ns)
    parameters = dict(TINY, image_qos="auto", **overrides)
    node = support.NodeProcess(parameters, namespace=ns, remappings=remaps, env=support.ros_env(domain),
                               params_file=support.installed_share() / "config" / "grounding.yaml",
                               log_path=log_path).start()
    client = support.namespaced_client(ns, domain)
    return node, client


def wait_ready(node: support.NodeProcess, client: support.GroundingClient, rgb: np.ndarray, timeout: float = 90.0):
    """Stream frames until results arrive and the node's image subscription matched our reliable
    publisher (image_qos=auto): discovery is complete from here on."""
    got = client.stream_until(lambda: client.results and client.node_subscription_reliability()
                              == ReliabilityPolicy.RELIABLE, rgb, timeout=timeout)
    assert got, f"node never answered; its log:\n{node.log()}"


@pytest.fixture(scope="module")
def coffee() -> np.ndarray:
    return skimage.data.coffee()


@pytest.fixture(scope="module")
def grounding(coffee, tmp_path_factory):
    node, client = namespaced_node("node", salt=1, log_path=tmp_path_factory.mktemp("node") / "node.log",
                                   use_depth=True, prompts="drink with; hold", depth_window=DEPTH_WINDOW,
                                   max_depth_age=0.05)
    try:
        wait_ready(node, client, coffee)
        yield node, client
    finally:
        client.close()
        node.stop()


def results_for(client, header) -> list:
    return [r for r in client.results if r.header.stamp == header.stamp and r.header.frame_id == header.frame_id]


def stream_and_collect(client, rgb, frame_id: str, predicate, timeout: float = 30.0, **kw):
    """Stream ``rgb`` with ``frame_id`` until predicate(results with that frame_id) holds."""
    client.clear()
    def check():
        mine = [r for r in client.results if r.header.frame_id == frame_id]
        return mine if predicate(mine) else None
    return client.stream_until(check, rgb, timeout=timeout, frame_id=frame_id, **kw)


# --- outputs ----------------------------------------------------------------------------------

def test_result_heatmap_overlay_carry_the_input_header(grounding, coffee):
    node, client = grounding
    client.set_parameters(prompts="drink with; hold")
    frame_id = "coffee_optical_frame"
    results = stream_and_collect(
        client, coffee, frame_id,
        lambda rs: any(any(h.header.stamp == r.header.stamp for h in client.heatmaps)
                       and any(o.header.stamp == r.header.stamp for o in client.overlays) for r in rs))
    assert results, node.log()
    with client.lock:
        result = next(r for r in results if any(h.header.stamp == r.header.stamp for h in client.heatmaps)
                      and any(o.header.stamp == r.header.stamp for o in client.overlays))
        heatmap = next(h for h in client.heatmaps if h.header.stamp == result.header.stamp)
        overlay = next(o for o in client.overlays if o.header.stamp == result.header.stamp)
    height, width = coffee.shape[:2]
    assert [m.prompt for m in result.maps] == ["drink with", "hold"]  # one map per prompt, in order
    assert result.inference_ms > 0
    for image in [heatmap, overlay] + [m.heatmap for m in result.maps]:
        assert image.header == result.header and image.header.frame_id == frame_id
        assert (image.height, image.width) == (height, width)
    assert heatmap.encoding == "32FC1" and overlay.encoding == "bgr8"
    values = image_to_numpy(heatmap)
    assert values.dtype == np.float32 and 0.0 <= values.min() and values.max() <= 1.0
    np.testing.assert_array_equal(values, image_to_numpy(result.maps[0].heatmap))  # ~/heatmap = first prompt
    for m in result.maps:
        scores = [p.score for p in m.peaks]
        assert scores == sorted(scores, reverse=True) and len(scores) <= 5
        assert all(0 <= p.u < width and 0 <= p.v < height for p in m.peaks)
        assert not any(p.has_point for p in m.peaks)  # no depth sent with this frame
    blended = image_to_numpy(overlay)
    assert blended.shape == (height, width, 3) and not np.array_equal(blended, coffee[..., ::-1])


def motorcycle_rgbd(encoding: str):
    """The Motorcycle frame with its depth sent as 16UC1 (mm) or 32FC1 (m), and the metres the node should read."""
    left, depth, info = support.motorcycle_rgbd()
    if encoding == "16UC1":
        sent = np.nan_to_num(depth * 1000.0, nan=0.0).round().astype(np.uint16)
        metres = np.where(sent > 0, sent / 1000.0, np.nan)
    else:
        sent, metres = depth, depth
    return left, sent, metres, info


@pytest.mark.parametrize("encoding", ["32FC1", "16UC1"])
def test_rgbd_motorcycle_contact_points_are_deprojected_depth(grounding, encoding):
    node, client = grounding
    client.set_parameters(prompts="ride; sit on", num_peaks=8, peak_threshold=0.0)  # random weights: near-flat maps
    left, sent, metres, info = motorcycle_rgbd(encoding)
    frame_id = f"motorcycle_{encoding}"

    def complete(results):  # a result with 3D points, its markers and (if any) its contact point
        return any(any(p.has_point for m in r.maps for p in m.peaks)
                   and any(ma.markers and ma.markers[0].header.stamp == r.header.stamp for ma in client.markers)
                   and (not any(p.has_point for p in r.maps[0].peaks)
                        or any(c.header.stamp == r.header.stamp for c in client.contacts))
                   for r in results)
    results = stream_and_collect(client, left, frame_id, complete, depth=(sent, encoding), info=info)
    assert results, node.log()
    with client.lock:
        result = next(r for r in results if complete([r]))
        markers = next(ma for ma in client.markers if ma.markers[0].header.stamp == result.header.stamp)
        contacts = [c for c in client.contacts if c.header.stamp == result.header.stamp]
    checked = 0
    for m in result.maps:
        for p in m.peaks:
            expected = support.motorcycle_point(metres, int(p.u), int(p.v), DEPTH_WINDOW)
            assert p.has_point == (expected is not None), (p, expected)
            if expected is not None:
                got = (p.point.x, p.point.y, p.point.z)
                assert math.dist(got, expected) < 0.01, (got, expected)  # within 1 cm
                checked += 1
    assert checked >= 1
    # Markers: DELETEALL first, then a sphere and a text label per 3D peak, in the image frame.
    assert markers.markers[0].action == Marker.DELETEALL
    spheres = [mk for mk in markers.markers if mk.type == Marker.SPHERE]
    texts = [mk for mk in markers.markers if mk.type == Marker.TEXT_VIEW_FACING]
    assert len(spheres) == len(texts) == checked
    assert all(mk.header == result.header for mk in markers.markers)
    assert {mk.ns for mk in spheres} <= {"ride", "sit on"} and all(t.text for t in texts)
    # ~/contact_point: the first prompt's best peak that has a 3D point.
    best = next((p for p in result.maps[0].peaks if p.has_point), None)
    if best is not None:
        assert contacts and contacts[0].header == result.header
        assert (contacts[0].point.x, contacts[0].point.y, contacts[0].point.z) == \
            pytest.approx((best.point.x, best.point.y, best.point.z))


def test_3d_points_use_the_depth_of_their_own_capture_while_depth_streams_on(grounding):
    """Depth images that keep arriving while the model runs (a 90 Hz depth stream, a slow model)
    must not replace a frame's own depth: its points come from the depth image with its stamp."""
    node, client = grounding
    client.set_parameters(prompts="ride", num_peaks=3, peak_threshold=0.0)
    left, _, info = support.motorcycle_rgbd()
    own, later = np.full(left.shape[:2], 1.0, np.float32), np.full(left.shape[:2], 2.0, np.float32)
    client.clear()
    depths: list[float] = []
    deadline = time.monotonic() + 30
    while len(depths) < 3 and time.monotonic() < deadline:
        header = client.header(frame_id="depth_burst")
        info.header = header
        client.publish_camera_info(info)
        client.publish_depth(own, header, "32FC1")
        client.publish_image(left, header)
        for k in range(1, 41):  # 40 newer depth images, all within max_depth_age of the frame
            client.publish_depth(later, client.header(stamp_ns=stamp_ns(header.stamp) + k * 1_000_000,
                                                      frame_id="depth_burst"), "32FC1")
            time.sleep(0.005)
        if found := client.wait_for(lambda header=header: results_for(client, header), 5.0):
            depths += [p.point.z for m in found[0].maps for p in m.peaks if p.has_point]
    assert depths, node.log()
    assert depths == pytest.approx([1.0] * len(depths)), depths


# --- run-time prompts and parameters -----------------------------------------------------------

def test_prompt_changes_on_the_topic_and_the_parameter(grounding, coffee):
    node, client = grounding
    client.publish_prompt("cut with")
    got = stream_and_collect(client, coffee, "prompt_topic", lambda rs: any(
        [m.prompt for m in r.maps] == ["cut with"] for r in rs))
    assert got, node.log()
    assert client.get_parameters("prompts") == {"prompts": "cut with"}  # the topic sets the parameter
    [ok] = client.set_parameters(prompts=" pour ;hold;; pour ")
    assert ok.successful
    got = stream_and_collect(client, coffee, "prompt_param", lambda rs: any(
        [m.prompt for m in r.maps] == ["pour", "hold"] for r in rs))
    assert got, node.log()


def test_prompts_from_a_default_qos_publisher_are_taken_once(grounding):
    """A planner's `create_publisher(String, "/affordance/query", 10)` (reliable, volatile) cannot
    match the transient_local subscription; it is heard all the same, and a latched publisher's
    message, which reaches both query subscriptions, is taken once."""
    node, client = grounding
    plain = client.node.create_publisher(String, client.query_topic, 10)
    try:
        assert client.wait_for(lambda: plain.get_subscription_count() >= 1, 10.0)
        plain.publish(String(data="pour into"))
        assert prompts_become(client, "pour into"), node.log()
        client.publish_prompt("twist off")  # transient_local
        assert prompts_become(client, "twist off"), node.log()
        time.sleep(0.5)  # a second delivery would have been logged by now
        log = node.log()
        assert log.count("prompts: pour into") == 1 and log.count("prompts: twist off") == 1, log[-2000:]
        assert "incompatible QoS" not in log
    finally:
        client.node.destroy_publisher(plain)


def prompts_become(client, text: str, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while client.get_parameters("prompts")["prompts"] != text:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_clearing_the_prompts_while_frames_stream_fails_nothing_and_clears_markers_and_poses(grounding):
    node, client = grounding
    client.set_parameters(prompts="ride", num_peaks=3, peak_threshold=0.0)
    left, depth, info = support.motorcycle_rgbd()
    got = stream_and_collect(client, left, "clearing", lambda rs: any(has_markers(ma) for ma in client.markers),
                             depth=(depth, "32FC1"), info=info)
    assert got, node.log()
    failed = client.counter("frames_failed")
    stop = threading.Event()

    def stream() -> None:
        while not stop.is_set():
            client.publish_frame(left, (depth, "32FC1"), info, "clearing")
            time.sleep(0.02)
    streamer = threading.Thread(target=stream)
    streamer.start()
    try:
        time.sleep(0.5)
        [ok] = client.set_parameters(prompts="")
        assert ok.successful
        time.sleep(1.0)
    finally:
        stop.set()
        streamer.join()
    with client.lock:
        assert all(r.maps for r in client.results), "a result without maps was published"
        last, last_poses = client.markers[-1], client.poses[-1]
    assert [m.action for m in last.markers] == [Marker.DELETEALL]  # RViz shows nothing stale
    assert last_poses.poses == [] and last_poses.header.frame_id == "clearing"  # nor does a planner
    assert client.counter("frames_failed") == failed, node.log()[-2000:]


def has_markers(array) -> bool:
    return any(m.action == Marker.ADD for m in array.markers)


def test_invalid_parameters_are_refused_with_a_reason(grounding):
    node, client = grounding
    cases = {"overlay_alpha": 1.5, "peak_threshold": -0.1, "num_peaks": 51, "prompt_templates": ["a photo of"],
             "depth_window": 4, "clip_model": "RN50", "device": "cuda", "input_size": 320}
    for name, value in cases.items():
        [result] = client.set_parameters(**{name: value})
        assert not result.successful and result.reason, name
    [result] = client.set_parameters(prompt_templates=["a photo of"])
    assert "{}" in result.reason
    [result] = client.set_parameters(clip_model="RN50")
    assert "read-only" in result.reason.lower() or "read only" in result.reason.lower()
    assert client.get_parameters("overlay_alpha", "clip_model") == {"overlay_alpha": 0.5, "clip_model": "RN-tiny"}


def test_peak_threshold_and_overlay_change_at_run_time(grounding, coffee):
    node, client = grounding
    results = client.set_parameters(prompts="hold", peak_threshold=0.9, num_peaks=2, publish_overlay=False)
    assert all(r.successful for r in results)
    try:
        got = stream_and_collect(client, coffee, "thresholds", lambda rs: len(rs) >= 3)
        assert got, node.log()
        for r in got[1:]:  # the first may have been in flight during the change
            assert len(r.maps[0].peaks) <= 2 and all(p.score >= 0.9 for p in r.maps[0].peaks)
        stamps = {r.header.stamp.sec * 10**9 + r.header.stamp.nanosec for r in got[1:]}
        with client.lock:
            assert not [o for o in client.overlays if o.header.stamp.sec * 10**9 + o.header.stamp.nanosec in stamps]
    finally:
        client.set_parameters(peak_threshold=0.3, num_peaks=5, publish_overlay=True)


# --- newest frame first, counted replacements --------------------------------------------------

def counters(client, after_idle: float = 1.2) -> dict[str, int]:
    time.sleep(after_idle)
    d = client.latest_diagnostics(timeout=3.0, after=len(client.diagnostics))
    return {k: int(v) for k, v in d.items() if k.startswith("frames_")}


@pytest.mark.parametrize("max_rate_hz", [5.0, 0.0], ids=["rate-limited", "busy"])
def test_burst_of_60_frames_processes_the_newest_and_counts_replaced(grounding, coffee, max_rate_hz):
    """A 30 Hz camera. Rate-limited, the node is slower than the camera on any machine, so
    replacements must happen; busy, the worker runs inference back to back while frames arrive."""
    node, client = grounding
    assert all(r.successful for r in client.set_parameters(prompts="drink with", max_rate_hz=max_rate_hz))
    try:
        before = counters(client)
        client.clear()
        period, start, headers = 1.0 / 30.0, time.monotonic(), []
        for i in range(60):
            headers.append(client.publish_image(coffee, client.header(frame_id="burst")))
            time.sleep(max(0.0, start + (i + 1) * period - time.monotonic()))
        last = headers[-1]
        assert client.wait_for(lambda: results_for(client, last), 20.0), "the newest frame was not processed"
        sent = [h.stamp.sec * 10**9 + h.stamp.nanosec for h in headers]

        def settled():
            c = counters(client, after_idle=0.0)
            delta = {k: c[k] - before[k] for k in c}
            return delta if delta["frames_received"] == delta["frames_processed"] + delta["frames_replaced"] else None
        delta, deadline = None, time.monotonic() + 10
        while delta is None and time.monotonic() < deadline:
            delta = settled()
        assert delta, "counters never added up"
        # The callbacks only store the frame, so the executor takes (nearly) every one before the
        # next replaces it in the node's 1-frame DDS queue, also while the worker is busy (60 of 60
        # in every run here). rclpy's MultiThreadedExecutor, used before, got 14 to 59 of them in
        # some rate-limited runs (this test does not catch it every time; benchmarks/ros_latency.py
        # shows it as frames/s and stream latency).
        assert 45 <= delta["frames_received"] <= 60, delta
        assert delta["frames_rejected"] == delta["frames_failed"] == 0 and delta["frames_processed"] >= 1
        if max_rate_hz:  # frames come faster than 5 Hz: some are replaced, and every one is counted
            assert delta["frames_processed"] < 20 and delta["frames_replaced"] >= 1, delta
        print(f"\nburst: 60 sent at 30 Hz, node received {delta['frames_received']}, processed "
              f"{delta['frames_processed']}, replaced {delta['frames_replaced']} (max_rate_hz {max_rate_hz})")
        with client.lock:
            done = [r.header.stamp.sec * 10**9 + r.header.stamp.nanosec for r in client.results
                    if r.header.frame_id == "burst"]
        assert done == sorted(done) and set(done) <= set(sent) and done[-1] == sent[-1]
    finally:
        client.set_parameters(max_rate_hz=0.0)


def test_diagnostics_at_one_hertz_with_the_required_fields(grounding):
    node, client = grounding
    n = len(client.diagnostics)
    start = time.monotonic()
    assert client.wait_for(lambda: len(client.diagnostics) >= n + 2, 6.0)
    elapsed = time.monotonic() - start
    assert 0.6 < elapsed < 4.0  # two messages at 1 Hz
    d = client.latest_diagnostics()
    for key in ("processed_fps", "latency_mean_ms", "latency_p95_ms", "inference_mean_ms", "frames_received",
                "frames_processed", "frames_replaced", "frames_rejected", "frames_failed", "device", "model_mode",
                "text_cache_entries", "image_qos"):
        assert key in d, key
    assert d["device"] == "cpu" and d["model_mode"] == "training-free"
    assert float(d["latency_p95_ms"]) >= float(d["latency_mean_ms"]) * 0.5 > 0
    assert "image: reliable" in d["image_qos"]


def test_client_publish_prompt_then_next_result(grounding, coffee):
    """The public client as a planner uses it: set the prompts, then take the next result."""
    node, client = grounding
    client.publish_prompt("hold; drink with")
    time.sleep(1.0)  # results of frames already in flight arrive first
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(client.next_result, 30.0)
        time.sleep(0.2)
        header = client.publish_image(coffee, client.header(frame_id="next_result"))
        result = future.result()
    assert result is not None, node.log()
    assert result.header == header and [m.prompt for m in result.maps] == ["hold", "drink with"]
    assert client.get_parameters("prompts") == {"prompts": "hold; drink with"}


def test_client_records_only_the_outputs_asked_for(grounding, coffee):
    node, client = grounding
    with pytest.raises(ValueError, match="unknown outputs"):
        support.namespaced_client(client.namespace, client.context.get_domain_id(), outputs=("result", "overlays"))
    planner = support.namespaced_client(client.namespace, client.context.get_domain_id(), outputs=("result",),
                                        node_name="planner")
    try:
        assert client.stream_until(lambda: len(planner.results) >= 2, coffee, timeout=30.0), node.log()
        assert client.wait_for(lambda: client.overlays, 5.0)  # the node draws overlays for the other client
        assert not planner.overlays and not planner.heatmaps
    finally:
        planner.close()
