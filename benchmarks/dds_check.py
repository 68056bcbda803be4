#!/usr/bin/env python3
"""What your DDS set-up delivers: camera-sized images between two processes, per QoS and profile.

    bash scripts/with_ros.sh .venv-kilted/bin/python benchmarks/dds_check.py
    bash scripts/with_ros.sh .venv-kilted/bin/python benchmarks/dds_check.py --width 1280 --height 720 \\
        --rate 30 --frames 90 --runs 3 --json dds_check.json

For each row, a camera process publishes ``--frames`` rgb8 images at ``--rate`` Hz and a plain
rclpy subscriber in another process counts what arrives, with the package's Fast DDS profile
(config/fastdds_profile.xml) given to nobody, the subscriber, the camera or both. Each row runs in
its own ROS domain; the camera waits until the subscriber has matched and one more second for
discovery to settle before it counts. Besides frames received, the subscriber reports what it could
know of its losses: DDS message-lost events and gaps in the publisher's sequence numbers (the
signals the grounding node's /diagnostics uses).

The two roles can also be run alone, for example a camera for a test::

    dds_check.py camera --topic /cam/image --reliability reliable --frames 300
    dds_check.py count --topic /cam/image --reliability best_effort --timeout 20
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np
import rclpy
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from affordance_clip_ros.ros.client import fastdds_profile_path
from affordance_clip_ros.ros.compat import PROFILE_VARIABLES, fastdds_profile_variable
from affordance_clip_ros.ros.conversions import numpy_to_image

RELIABILITY = {"reliable": ReliabilityPolicy.RELIABLE, "best_effort": ReliabilityPolicy.BEST_EFFORT}
TOPIC = "/dds_check/image"


@dataclass(frozen=True)
class Row:
    camera: str  # reliable | best_effort
    subscriber: str
    profile_on: str  # nobody | subscriber | camera | both
    builtin_transports: str = ""  # FASTDDS_BUILTIN_TRANSPORTS on both sides, e.g. LARGE_DATA

    def label(self) -> str:
        extra = f", FASTDDS_BUILTIN_TRANSPORTS={self.builtin_transports} on both" if self.builtin_transports else ""
        return f"{self.camera} -> {self.subscriber}, profile on {self.profile_on}{extra}"


ROWS = (
    Row("reliable", "best_effort", "nobody"),
    Row("reliable", "best_effort", "subscriber"),
    Row("reliable", "reliable", "nobody"),
    Row("best_effort", "best_effort", "nobody"),
    Row("best_effort", "best_effort", "subscriber"),
    Row("best_effort", "best_effort", "camera"),
    Row("best_effort", "best_effort", "both"),
    Row("best_effort", "best_effort", "nobody", "LARGE_DATA"),
)


def image_qos(reliability: str, depth: int) -> QoSProfile:
    return QoSProfile(depth=depth, reliability=RELIABILITY[reliability], history=HistoryPolicy.KEEP_LAST,
                      durability=DurabilityPolicy.VOLATILE)


def run_camera(args: argparse.Namespace) -> int:
    """Publish ``frames`` noise images at ``rate`` Hz once a subscriber has matched (or at once)."""
    rclpy.init()
    node = rclpy.create_node(f"dds_check_camera_{os.getpid()}")
    # A driver's usual publisher: queue of 10 (ROS 2's default), reliability as given.
    publisher = node.create_publisher(Image, args.topic, image_qos(args.reliability, 10))
    frame = np.random.default_rng(0).integers(0, 256, (args.height, args.width, 3), dtype=np.uint8)
    deadline = time.monotonic() + args.match_timeout
    while args.wait_for_subscriber and publisher.get_subscription_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if args.wait_for_subscriber:
        time.sleep(1.0)  # endpoint discovery settles; frames sent before it are lost to any QoS
    print("publishing", flush=True)
    period, start = 1.0 / args.rate, time.monotonic()
    for i in range(args.frames):
        message = numpy_to_image(frame, "rgb8")
        message.header.stamp = node.get_clock().now().to_msg()
        message.header.frame_id = "dds_check_optical"
        publisher.publish(message)
        time.sleep(max(0.0, start + (i + 1) * period - time.monotonic()))
    time.sleep(args.linger)  # let a reliable writer repair what is still in flight
    node.destroy_node()
    rclpy.shutdown()
    return 0


def run_count(args: argparse.Namespace) -> int:
    """Count images until ``timeout`` s pass, or ``idle`` s after the first with nothing new; print JSON."""
    rclpy.init()
    node = rclpy.create_node(f"dds_check_count_{os.getpid()}")
    counts = {"received": 0, "lost_events": 0, "sequence_gaps": 0}
    last_sequence: dict[str, int] = {}
    last_at = [0.0]

    def on_image(_msg: Image, info) -> None:
        counts["received"] += 1
        last_at[0] = time.monotonic()
        sequence = info.get("publication_sequence_number") or 0
        gid = info.get("publisher_gid")
        publisher = str(gid["data"] if isinstance(gid, dict) and "data" in gid else gid)
        if sequence and publisher in last_sequence:
            counts["sequence_gaps"] += max(0, sequence - last_sequence[publisher] - 1)
        if sequence:
            last_sequence[publisher] = sequence

    def on_lost(info) -> None:
        counts["lost_events"] += int(info.total_count_change)

    node.create_subscription(Image, args.topic, on_image, image_qos(args.reliability, 1),
                             event_callbacks=SubscriptionEventCallbacks(message_lost=on_lost))
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    print("ready", flush=True)
    start = time.monotonic()
    while time.monotonic() - start < args.timeout:
        executor.spin_once(timeout_sec=0.05)
        if counts["received"] and time.monotonic() - last_at[0] > args.idle:
            break
    print(json.dumps(counts), flush=True)
    node.destroy_node()
    rclpy.shutdown()
    return 0


def _environment(domain_id: int, profile: bool, builtin_transports: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in PROFILE_VARIABLES}
    env["ROS_DOMAIN_ID"] = str(domain_id)
    if profile:
        env[fastdds_profile_variable()] = str(fastdds_profile_path())
    if builtin_transports:
        env["FASTDDS_BUILTIN_TRANSPORTS"] = builtin_transports
    return env


def measure(row: Row, args: argparse.Namespace, domain_id: int) -> dict:
    """One run of ``row``: the subscriber first, then the camera; what the subscriber counted."""
    me = [sys.executable, os.path.abspath(__file__)]
    shape = ["--width", str(args.width), "--height", str(args.height)]
    count = subprocess.Popen(
        [*me, "count", "--topic", TOPIC, "--reliability", row.subscriber,
         "--timeout", str(args.frames / args.rate + 20), "--idle", "3"],
        env=_environment(domain_id, row.profile_on in ("subscriber", "both"), row.builtin_transports),
        stdout=subprocess.PIPE, text=True)
    try:
        assert count.stdout is not None
        count.stdout.readline()  # "ready"
        subprocess.run([*me, "camera", "--topic", TOPIC, "--reliability", row.camera, *shape,
                        "--rate", str(args.rate), "--frames", str(args.frames), "--wait-for-subscriber"],
                       env=_environment(domain_id, row.profile_on in ("camera", "both"), row.builtin_transports),
                       check=True, stdout=subprocess.DEVNULL, timeout=args.frames / args.rate + 60)
        out, _ = count.communicate(timeout=args.frames / args.rate + 30)
    finally:
        if count.poll() is None:
            count.kill()
    return json.loads(out.strip().splitlines()[-1])


def run_table(args: argparse.Namespace) -> int:
    import platform
    from importlib.metadata import version

    base = random.Random(os.getpid()).randrange(120, 200)
    results = []
    for i, row in enumerate(ROWS):
        runs = [measure(row, args, (base + i * args.runs + r) % 232) for r in range(args.runs)]
        results.append({"row": row.__dict__, "label": row.label(), "runs": runs})
        received = ", ".join(str(r["received"]) for r in runs)
        print(f"{row.label():<72} {received} of {args.frames}", flush=True)
    report = {"width": args.width, "height": args.height, "rate_hz": args.rate, "frames": args.frames,
              "ros_distro": os.environ.get("ROS_DISTRO", ""), "rclpy": version("ros-rclpy"),
              "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores", "rows": results}
    print()
    print(f"| camera publishes | subscriber | package profile on | frames received of {args.frames} "
          "| DDS lost events | sequence gaps |")
    print("|---|---|---|---|---|---|")
    for result in results:
        row, runs = result["row"], result["runs"]
        profile = row["profile_on"] + (f" (FASTDDS_BUILTIN_TRANSPORTS={row['builtin_transports']} on both)"
                                       if row["builtin_transports"] else "")
        cells = [", ".join(str(r[key]) for r in runs) for key in ("received", "lost_events", "sequence_gaps")]
        print(f"| {row['camera'].replace('_', ' ')} | {row['subscriber'].replace('_', ' ')} | {profile} | "
              + " | ".join(cells) + " |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("role", nargs="?", choices=("table", "camera", "count"), default="table",
                        help="table (default): every row; camera / count: one side, for tests and other set-ups")
    parser.add_argument("--width", type=int, default=640, help="image width (default %(default)s)")
    parser.add_argument("--height", type=int, default=480, help="image height (default %(default)s)")
    parser.add_argument("--rate", type=float, default=30.0, help="frames per second (default %(default)s)")
    parser.add_argument("--frames", type=int, default=90, help="frames per run (default %(default)s)")
    parser.add_argument("--runs", type=int, default=1, help="runs of each row (default %(default)s)")
    parser.add_argument("--json", default="", help="also write the figures to this file")
    parser.add_argument("--topic", default=TOPIC, help="camera / count: the image topic")
    parser.add_argument("--reliability", choices=tuple(RELIABILITY), default="reliable",
                        help="camera / count: QoS reliability")
    parser.add_argument("--wait-for-subscriber", action="store_true",
                        help="camera: start once a subscriber has matched, plus 1 s")
    parser.add_argument("--match-timeout", type=float, default=20.0, help="camera: longest wait for a subscriber")
    parser.add_argument("--linger", type=float, default=1.0, help="camera: seconds to stay after the last frame")
    parser.add_argument("--timeout", type=float, default=30.0, help="count: longest run")
    parser.add_argument("--idle", type=float, default=3.0, help="count: stop this long after the last image")
    args = parser.parse_args(argv)
    if args.width <= 0 or args.height <= 0 or args.rate <= 0 or args.frames <= 0 or args.runs <= 0:
        parser.error("--width, --height, --rate, --frames and --runs must be positive")
    return {"table": run_table, "camera": run_camera, "count": run_count}[args.role](args)


if __name__ == "__main__":
    sys.exit(main())
