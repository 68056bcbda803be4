#!/usr/bin/env python3
"""`make demo`: the installed grounding node on a simulated RGB-D camera, end to end over ROS 2.

    bash scripts/with_ros.sh .venv-kilted/bin/python scripts/ros_demo.py --out demo_output

Starts `grounding_node` (CLIP RN101, the paper's model) as its own process, plays two real
photos from scikit-image as a camera and publishes prompts on the query topic:

* coffee (cup, saucer, spoon) with "drink with; hold";
* the left image of the Middlebury "Motorcycle" stereo pair with "ride", plus its depth (from
  the disparity: depth = baseline * f / (disparity + doffs)) and CameraInfo, for 3D points.

It writes the received overlays (`<scene>_overlay.png`), result summaries (`<scene>.json`:
prompts, peaks, 3D points, timings) and the node's log and last diagnostics into --out, prints
a short summary and exits 0. CLIP weights: `openai` when they are in the local cache, otherwise
random weights (`none`) with a loud note (the maps are then meaningless; the plumbing is not).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import skimage.data
from sensor_msgs.msg import CameraInfo

from affordance_clip_ros.model.weights import cached_weights_file
from affordance_clip_ros.ros.client import use_fastdds_profile_here
from affordance_clip_ros.ros.conversions import image_to_numpy
from affordance_clip_ros.ros.frames import stamp_ns

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "test"))
import support  # test/support/: the node as a subprocess, domain ids, the Motorcycle RGB-D frame

BANNER = """
#############################################################################################
#  No OpenAI CLIP {model} weights in the local cache: the demo runs CLIP with RANDOM weights  #
#  (clip_pretrained:=none). Every topic, message and file is produced, but the heatmaps     #
#  are meaningless. For real maps put the weights in the cache or pass a file:              #
#      scripts/ros_demo.py --clip-pretrained /path/to/open_clip_model.safetensors            #
#  (docs/install.md, "CLIP weights").                                                      #
#############################################################################################
"""


def run_scene(client, name: str, rgb: np.ndarray, prompts: str, frames: int, out: Path, timeout: float,
              depth: tuple[np.ndarray, str] | None = None, info: CameraInfo | None = None) -> dict:
    """Publish the prompts, then one frame at a time (waiting for its result) ``frames`` times."""
    client.clear()
    client.publish_prompt(prompts)
    wanted = [p.strip() for p in prompts.split(";")]
    # Until the node answers with these prompts (the first frames may precede discovery).
    ready = client.stream_until(lambda: [r for r in client.results if [m.prompt for m in r.maps] == wanted],
                                rgb, timeout=timeout, period=1.0, depth=depth, info=info, frame_id=f"{name}_optical")
    if not ready:
        raise TimeoutError(f"{name}: no result with prompts {wanted} within {timeout:.0f} s")
    latencies, inference, result, overlay = [], [], None, None
    for _ in range(frames):
        client.clear()
        header = client.publish_frame(rgb, depth, info, frame_id=f"{name}_optical")
        got = client.wait_for(lambda header=header: [r for r in client.results if r.header.stamp == header.stamp],
                              timeout)
        if not got:
            raise TimeoutError(f"{name}: frame not answered within {timeout:.0f} s")
        received = time.time_ns()
        result = got[0]
        latencies.append((received - stamp_ns(header.stamp)) / 1e6)
        inference.append(result.inference_ms)
        overlay = client.wait_for(
            lambda header=header: [o for o in client.overlays if o.header.stamp == header.stamp], 5.0)
    cv2.imwrite(str(out / f"{name}_overlay.png"), image_to_numpy(overlay[0]))
    summary = {
        "image": f"{rgb.shape[1]}x{rgb.shape[0]}", "frames": frames,
        "end_to_end_ms_median": statistics.median(latencies), "inference_ms_median": statistics.median(inference),
        "maps": [{"prompt": m.prompt,
                  "peaks": [{"u": p.u, "v": p.v, "score": round(p.score, 4),
                             "xyz_m": [round(p.point.x, 4), round(p.point.y, 4), round(p.point.z, 4)]
                             if p.has_point else None} for p in m.peaks]}
                 for m in result.maps],
    }
    (out / f"{name}.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo_output", help="output folder (default: demo_output)")
    parser.add_argument("--clip-model", default="RN101", help="open_clip ResNet CLIP (default: RN101)")
    parser.add_argument("--clip-pretrained", default=None,
                        help="CLIP weights: tag, file or none (default: openai when cached, else none)")
    parser.add_argument("--frames", type=int, default=3, help="frames timed per scene (default: 3)")
    parser.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for the node (default: 90)")
    args = parser.parse_args()

    pretrained = args.clip_pretrained
    if pretrained is None:
        pretrained = "openai" if cached_weights_file(args.clip_model, "openai") else "none"
        if pretrained == "none":
            print(BANNER.format(model=args.clip_model), file=sys.stderr)
    out = Path(args.out) / "ros"
    out.mkdir(parents=True, exist_ok=True)

    use_fastdds_profile_here()  # the camera side too (as a driver launched with it would)
    domain, namespace = support.free_domain_id(11), f"/ros_demo_{os.getpid()}"
    remaps = support.namespaced_remappings(namespace)
    parameters = {"clip_model": args.clip_model, "clip_pretrained": pretrained, "use_depth": True,
                  "image_qos": "auto", "max_depth_age": 0.05}
    start = time.monotonic()
    print(f"starting grounding_node (CLIP {args.clip_model}, weights '{pretrained}') in {namespace} ...")
    node = support.NodeProcess(parameters, namespace=namespace, remappings=remaps, env=support.ros_env(domain),
                               params_file=support.installed_share() / "config" / "grounding.yaml",
                               log_path=out / "node.log").start()
    client = support.namespaced_client(namespace, domain)
    try:
        if not node.wait_for_log("ready:", args.timeout) or not node.running():
            print(f"the node did not start; its log ({out / 'node.log'}):\n{node.log()}", file=sys.stderr)
            return 1
        print(f"node ready after {time.monotonic() - start:.0f} s")
        left, depth, info = support.motorcycle_rgbd()
        scenes = {
            "coffee": run_scene(client, "coffee", skimage.data.coffee(), "drink with; hold", args.frames, out,
                                args.timeout),
            "motorcycle": run_scene(client, "motorcycle", left, "ride", args.frames, out, args.timeout,
                                    depth=(depth, "32FC1"), info=info),
        }
        diagnostics = client.latest_diagnostics(timeout=3.0)
        (out / "diagnostics.json").write_text(json.dumps(diagnostics, indent=2))
    except TimeoutError as e:
        print(f"demo failed: {e}\nnode log: {out / 'node.log'}", file=sys.stderr)
        return 1
    finally:
        client.close()
        node.stop()

    print(f"\nAffordance grounding over ROS 2 (CLIP {args.clip_model}, weights '{pretrained}', "
          f"{diagnostics.get('model_mode', '?')} head on {diagnostics.get('device', '?')}):")
    for name, s in scenes.items():
        best = ", ".join(f"'{m['prompt']}' best peak ({m['peaks'][0]['u']:.0f}, {m['peaks'][0]['v']:.0f})"
                         + (f" at {m['peaks'][0]['xyz_m']} m" if m['peaks'][0]['xyz_m'] else "")
                         if m["peaks"] else f"'{m['prompt']}' no peak" for m in s["maps"])
        print(f"  {name:10s} {s['image']}: end-to-end {s['end_to_end_ms_median']:.0f} ms "
              f"(model {s['inference_ms_median']:.0f} ms); {best}")
    print(f"Wrote overlays, summaries, diagnostics and the node log to {out}/ "
          f"({time.monotonic() - start:.0f} s in all).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
