"""`affordance-clip bag`: every frame of a recorded rosbag2 through the model, offline, without ROS.

    affordance-clip bag recording/ --image-topic /camera/color/image_raw -p "hold" --out results/
    affordance-clip bag recording/ --image-topic /camera/color/image_raw/compressed \\
        --depth-topic /camera/aligned_depth_to_color/image_raw --camera-info-topic /camera/color/camera_info \\
        -p "pour" -p "hold" --out results/ --video overlay.mp4 --storage sqlite3
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import threading
from pathlib import Path

from ..cli_common import (add_model_arguments, add_parameter_arguments, add_peak_arguments, grounder_from_args,
                          peak_settings)
from ..ros.queries import SEPARATOR, parse_prompts
from .convert import STORAGES, BagConverter, OutputBag, Settings, Summary
from .reader import BagError, BagReader, TopicInfo
from .types import CAMERA_INFO, COMPRESSED_IMAGE, IMAGE, typestore
from .video import OverlayVideo

log = logging.getLogger(__name__)


def check_topics(available: dict[str, TopicInfo], settings: Settings) -> dict[str, TopicInfo]:
    """The bag's topics the command reads; BagError naming the bag's topics when one is missing
    or of another type."""
    wanted = (("--image-topic", settings.image_topic, (IMAGE, COMPRESSED_IMAGE)),
              ("--depth-topic", settings.depth_topic, (IMAGE,)),
              ("--camera-info-topic", settings.camera_info_topic, (CAMERA_INFO,)))
    listing = "\n".join(f"  {t.name}  {t.msgtype}" + ("" if t.count is None else
                                                         f"  ({t.count} message{'' if t.count == 1 else 's'})")
                        for t in sorted(available.values(), key=lambda t: t.name)) or "  (none)"
    topics = {}
    for option, name, types in wanted:
        if name is None:
            continue
        if name not in available:
            raise BagError(f"{option} {name} is not in the bag. Its topics:\n{listing}")
        if available[name].msgtype not in types:
            raise BagError(f"{option} {name} holds {available[name].msgtype}; it must be {' or '.join(types)}")
        topics[name] = available[name]
    return topics


STOP_SIGNALS = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}  # SIGTERM: launch, systemd, timeout


@contextlib.contextmanager
def stop_on_signals():
    """An event that Ctrl-C or SIGTERM sets (``stop.signum`` says which): the run stops reading,
    finishes the frames it has read and closes the output bag. A second signal raises
    KeyboardInterrupt, which still closes the output bag."""
    stop = threading.Event()
    stop.signum = None

    def request_stop(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.signum = signum
        stop.set()
        log.warning("%s: finishing the frames already read, then closing the output bag (again to stop at once)",
                    STOP_SIGNALS[signum])

    try:
        previous = {signum: signal.signal(signum, request_stop) for signum in STOP_SIGNALS}
    except ValueError:  # not the main thread: no handler, the run goes to the end
        yield stop
        return
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)


def settings_from_args(args: argparse.Namespace) -> Settings:
    if (args.depth_topic is None) != (args.camera_info_topic is None):
        raise ValueError("--depth-topic and --camera-info-topic go together (3D points need both)")
    parsed = parse_prompts(SEPARATOR.join(args.prompts))
    if not parsed.prompts:
        raise ValueError("give at least one non-empty prompt with -p")
    for note in parsed.notes:
        log.warning("prompts: %s", note)
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    return Settings(args.image_topic, args.depth_topic, args.camera_info_topic, parsed.prompts, args.batch_size,
                    args.max_depth_age, args.depth_window, args.alpha)


def process_bag(bag: BagReader, topics: dict[str, TopicInfo], store, grounder, settings: Settings, out: Path,
                storage: str = "mcap", video: str | None = None) -> Summary:
    """The command once the model is built: OUT (and the video) written, and closed whatever stops the run."""
    output = OutputBag(out, storage, store, list(topics.values()), settings.use_depth)
    overlays = OverlayVideo(video) if video else None
    try:
        with stop_on_signals() as stop:
            summary = BagConverter(grounder, store, settings, output, overlays, stop).run(bag, topics)
            summary.stop_signal = stop.signum
    finally:
        output.close()
        if overlays is not None:
            overlays.close()
    summary.video_fps = overlays.fps if overlays is not None else None
    return summary


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    out = Path(args.out)
    if out.exists():
        raise ValueError(f"--out {out} exists; rosbag2 output is never overwritten: remove it or choose another name")
    if args.video and Path(args.video).suffix.lower() != ".mp4":
        raise ValueError(f"--video {args.video}: give a file name ending in .mp4")
    with BagReader(args.bag) as bag:
        for note in bag.notes:
            log.warning("%s: %s", args.bag, note)
        topics = check_topics(bag.topics, settings)
        store = typestore()
        grounder = grounder_from_args(args, **peak_settings(args))
        log.info("%s: %s (%s) on %s, batches of %d, prompts: %s", args.bag, args.clip_model, grounder.mode,
                 grounder.device, settings.batch_size, "; ".join(settings.prompts))
        try:
            summary = process_bag(bag, topics, store, grounder, settings, out, args.storage, args.video)
        except KeyboardInterrupt:
            log.warning("stopped at once by a second signal; %s is closed and readable", out)
            return 130
    log.info("wrote %s (%s)%s", out, args.storage, f" and {args.video}" if args.video else "")
    for line in summary.lines():
        (log.warning if line.startswith(("the bag is damaged", "interrupted")) else log.info)("%s", line)
    return 128 + summary.stop_signal if summary.interrupted else 0  # 130 after Ctrl-C, 143 after SIGTERM


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "bag", help="run every frame of a rosbag2 through the model, write the results into a new bag",
        description="Read a rosbag2 (mcap or sqlite3 folder, or one .mcap/.db3 file; no ROS needed), run every "
                    "frame of the image topic through the model in batches and write a new bag with the input topics "
                    "and the node's outputs under /affordance_grounding/ (result, heatmap, overlay, contact_point), "
                    "each at its image's stamp. A bag whose recording was killed is read up to where it is damaged.")
    parser.add_argument("bag", help="rosbag2 folder, or a .mcap or .db3 file")
    parser.add_argument("--image-topic", required=True, help="sensor_msgs/Image or CompressedImage topic")
    parser.add_argument("--depth-topic", help="depth registered to the image (16UC1 mm or 32FC1 m): 3D contact points")
    parser.add_argument("--camera-info-topic", help="sensor_msgs/CameraInfo of the image (with --depth-topic)")
    parser.add_argument("--prompt", "-p", action="append", dest="prompts", required=True,
                        help="action phrase, e.g. 'cut with' (repeat for several)")
    parser.add_argument("--out", "-o", required=True, help="output rosbag2 folder (must not exist)")
    parser.add_argument("--video", help="also write an MP4 of the overlays (first prompt) at the recording's rate")
    parser.add_argument("--storage", choices=sorted(STORAGES), default="mcap", help="output storage (default mcap)")
    parser.add_argument("--batch-size", type=int, default=8, help="frames per forward pass (default 8)")
    add_parameter_arguments(parser, ("max_depth_age", "depth_window"))
    add_peak_arguments(parser)
    add_model_arguments(parser)
    parser.set_defaults(func=run)
