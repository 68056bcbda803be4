"""Several cameras, one model: results/s, latency and memory of one grounding node serving 1, 2
and 4 cameras (parameter ``cameras``), each camera at 30 Hz, 640x480 rgb8.

Not part of CI. After ``make build``::

    bash scripts/with_ros.sh .venv-kilted/bin/python benchmarks/multi_camera.py --json multi_camera.json
    bash scripts/with_ros.sh .venv-kilted/bin/python benchmarks/multi_camera.py --clip-model RN-tiny --seconds 5

Per camera count N, the installed ``grounding_node`` runs in its own process (random CLIP
weights, one prompt, Fast DDS profile as the launch file sets it) with ``cameras: [cam0, ...]``;
this process plays N cameras (one thread each, reliable, 30 Hz) and records each camera's
``~/camN/result``. Reported per N:

* ``results_per_s``: results of all cameras per second over the run, and the least one camera got
  (``min_camera_results_per_s``: fairness);
* ``latency_ms`` / ``latency_p95_ms``: image publish -> its result received, over the answered frames;
* ``inference_ms``: the node's median ``inference_ms`` (one batched inference per result);
* ``rss_mb``: the node's resident memory (VmRSS) at the end of the run, ``peak_rss_mb`` (VmHWM);
  ``rss_of_n_nodes_mb`` = N x the one-camera node's ``rss_mb`` (what N separate nodes would hold)
  and ``rss_saved_mb``, the difference.
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
import skimage.data

from affordance_clip_ros.ros.client import GroundingClient, use_fastdds_profile_here

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "test"))
import support  # test/support/: the node as a subprocess, domain ids, the camera player

PROMPT = "drink with"
WIDTH, HEIGHT = 640, 480


def proc_status_mb(pid: int, field: str) -> float:
    """A memory line of /proc/<pid>/status (VmRSS, VmHWM) in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} line for process {pid}")


def run(n: int, model: dict, rgb, seconds: float, rate_hz: float, timeout: float) -> dict:
    """One node serving ``n`` cameras for ``seconds``; its figures."""
    names = [f"cam{i}" for i in range(n)]
    domain, ns = support.free_domain_id(salt=13 + n), f"/multicam{os.getpid()}_{n}"
    params = {**model, "cameras": names, "prompts": PROMPT, "image_qos": "reliable", "publish_overlay": False}
    node = support.NodeProcess(params, namespace=ns, remappings={"/affordance/query": f"{ns}/affordance/query"},
                               env=support.ros_env(domain)).start()
    clients = [GroundingClient(ns, domain, image_topic=f"{ns}/{name}/image", query_topic=f"{ns}/affordance/query",
                               camera=name, outputs=("result",)) for name in names]
    try:
        if not node.wait_for_log("ready", timeout):
            raise SystemExit(f"node not ready after {timeout} s; its log:\n{node.log()}")
        for client in clients:  # every camera answered once: discovery is complete
            if not client.stream_until(lambda c=client: c.results, rgb, timeout=timeout):
                raise SystemExit(f"{client.camera} never answered; the node's log:\n{node.log()}")
        time.sleep(1.0)
        cameras = [support.CameraPlayer(client, rgb, rate_hz) for client in clients]
        with contextlib.ExitStack() as playing:
            start = time.perf_counter()
            for camera in cameras:
                playing.enter_context(camera)
            time.sleep(seconds)
        elapsed = time.perf_counter() - start
        time.sleep(1.0)  # the last results
        answered = [[(latency, float(result.inference_ms)) for latency, result in camera.answered()]
                    for camera in cameras]
        rss, peak = proc_status_mb(node.pid, "VmRSS"), proc_status_mb(node.pid, "VmHWM")
    finally:
        for client in clients:
            client.close()
        node.stop()
    latencies = sorted(latency for frames in answered for latency, _ in frames)
    if not latencies:
        raise SystemExit(f"no frame was answered with {n} camera(s)")
    return {"cameras": n, "sent_per_s": sum(len(c.sent) for c in cameras) / elapsed,
            "results_per_s": len(latencies) / elapsed,
            "min_camera_results_per_s": min(len(frames) for frames in answered) / elapsed,
            "latency_ms": statistics.median(latencies), "latency_p95_ms": latencies[int(0.95 * (len(latencies) - 1))],
            "inference_ms": statistics.median(ms for frames in answered for _, ms in frames),
            "rss_mb": rss, "peak_rss_mb": peak}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clip-model", default="RN101", help="open_clip ResNet model (default RN101)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    parser.add_argument("--cameras", default="1,2,4", help="camera counts to measure, comma-separated")
    parser.add_argument("--rate", type=float, default=30.0, help="frames per second of each camera")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of streaming per camera count")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for start-up / a result")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()

    use_fastdds_profile_here()  # the launch file gives the node the same profile
    model = {"clip_model": args.clip_model, "clip_pretrained": "none", "device": args.device}
    rgb = cv2.resize(skimage.data.coffee(), (WIDTH, HEIGHT), interpolation=cv2.INTER_AREA)
    rows = [run(int(n), model, rgb, args.seconds, args.rate, args.timeout) for n in args.cameras.split(",")]
    one = next((r for r in rows if r["cameras"] == 1), None)
    for row in rows:
        if one is not None:
            row["rss_of_n_nodes_mb"] = row["cameras"] * one["rss_mb"]
            row["rss_saved_mb"] = row["rss_of_n_nodes_mb"] - row["rss_mb"]
    columns = list(rows[0])
    print(f"CLIP {args.clip_model}, device {args.device}, {WIDTH}x{HEIGHT} at {args.rate:g} Hz per camera, "
          f"{args.seconds:g} s, load average {os.getloadavg()[0]:.1f}")
    print(" | ".join(columns))
    for row in rows:
        print(" | ".join(f"{row[c]:.1f}" if isinstance(row[c], float) else str(row[c]) for c in columns))
    if args.json:
        Path(args.json).write_text(json.dumps({"clip_model": args.clip_model, "device": args.device,
                                               "load_average": os.getloadavg()[0],
                                               "rate_hz": args.rate, "seconds": args.seconds, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
