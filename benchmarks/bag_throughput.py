"""`affordance-clip bag` throughput against the model's own, with one grounder in one process.

Not part of CI; needs no ROS. After ``make build``::

    bash scripts/with_ros.sh .venv-kilted/bin/python benchmarks/bag_throughput.py --json bag_throughput.json
    bash scripts/with_ros.sh .venv-kilted/bin/python benchmarks/bag_throughput.py --clip-model RN-tiny --frames 16

A bag of ``--frames`` 640x480 rgb8 frames (scikit-image photos, 30 Hz) is written with rosbags.
One grounder (random CLIP weights, the default path of the device) then runs, in turn:

* ``model_fps``: ``grounder.predict`` on each decoded frame, one at a time (what the node does);
* ``model_batched_fps``: the same frames in batches of ``--batch-size`` (what the command runs);
* the command's own pipeline on the bag (read, decode, model, messages, overlay, write the
  output bag, video), which reports ``command_model_fps`` (its time inside the model) and
  ``command_fps`` (frames over the whole run, the model build excluded);

and the model figure again at the end, so the spread from a busy machine shows.
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import skimage.data
import torch
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from affordance_clip_ros.bag.command import check_topics, process_bag
from affordance_clip_ros.bag.convert import Settings
from affordance_clip_ros.bag.reader import BagReader
from affordance_clip_ros.bag.types import typestore
from affordance_clip_ros.model import AffordanceGrounder, GrounderConfig
from affordance_clip_ros.ros.inference import predict_frames

TOPIC, PROMPT, WIDTH, HEIGHT = "/camera/color/image_raw", "drink with", 640, 480


def camera_frames(count: int) -> list[np.ndarray]:
    photos = [skimage.data.coffee(), skimage.data.astronaut(), skimage.data.chelsea(), skimage.data.rocket()]
    return [cv2.resize(photos[i % len(photos)], (WIDTH, HEIGHT), interpolation=cv2.INTER_AREA) for i in range(count)]


def write_bag(path: Path, frames: list[np.ndarray]) -> None:
    store = get_typestore(Stores.LATEST)
    image, header, time_type = (store.types[n] for n in ("sensor_msgs/msg/Image", "std_msgs/msg/Header",
                                                          "builtin_interfaces/msg/Time"))
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        connection = writer.add_connection(TOPIC, image.__msgtype__, typestore=store)
        for i, rgb in enumerate(frames):
            ns = 1_764_400_000_000_000_000 + i * 33_333_333
            msg = image(header=header(stamp=time_type(sec=ns // 10**9, nanosec=ns % 10**9), frame_id="camera"),
                        height=HEIGHT, width=WIDTH, encoding="rgb8", is_bigendian=0, step=WIDTH * 3,
                        data=rgb.reshape(-1))
            writer.write(connection, ns + 2_000_000, store.serialize_cdr(msg, image.__msgtype__))


def frames_per_s(run, count: int) -> float:
    start = time.perf_counter()
    run()
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clip-model", default="RN101")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    frames = camera_frames(args.frames)
    grounder = AffordanceGrounder.from_config(GrounderConfig(clip_model=args.clip_model, clip_pretrained="none",
                                                             device=args.device))
    for rgb in frames[:2]:  # warm-up
        grounder.predict(rgb, [PROMPT])
    settings = Settings(TOPIC, None, None, (PROMPT,), args.batch_size)

    def model_alone() -> float:
        return frames_per_s(lambda: [grounder.predict(rgb, [PROMPT]) for rgb in frames], len(frames))

    def model_batched() -> float:
        batches = [frames[i:i + args.batch_size] for i in range(0, len(frames), args.batch_size)]
        return frames_per_s(lambda: [predict_frames(grounder, batch, [PROMPT]) for batch in batches], len(frames))

    with tempfile.TemporaryDirectory() as tmp:
        write_bag(Path(tmp) / "in", frames)
        figures = {"model_fps": model_alone(), "model_batched_fps": model_batched()}
        with BagReader(Path(tmp) / "in") as bag:
            summary = process_bag(bag, check_topics(bag.topics, settings), typestore(), grounder, settings,
                                  Path(tmp) / "out", "mcap", str(Path(tmp) / "overlay.mp4"))
        figures.update(command_fps=summary.frames / summary.wall_s, command_model_fps=summary.frames / summary.model_s,
                       model_fps_after=model_alone())
    figures = {k: round(v, 2) for k, v in figures.items()}
    figures.update(clip_model=args.clip_model, device=str(grounder.device), backend=grounder.backend,
                   precision=grounder.image_path_precision, frames=args.frames, batch_size=args.batch_size,
                   size=f"{WIDTH}x{HEIGHT}", cpu=platform.processor() or platform.machine(),
                   torch_threads=torch.get_num_threads(), date=time.strftime("%Y-%m-%d"))
    for key, value in figures.items():
        print(f"{key:>18}: {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
