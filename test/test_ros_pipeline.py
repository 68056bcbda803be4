"""The node's pipeline: the publishing stage alone (order, a bound of one waiting batch, errors),
then the installed node with and without it over DDS.

    make build && bash scripts/with_ros.sh .venv-kilted/bin/python -m pytest -q test/test_ros_pipeline.py
"""
from __future__ import annotations

import os
import threading
import time

import pytest

pytest.importorskip("rclpy", reason="needs the ROS 2 environment (scripts/with_ros.sh)")

import skimage.data

import support
from affordance_clip_ros.ros.frames import stamp_ns
from affordance_clip_ros.ros.pipeline import PublishStage


def test_jobs_run_in_order_on_the_stage_thread_while_the_caller_goes_on():
    done, threads, errors, release = [], set(), [], threading.Event()
    stage = PublishStage(errors.append)

    def job(i):
        def run():
            time.sleep(0.02)
            threads.add(threading.current_thread().name)
            done.append(i)
        return run
    stage.submit(release.wait)
    stage.submit(job(0))  # returns while the stage is still held up: the caller never waits for a job
    release.set()
    for i in range(1, 10):
        stage.submit(job(i))
    assert stage.drain(5.0)
    assert done == list(range(10)) and threads == {"affordance_publish"} and not errors
    stage.close()


def test_at_most_one_job_waits_so_a_slow_stage_holds_the_caller_back():
    release, errors = threading.Event(), []
    stage = PublishStage(errors.append)
    stage.submit(release.wait)  # running, blocked
    time.sleep(0.05)
    stage.submit(lambda: None)  # waiting
    third = threading.Thread(target=stage.submit, args=(lambda: None,))
    third.start()
    third.join(0.3)
    assert third.is_alive() and stage.pending == 3  # blocked: no second job may wait
    release.set()
    third.join(2.0)
    assert not third.is_alive() and stage.drain(2.0) and stage.pending == 0
    stage.close()


def test_a_failing_job_is_reported_and_the_next_ones_still_run():
    errors, done = [], []
    stage = PublishStage(errors.append)
    stage.submit(lambda: 1 / 0)
    stage.submit(lambda: done.append("after"))
    assert stage.drain(2.0)
    assert [type(e) for e in errors] == [ZeroDivisionError] and done == ["after"]
    stage.close()


def test_close_finishes_the_submitted_jobs_first():
    done = []
    stage = PublishStage(lambda e: None)
    stage.submit(lambda: (time.sleep(0.1), done.append(1)))
    stage.close(timeout=2.0)
    assert done == [1]


# --- the node, over DDS ----------------------------------------------------------------------


TINY = {"clip_model": "RN-tiny", "clip_pretrained": "none", "device": "cpu", "prompts": "hold", "peak_threshold": 0.0}


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    """The installed node with the publishing stage (pipeline on) and without it (off)."""
    support.use_fastdds_profile_here()
    started = {}
    try:
        for salt, pipeline in enumerate(("on", "off")):
            domain, ns = support.free_domain_id(40 + salt), f"/t{os.getpid()}_pipeline_{pipeline}"
            node = support.NodeProcess({**TINY, "pipeline": pipeline}, namespace=ns,
                                       remappings=support.namespaced_remappings(ns), env=support.ros_env(domain),
                                       log_path=tmp_path_factory.mktemp("pipeline") / "node.log").start()
            started[pipeline] = (node, support.namespaced_client(ns, domain, outputs=("result", "heatmap")))
        photo = skimage.data.coffee()
        for node, client in started.values():
            assert client.stream_until(lambda c=client: c.results, photo, timeout=90), node.log()
        yield started
    finally:
        for node, client in started.values():
            client.close()
            node.stop()


def test_the_pipelined_node_publishes_what_the_serial_one_does(nodes):
    photos = [skimage.data.coffee(), skimage.data.astronaut(), skimage.data.chelsea()]
    results = {}
    for pipeline, (node, client) in nodes.items():
        results[pipeline] = []
        for i, photo in enumerate(photos):
            client.clear()
            header = client.publish_image(photo, client.header(frame_id=f"photo{i}"))
            found = client.wait_for(lambda c=client, h=header: [r for r in c.results if r.header.stamp == h.stamp], 30)
            assert found, node.log()
            results[pipeline].append(found[0])
    for pipelined, serial in zip(results["on"], results["off"]):
        assert pipelined.header.frame_id == serial.header.frame_id
        assert bytes(pipelined.maps[0].heatmap.data) == bytes(serial.maps[0].heatmap.data)
        assert [(p.u, p.v) for p in pipelined.maps[0].peaks] == [(p.u, p.v) for p in serial.maps[0].peaks]


def test_a_fast_stream_is_published_in_order_each_frame_once(nodes):
    node, client = nodes["on"]
    client.clear()
    sent = []
    for _ in range(60):  # 100 Hz, faster than the model: frames are replaced, the rest published in order
        sent.append(stamp_ns(client.publish_image(skimage.data.coffee()).stamp))
        time.sleep(0.01)
    assert client.wait_for(lambda: all(out and stamp_ns(out[-1].header.stamp) == sent[-1]
                                       for out in (client.results, client.heatmaps)), 30), node.log()
    with client.lock:  # (an output of the previous test's last frame may come after the clear)
        stamps = [stamp_ns(r.header.stamp) for r in client.results if stamp_ns(r.header.stamp) in sent]
        heatmap_stamps = [stamp_ns(h.header.stamp) for h in client.heatmaps if stamp_ns(h.header.stamp) in sent]
    assert len(stamps) > 1 and stamps == sorted(set(stamps))
    assert heatmap_stamps == stamps  # each output of a frame in the same order
    assert node.running() and "failed" not in node.log()
