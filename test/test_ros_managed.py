"""The managed (lifecycle) node and an interruptible start-up, over DDS against the installed
executables: every transition through the standard lifecycle services, what is published in
each state, the memory cleanup gives back, and SIGINT/SIGTERM at every moment of start-up.

    make build && bash scripts/with_ros.sh .venv-kilted/bin/python -m pytest -q -s test/test_ros_managed.py
"""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("rclpy", reason="needs the ROS 2 environment (scripts/with_ros.sh)")

import skimage.data
from lifecycle_msgs.msg import TransitionEvent
from rclpy.task import Future

import support
from affordance_clip_ros.ros.client import first_answer

if not support.installed_executable("managed_grounding_node").is_file():
    pytest.fail("managed_grounding_node is not installed: run `make build`", pytrace=False)
support.use_fastdds_profile_here()

TINY = {"clip_model": "RN-tiny", "clip_pretrained": "none", "device": "cpu"}
# A real-sized model for the memory figures; the torch backend skips building the int8 engine.
RN101 = {"clip_model": "RN101", "clip_pretrained": "none", "device": "cpu", "backend": "torch"}
QUIET_S = 2.0  # how long a state must publish nothing while frames stream in


def start_managed(tag: str, salt: int, log_path, **parameters):
    domain = support.free_domain_id(salt)
    ns = f"/t{os.getpid()}_{tag}"
    node = support.NodeProcess({"prompts": "hold", **parameters}, namespace=ns,
                               remappings=support.namespaced_remappings(ns), env=support.ros_env(domain),
                               log_path=log_path, executable="managed_grounding_node").start()
    client = support.namespaced_client(ns, domain, outputs=("result", "heatmap"))
    return node, client


def published_nothing(client, rgb) -> bool:
    """Stream frames for QUIET_S seconds: True when no result, heatmap or diagnostics came."""
    client.clear()
    deadline = time.monotonic() + QUIET_S
    while time.monotonic() < deadline:
        client.publish_image(rgb)
        time.sleep(0.1)
    with client.lock:
        return not (client.results or client.heatmaps or client.diagnostics)


def node_subscribes_images(client) -> bool:
    return client.node.count_subscribers(client.image_topic) > 0


def test_every_transition_over_the_lifecycle_services(tmp_path):
    """unconfigured -> configure -> activate -> deactivate -> activate -> deactivate -> cleanup
    -> configure -> activate -> shutdown, with a real-sized model: what each state publishes,
    whether it takes camera traffic, and the memory each holds."""
    coffee = skimage.data.coffee()
    node, client = start_managed("lifecycle", 11, tmp_path / "node.log", **RN101)
    events: list[tuple[str, str]] = []
    client.node.create_subscription(
        TransitionEvent, f"{client.node_path}/transition_event",
        lambda e: events.append((e.start_state.label, e.goal_state.label)), 10)
    try:
        assert client.lifecycle_state(timeout=60) == "unconfigured", node.log()
        rss = {"unconfigured": node.rss_kb()}
        assert published_nothing(client, coffee) and not node_subscribes_images(client)

        assert client.change_state("configure"), node.log()
        assert client.lifecycle_state() == "inactive"
        rss["configured"] = node.rss_kb()
        assert published_nothing(client, coffee) and not node_subscribes_images(client)
        refused = client.ground(["hold"], image=coffee, timeout=5.0)
        assert not refused.success and "not active" in refused.message

        for _ in range(2):  # activate twice: the second time with the model kept
            assert client.change_state("activate"), node.log()
            assert client.lifecycle_state() == "active"
            assert client.stream_until(lambda: client.results and client.diagnostics, coffee, timeout=60), node.log()
            assert node_subscribes_images(client)
            assert client.ground(["hold"], image=coffee, timeout=30.0).success
            assert client.change_state("deactivate"), node.log()
            assert client.lifecycle_state() == "inactive"
            assert published_nothing(client, coffee) and not node_subscribes_images(client)
        assert node.log().count("configured: CLIP") == 1  # deactivate kept the model

        assert client.change_state("cleanup"), node.log()
        assert client.lifecycle_state() == "unconfigured"
        rss["cleaned_up"] = node.rss_kb()
        assert published_nothing(client, coffee)
        model_kb = rss["configured"] - rss["unconfigured"]
        freed_kb = rss["configured"] - rss["cleaned_up"]
        mb = {name: round(kb / 1024) for name, kb in rss.items()}
        print(f"\nRSS MB: {mb} (model {model_kb / 1024:.0f}, freed by cleanup {freed_kb / 1024:.0f})")
        assert model_kb > 200 * 1024, rss  # RN101 fp32 holds about 500 MB
        assert freed_kb > 0.7 * model_kb, rss

        assert client.change_state("configure") and client.change_state("activate"), node.log()
        assert client.stream_until(lambda: client.results, coffee, timeout=60), node.log()
        assert client.change_state("shutdown"), node.log()
        assert client.lifecycle_state() == "finalized"
        assert published_nothing(client, coffee) and not node_subscribes_images(client)
        assert node.running()
    finally:
        client.close()
        rc = node.stop()
    assert rc == 0 and "Traceback" not in node.log(), node.log()
    assert len(events) == 18, events  # nine transitions, each through its transition state
    assert ("configuring", "inactive") in events and ("activating", "active") in events
    assert ("deactivating", "inactive") in events and ("cleaningup", "unconfigured") in events
    assert ("shuttingdown", "finalized") in events


@pytest.mark.parametrize("state", ["unconfigured", "inactive", "active"])
def test_shutdown_works_from_every_state(state, tmp_path):
    node, client = start_managed(f"shutdown_{state}", 12 + len(state), tmp_path / "node.log", **TINY)
    try:
        assert client.lifecycle_state(timeout=60) == "unconfigured"
        for transition in {"unconfigured": [], "inactive": ["configure"], "active": ["configure", "activate"]}[state]:
            assert client.change_state(transition), node.log()
        assert client.lifecycle_state() == state
        if state != "active":  # a transition the state does not offer is refused, the state stays
            assert not client.change_state("activate" if state == "unconfigured" else "deactivate")
            assert client.lifecycle_state() == state
        assert client.change_state("shutdown"), node.log()
        assert client.lifecycle_state() == "finalized"
        assert node.running()
    finally:
        client.close()
        rc = node.stop()
    assert rc == 0 and "Traceback" not in node.log(), node.log()


def test_an_unanswered_request_is_sent_again_and_the_first_answer_wins():
    """A service response lost in DDS (a new client's first calls on a busy host) costs a resend,
    not the caller's whole timeout; what stays unanswered is forgotten."""
    sent, forgotten = [], []

    def send() -> Future:
        sent.append(Future())
        if len(sent) == 3:  # the third request is answered, at once
            sent[-1].set_result(f"answer {len(sent)}")
        return sent[-1]

    start = time.monotonic()
    assert first_answer(send, forgotten.append, "test", answer_s=10.0, resend_s=0.2) == "answer 3"
    assert 0.35 < time.monotonic() - start < 2.0
    assert forgotten == sent[:2]
    with pytest.raises(TimeoutError, match="test did not answer within 0.5 s"):
        first_answer(Future, forgotten.append, "test", answer_s=0.5)


def test_a_failed_configure_is_reported_and_the_node_stays_unconfigured_and_alive(tmp_path):
    node, client = start_managed("bad_weights", 13, tmp_path / "node.log", **dict(
        TINY, clip_pretrained="/nonexistent/open_clip_model.safetensors"))
    try:
        assert client.lifecycle_state(timeout=60) == "unconfigured"
        assert not client.change_state("configure")
        assert client.lifecycle_state() == "unconfigured" and node.running()
        log = node.log()
        assert "configure failed" in log and "clip_pretrained" in log and "Fix:" in log, log
        assert not client.change_state("configure")  # tried again: the same clear failure, still alive
        assert client.change_state("shutdown") and client.lifecycle_state() == "finalized"
    finally:
        client.close()
        rc = node.stop()
    assert rc == 0 and "Traceback" not in node.log(), node.log()


def test_several_cameras_follow_the_transitions_together(tmp_path):
    """With cameras set, activate serves every camera and deactivate unsubscribes every one."""
    coffee = skimage.data.coffee()
    domain, ns = support.free_domain_id(17), f"/t{os.getpid()}_managed_cams"
    node = support.NodeProcess({**TINY, "prompts": "hold", "cameras": ["head", "wrist"]}, namespace=ns,
                               remappings={"/affordance/query": f"{ns}/affordance/query"},
                               env=support.ros_env(domain), log_path=tmp_path / "node.log",
                               executable="managed_grounding_node").start()
    clients = {name: support.GroundingClient(ns, domain, image_topic=f"{ns}/{name}/image", camera=name,
                                             query_topic=f"{ns}/affordance/query", outputs=("result",))
               for name in ("head", "wrist")}
    head = clients["head"]
    try:
        assert head.lifecycle_state(timeout=60) == "unconfigured"
        assert head.change_state("configure") and head.change_state("activate"), node.log()
        for name, client in clients.items():
            assert client.stream_until(lambda c=client: c.results, coffee, timeout=60, frame_id=name), node.log()
            assert node_subscribes_images(client)
        assert head.change_state("deactivate"), node.log()
        for client in clients.values():
            assert published_nothing(client, coffee) and not node_subscribes_images(client)
    finally:
        for client in clients.values():
            client.close()
        rc = node.stop()
    assert rc == 0 and "Traceback" not in node.log(), node.log()


@pytest.mark.parametrize("executable", ["grounding_node", "managed_grounding_node"])
def test_a_stopped_node_leaves_no_shared_memory_behind(executable, tmp_path):
    """Fast DDS keeps a participant's shared-memory files in /dev/shm until the participant is
    deleted; a node that ends without deleting it leaves them there until the machine restarts
    (35 MB each with the package's profile). The node runs alone in its domain, so every file
    that appears while it runs is its own."""
    shm = Path("/dev/shm")
    before = set(os.listdir(shm))
    node = support.NodeProcess(TINY, namespace=f"/t{os.getpid()}_shm", env=support.ros_env(support.free_domain_id(17)),
                               log_path=tmp_path / "node.log", executable=executable).start()
    deadline = time.monotonic() + 60
    while not set(os.listdir(shm)) - before and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(2.0)  # every transport of the participant is up
    created = {name for name in set(os.listdir(shm)) - before if name.startswith(("fastdds_", "fastrtps_"))}
    assert created, f"the node created no shared-memory file (is the Fast DDS profile applied?)\n{node.log()}"
    assert node.stop() == 0, node.log()
    assert not created & set(os.listdir(shm)), f"left in /dev/shm: {sorted(created & set(os.listdir(shm)))}"


# --- an interruptible start-up ---------------------------------------------------------------

def _interrupt(proc: support.NodeProcess, sig: int) -> tuple[int, float]:
    start = time.monotonic()
    proc.send_signal(sig)
    try:
        rc = proc.wait(10)
    finally:
        proc.stop()
    return rc, time.monotonic() - start


def _assert_ended_at_once(name: str, proc: support.NodeProcess, rc: int, elapsed: float) -> None:
    log = proc.log()
    print(f"\n{name}: exit code {rc} after {elapsed:.2f} s")
    assert elapsed < 2.0, f"{name}: exit took {elapsed:.2f} s\n{log}"
    assert rc == 0, f"{name}: exit code {rc}\n{log}"
    assert "Traceback" not in log and "KeyboardInterrupt" not in log, f"{name}:\n{log}"


# While the int8 image path of RN101 is built (quantisation and the fidelity check: seconds of C
# code): the log line that precedes it.
BUILDING = "No FPN checkpoint: using the training-free dense CLIP head."
RN101_INT8 = {"clip_model": "RN101", "clip_pretrained": "none", "device": "cpu", "backend": "onnxruntime",
              "precision": "int8"}


@pytest.mark.parametrize("executable", ["grounding_node", "managed_grounding_node"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_importing_ends_the_process_within_2_s(executable, sig, tmp_path):
    env = support.ros_env(support.free_domain_id(14))
    proc = support.NodeProcess(TINY, namespace=f"/t{os.getpid()}_imports", env=env, log_path=tmp_path / "node.log",
                               executable=executable).start()
    time.sleep(0.5)  # python is importing torch and rclpy
    assert proc.running() and "ready" not in proc.log()
    _assert_ended_at_once(f"{executable} {signal.Signals(sig).name} at 0.5 s", proc, *_interrupt(proc, sig))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_the_engine_is_built_ends_the_process_within_2_s(sig, tmp_path):
    env = support.ros_env(support.free_domain_id(15))
    proc = support.NodeProcess(RN101_INT8, namespace=f"/t{os.getpid()}_engine", env=env,
                               log_path=tmp_path / "node.log").start()
    assert proc.wait_for_log(BUILDING, 120), proc.log()
    time.sleep(1.0)  # inside the ONNX export / quantisation
    assert proc.running() and "ready" not in proc.log()
    _assert_ended_at_once(f"grounding_node {signal.Signals(sig).name} while building", proc, *_interrupt(proc, sig))


def test_a_signal_during_configure_ends_the_process_within_2_s(tmp_path):
    node, client = start_managed("configure_signal", 16, tmp_path / "node.log", **RN101_INT8)
    try:
        assert client.lifecycle_state(timeout=60) == "unconfigured"
        configure = threading.Thread(target=lambda: _raised(client.change_state, "configure"), daemon=True)
        configure.start()
        assert node.wait_for_log(BUILDING, 120), node.log()
        time.sleep(1.0)  # inside the ONNX export / quantisation; the executor is busy with the transition
        assert node.running() and "configured: CLIP" not in node.log()
        outcome = _interrupt(node, signal.SIGINT)
    finally:
        client.close()
        node.stop()
    _assert_ended_at_once("managed_grounding_node SIGINT during configure", node, *outcome)


def _raised(fn, *args) -> BaseException | None:
    try:
        fn(*args)
    except BaseException as e:  # the caller inspects it
        return e
    return None
