"""Frames from a real camera reach the node: image_qos auto matches the camera's reliability, and
frames lost in transport show in /diagnostics. The camera is another process
(benchmarks/dds_check.py camera) started without the package's Fast DDS profile, as a camera driver
usually is; the node runs with its default image_qos.

    make build && bash scripts/with_ros.sh .venv-kilted/bin/python -m pytest -q test/test_ros_transport.py
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("rclpy", reason="needs the ROS 2 environment (scripts/with_ros.sh)")

from rclpy.qos import ReliabilityPolicy

import support
from affordance_clip_ros.ros.compat import PROFILE_VARIABLES
from affordance_clip_ros.ros.frames import LossWindow

if not support.installed_executable().is_file():
    pytest.fail("grounding_node is not installed: run `make build`", pytrace=False)
support.use_fastdds_profile_here()  # this process (the test's client) as the launch file sets up the node

DDS_CHECK = Path(__file__).resolve().parents[1] / "benchmarks" / "dds_check.py"
TINY = {"clip_model": "RN-tiny", "clip_pretrained": "none", "device": "cpu", "prompts": "hold"}
RATE_HZ = 30


def test_loss_window_gives_the_share_lost_over_its_window():
    window = LossWindow(window_s=5.0)
    assert window.share() == (0.0, 0)
    window.add(0, 0, now=0.0)
    window.add(10, 90, now=1.0)
    assert window.share() == (0.9, 90)
    for t in range(2, 9):  # losses stop: the window forgets them after 5 s
        window.add(10 + 30 * (t - 1), 90, now=float(t))
    assert window.share() == (0.0, 0)


def _start(tmp_path, tag: str):
    domain = support.free_domain_id(hash(tag) % 50)
    ns = f"/t{os.getpid()}_{tag}"
    node = support.NodeProcess(TINY, namespace=ns, remappings=support.namespaced_remappings(ns),
                               env=support.ros_env(domain), log_path=tmp_path / f"{tag}.log").start()
    return node, support.namespaced_client(ns, domain), domain, ns


def _camera(topic: str, reliability: str, frames: int, domain: int, rate_hz: float = RATE_HZ) -> subprocess.Popen:
    """A 640x480 rgb8 camera (history 10 frames) in its own process, without the package's DDS profile."""
    env = {k: v for k, v in support.ros_env(domain, fastdds_profile=False).items() if k not in PROFILE_VARIABLES}
    return subprocess.Popen([sys.executable, str(DDS_CHECK), "camera", "--topic", topic, "--reliability", reliability,
                             "--frames", str(frames), "--rate", str(rate_hz), "--wait-for-subscriber"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _node_reliabilities(client) -> set:
    """The reliability of every subscription the grounding node has on the image topic."""
    return {info.qos_profile.reliability for info in client.node.get_subscriptions_info_by_topic(client.image_topic)
            if info.node_name == "affordance_grounding"}


def test_default_image_qos_matches_a_reliable_camera_and_keeps_answering(tmp_path):
    # 15 Hz: the camera's 10-frame history then rides out 0.6 s in which a loaded machine gives the
    # node's DDS threads no time to acknowledge (at 30 Hz, under a load of 4 on 2 cores, half the
    # frames of a window were dropped so); the transport is the same at any rate
    rate_hz = 15
    frames = 8 * rate_hz
    node, client, domain, ns = _start(tmp_path, "reliable_camera")
    with node, client:
        assert node.wait_for_log("ready:", 120), node.log()
        camera = _camera(client.image_topic, "reliable", frames, domain, rate_hz)
        try:
            # (timeouts for a loaded 2-core machine, where starting the camera process takes seconds)
            assert client.wait_for(lambda: _node_reliabilities(client) == {ReliabilityPolicy.RELIABLE}, 60), \
                f"the node did not subscribe reliable to a reliable camera:\n{node.log()}"
            assert client.wait_for(lambda: len(client.results) >= 3, 60), f"no results:\n{node.log()}"
            answered_mid_stream = len(client.results)
            assert camera.wait(timeout=120) == 0, camera.stderr.read()
        finally:
            camera.kill()
        time.sleep(1.5)  # the last diagnostics period closes
        diagnostics = client.latest_diagnostics()
        assert "image: reliable" in diagnostics["image_qos"]
        # Reliable: nothing lost in transport. The node's queue holds one frame, so on a busy
        # machine some frames are replaced before its executor takes them (not a transport loss);
        # a lossy set-up delivers 0-10 of 90 (benchmarks/dds_check.py).
        received = int(diagnostics["frames_received"])
        assert received >= frames / 3, f"{received} of {frames} frames reached the node"
        # A reliable writer drops only what a starved reader did not acknowledge in time (its queue
        # holds 10 frames): rare, and never enough for the warning.
        assert float(diagnostics["transport_loss"]) < 0.05 and int(diagnostics["frames_lost"]) <= 0.02 * frames
        assert not [d for d in client.diagnostics if "lost in transport" in d["_message"]]
        assert len(client.results) > answered_mid_stream  # answered for the whole stream
        assert node.running, node.log()


def test_a_lossy_best_effort_camera_raises_the_transport_loss_warning(tmp_path):
    node, client, domain, ns = _start(tmp_path, "lossy_camera")
    with node, client:
        assert node.wait_for_log("ready:", 120), node.log()
        camera = _camera(client.image_topic, "best_effort", 10 * RATE_HZ, domain)
        try:
            warned = client.wait_for(lambda: [d for d in client.diagnostics if "lost in transport" in d["_message"]],
                                     60)
        finally:
            camera.kill()
        assert warned, f"no transport-loss warning; last diagnostics {client.diagnostics[-1:]}\n{node.log()}"
        diagnostics = warned[-1]
        assert diagnostics["_level"] == 1  # WARN
        assert float(diagnostics["transport_loss"]) > 0.05 and int(diagnostics["frames_lost"]) > 0
        assert "image: best effort" in diagnostics["image_qos"]
        assert "Fast DDS profile" in diagnostics["_message"]  # the fix, in /diagnostics as in the log
        log = node.log()
        assert "Fast DDS profile" in log and "publish reliably" in log  # the cause and both fixes, once
        assert node.running, log
