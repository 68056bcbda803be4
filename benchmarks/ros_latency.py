"""End-to-end latency of the grounding node through DDS: image publish -> ``~/result`` receipt.

Not part of CI. After ``make build``::

    bash scripts/with_ros.sh .venv-kilted/bin/python benchmarks/ros_latency.py --json ros_latency.json
    bash scripts/with_ros.sh .venv-kilted/bin/python benchmarks/ros_latency.py --clip-model RN-tiny --frames 5  # quick

The installed ``grounding_node`` runs in its own process (random CLIP weights, one prompt,
Fast DDS profile as the launch file sets it); this process publishes one frame at a time
(rgb8, reliable) and waits for the ``~/result`` carrying that frame's stamp, so no frame queues
behind another. Per resolution (640x480, 1280x720) it reports:

* ``e2e_ms``: publish -> result received (median), and ``model_ms``: the node's own
  ``inference_ms`` of the same frames (grounder.predict: model, maps, host copy, peaks);
  ``ros_overhead_ratio`` = e2e / model.
* ``service_ms`` / ``service_max_ms``: ``~/ground`` with the frame in the request, request ->
  response (median, slowest), and ``service_model_ms``, the node's ``inference_ms`` in it.
* ``e2e_fps``: results per second, from the first publish to the last result, while frames are
  published at ``--rate-hz`` (default 100 Hz; 200 for a fast camera), faster than the node takes
  them (it processes the newest frame and drops the others); ``loaded_e2e_ms`` /
  ``loaded_e2e_p95_ms`` / ``loaded_e2e_max_ms``: publish -> result of the frames answered in that
  stream (the latency a planner sees at full camera rate).
* With ``--pipeline both``, a node with parameter ``pipeline: off`` is measured in turn with one
  with ``pipeline: on`` (stream windows alternating, two rounds averaged, so that a change of the
  machine's load hits both alike): its figures end in ``_serial``, and ``pipeline_speedup_<size>``
  is the ratio of the two ``e2e_fps``.
* Costs measured here, in-process, with the node's own functions (median ms): ``convert_ms``
  (sensor_msgs/Image -> RGB array), ``messages_ms`` (heatmap Image + AffordanceResult),
  ``overlay_ms`` (colour map, blend, peaks; published because someone subscribes to ~/overlay),
  ``serialize_ms`` (CDR of the input image, the result and the overlay), ``deserialize_ms``
  (of the input image), and message sizes.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import skimage.data
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from affordance_clip_ros.model import AffordanceGrounder, GrounderConfig
from affordance_clip_ros.msg import AffordanceResult
from affordance_clip_ros.ros.client import GroundingClient, use_fastdds_profile_here
from affordance_clip_ros.ros.conversions import numpy_to_image, rgb_from_image
from affordance_clip_ros.ros.inference import predict_frames
from affordance_clip_ros.ros.messages import heatmap_image, result_message

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "test"))
import support  # test/support/: the node as a subprocess, domain ids, the Motorcycle RGB-D frame

RESOLUTIONS = ((640, 480), (1280, 720))
PROMPT = "drink with"


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def frame(width: int, height: int) -> np.ndarray:
    return cv2.resize(skimage.data.coffee(), (width, height), interpolation=cv2.INTER_AREA)


def in_process_costs(grounder: AffordanceGrounder, rgb: np.ndarray, repeats: int) -> dict:
    """What the node does around the model for one frame, timed piece by piece."""
    header = Header(frame_id="camera")
    msg = numpy_to_image(rgb, "rgb8", header)
    [maps] = predict_frames(grounder, [rgb], [PROMPT])
    [pred] = maps.predictions
    heatmaps = [heatmap_image(pred.heatmap, header)]
    result = result_message(header, [pred], [None], 0.0, heatmaps)
    overlay = numpy_to_image(maps.overlay(rgb, 0.5), "bgr8", header)
    raw = serialize_message(msg)
    # the model with the copy of its map to the host; the overlay as the node draws it (on CUDA: blended there)
    return {
        "model_in_process_ms": median_ms(lambda: predict_frames(grounder, [rgb], [PROMPT])[0].heatmap(0), repeats),
        "convert_ms": median_ms(lambda: rgb_from_image(msg), repeats),
        "messages_ms": median_ms(lambda: result_message(header, [pred], [None], 0.0,
                                                        [heatmap_image(pred.heatmap, header)]), repeats),
        "overlay_ms": median_ms(lambda: numpy_to_image(maps.overlay(rgb, 0.5), "bgr8", header), repeats),
        "serialize_ms": median_ms(lambda: (serialize_message(msg), serialize_message(result),
                                           serialize_message(overlay)), repeats),
        "deserialize_ms": median_ms(lambda: deserialize_message(raw, Image), repeats),
        "image_mb": len(raw) / 2**20,
        "result_mb": len(serialize_message(result)) / 2**20,
        "overlay_mb": len(serialize_message(overlay)) / 2**20,
    }


def node_latency(client: GroundingClient, rgb: np.ndarray, frames: int, timeout: float) -> dict:
    """Publish one frame, wait for its result; ``frames`` times after a warm-up."""
    if not client.stream_until(lambda: len(client.results) >= 2, rgb, timeout=timeout):
        raise TimeoutError("the node never answered at this resolution")
    e2e, model = [], []
    for _ in range(frames):
        time.sleep(0.2)  # let the previous frame's outputs drain
        header = client.header()
        start = time.perf_counter()
        client.publish_image(rgb, header)
        result: AffordanceResult | None = client.wait_for(
            lambda header=header: next((r for r in client.results if r.header.stamp == header.stamp), None), timeout)
        if result is None:
            raise TimeoutError("no result for a published frame")
        e2e.append((time.perf_counter() - start) * 1e3)
        model.append(float(result.inference_ms))
    e2e_ms, model_ms = statistics.median(e2e), statistics.median(model)
    return {"e2e_ms": e2e_ms, "e2e_max_ms": max(e2e), "model_ms": model_ms, "ros_overhead_ratio": e2e_ms / model_ms}


def service_latency(client: GroundingClient, rgb: np.ndarray, frames: int, timeout: float) -> dict:
    """``~/ground`` with the frame in the request, as a planner calls it: request to response
    (``service_ms`` median and max) and the node's inference time in it; ``frames`` times."""
    client.ground(["hold"], image=rgb, timeout=timeout)  # warm-up
    round_trip, model = [], []
    for _ in range(frames):
        start = time.perf_counter()
        response = client.ground(["hold"], image=rgb, timeout=timeout)
        if not response.success:
            raise RuntimeError(f"~/ground failed: {response.message}")
        round_trip.append((time.perf_counter() - start) * 1e3)
        model.append(float(response.result.inference_ms))
    return {"service_ms": statistics.median(round_trip), "service_max_ms": max(round_trip),
            "service_model_ms": statistics.median(model)}


def node_throughput(client: GroundingClient, rgb: np.ndarray, seconds: float, rate_hz: float = 100.0
                    ) -> dict:
    """For frames published at ``rate_hz`` for ``seconds``: results per second (``e2e_fps``) and
    the latency of the frames answered, publish to result (``loaded_e2e_ms`` median, p95, max)."""
    time.sleep(0.5)
    published: dict[tuple[int, int], float] = {}
    start = time.perf_counter()
    for i in range(int(seconds * rate_hz)):
        sent = time.perf_counter()
        header = client.publish_image(rgb)
        published[(header.stamp.sec, header.stamp.nanosec)] = sent
        time.sleep(max(0.0, start + (i + 1) / rate_hz - time.perf_counter()))

    def latencies() -> list[float]:
        with client.lock:
            return [(arrival - published[stamp]) * 1e3 for r, arrival in zip(client.results, client.result_arrivals)
                    if (stamp := (r.header.stamp.sec, r.header.stamp.nanosec)) in published]

    # until the last result is in (1 s without a new one): results over the time they took
    count, last_change = len(latencies()), time.perf_counter()
    while time.perf_counter() - last_change < 1.0:
        time.sleep(0.02)
        if (now := len(latencies())) != count:
            count, last_change = now, time.perf_counter()
    answered = sorted(latencies())
    if not answered:
        raise TimeoutError("no frame of the stream was answered")
    return {"e2e_fps": count / (last_change - start), "loaded_e2e_ms": statistics.median(answered),
            "loaded_e2e_p95_ms": answered[int(0.95 * (len(answered) - 1))], "loaded_e2e_max_ms": answered[-1]}


def measure_nodes(variants: dict[str, dict], grounder: AffordanceGrounder, args) -> dict:
    """Start one node per variant (name -> parameters; figures of a variant named X get the suffix
    _X, the first variant none) and measure them at every resolution of ``args``. Their stream
    windows alternate (two rounds, averaged), so a change of the machine's load hits both alike."""
    results: dict = {}
    with contextlib.ExitStack() as stack:
        running = {}
        for i, (name, params) in enumerate(variants.items()):
            domain, ns = support.free_domain_id(salt=11 + i), f"/latency{os.getpid()}_{i}"
            start = time.monotonic()
            node = stack.enter_context(support.NodeProcess(params, namespace=ns, env=support.ros_env(domain),
                                                           remappings=support.namespaced_remappings(ns)))
            client = stack.enter_context(support.namespaced_client(ns, domain))
            if not node.wait_for_log("ready", args.timeout):
                raise SystemExit(f"node not ready after {args.timeout} s; its log:\n{node.log()}")
            suffix = f"_{name}" if i else ""
            results[f"node_startup_s{suffix}"] = time.monotonic() - start
            running[suffix] = (node, client)
        for width, height in (map(int, size.split("x")) for size in args.resolutions):
            rgb, size = frame(width, height), f"{width}x{height}"
            for suffix, (_, client) in running.items():
                for name, value in {**node_latency(client, rgb, args.frames, args.timeout),
                                    **service_latency(client, rgb, args.frames, args.timeout)}.items():
                    results[f"{name}_{size}{suffix}"] = value
            if args.throughput_seconds > 0:
                rounds = [{suffix: node_throughput(client, rgb, args.throughput_seconds / 2, args.rate_hz)
                           for suffix, (_, client) in running.items()} for _ in range(2)]
                for suffix in running:
                    for name in rounds[0][suffix]:
                        results[f"{name}_{size}{suffix}"] = statistics.mean(r[suffix][name] for r in rounds)
            for name, value in in_process_costs(grounder, rgb, max(3, args.frames // 2)).items():
                results[f"{name}_{size}"] = value
        for suffix, (node, _) in running.items():
            results[f"node_rss_mb{suffix}"] = node.rss_kb() / 1024
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clip-model", default="RN101", help="open_clip ResNet model (default RN101)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    parser.add_argument("--backend", default="auto", help="grounder backend (auto, torch, onnxruntime)")
    parser.add_argument("--compile", default="auto", help="compile node parameter: auto (CUDA graphs on CUDA), off, "
                        "cuda-graphs, or a torch.compile mode")
    parser.add_argument("--frames", type=int, default=10, help="timed frames per resolution (median reported)")
    parser.add_argument("--throughput-seconds", type=float, default=3.0,
                        help="seconds of the --rate-hz stream for e2e_fps (0: not measured)")
    parser.add_argument("--rate-hz", type=float, default=100.0, help="camera rate of that stream")
    parser.add_argument("--resolutions", nargs="+", default=[f"{w}x{h}" for w, h in RESOLUTIONS],
                        help="image sizes WIDTHxHEIGHT (default 640x480 1280x720)")
    parser.add_argument("--pipeline", choices=("auto", "on", "off", "both"), default="auto",
                        help="node parameter pipeline; both: on, and off measured in turn with it (figures "
                        "suffixed _serial), and pipeline_speedup_<size> = e2e_fps / e2e_fps_serial")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for start-up / a result")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()

    use_fastdds_profile_here()  # the launch file gives the node the same profile
    model = {"clip_model": args.clip_model, "clip_pretrained": "none", "device": args.device, "backend": args.backend,
             "compile": args.compile}
    params = {**model, "prompts": PROMPT, "image_qos": "reliable", "publish_overlay": True}
    grounder = AffordanceGrounder.from_config(GrounderConfig(**model))
    results: dict = {"clip_model": args.clip_model, "device": str(grounder.device), "backend": args.backend,
                     "compile": args.compile, "rate_hz": args.rate_hz, "frames": args.frames,
                     "rmw": os.environ.get("RMW_IMPLEMENTATION", ""),
                     "grounder_backend": grounder.backend}
    variants = {"pipeline": {**params, "pipeline": "on" if args.pipeline == "both" else args.pipeline}}
    if args.pipeline == "both":
        variants["serial"] = {**params, "pipeline": "off"}
    results.update(measure_nodes(variants, grounder, args))
    if args.pipeline == "both":
        for size in args.resolutions:
            if f"e2e_fps_{size}" in results:
                results[f"pipeline_speedup_{size}"] = results[f"e2e_fps_{size}"] / results[f"e2e_fps_{size}_serial"]
    width = max(len(k) for k in results)
    for key, value in results.items():
        print(f"{key:<{width}}  {value:.3f}" if isinstance(value, float) else f"{key:<{width}}  {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
