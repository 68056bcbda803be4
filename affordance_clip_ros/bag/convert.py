"""Every frame of a bag through the model, the results into a new bag (and a video).

The output bag holds the input topics as recorded and, under the node's topic names, what the
node would have published for every frame: the result, the first prompt's heatmap and overlay
and, with depth, the best contact point. Each result is written at its image's stamp (the log
time when the image has no stamp), so ``ros2 bag play`` replays image and result together.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from rosbags.rosbag2 import StoragePlugin, Writer
from tqdm import tqdm

from ..model.grounder import AffordanceGrounder, AffordancePrediction
from ..ros import result_messages as results
from ..ros.conversions import ImageConversionError, image_to_numpy, rgb_from_message
from ..ros.geometry import DepthError, depth_to_metres, peak_points
from ..ros.inference import FrameMaps, predict_frames
from .pairing import Frame, FramePairer
from .reader import BagReader, TopicInfo
from .types import IMAGE, POINT_STAMPED, RESULT, message_types
from .video import OverlayVideo

# The node's topics (`~/result` ... of the node `affordance_grounding` in the root namespace).
OUTPUT_NAMESPACE = "/affordance_grounding"
MAX_IMAGE_PIXELS = 8192 * 8192  # as the node: larger frames are refused before any copy
STORAGES = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    image_topic: str
    depth_topic: str | None
    camera_info_topic: str | None
    prompts: tuple[str, ...]
    batch_size: int = 8
    max_depth_age: float = 0.1
    depth_window: int = 5
    alpha: float = 0.5

    @property
    def use_depth(self) -> bool:
        return self.depth_topic is not None


@dataclass
class Summary:
    prompts: Sequence[str]
    frames: int = 0  # processed
    model_s: float = 0.0
    wall_s: float = 0.0
    peaks_found: collections.Counter = field(default_factory=collections.Counter)  # prompt -> frames
    with_3d: int = 0
    skipped: collections.Counter = field(default_factory=collections.Counter)  # reason -> frames
    without_3d: collections.Counter = field(default_factory=collections.Counter)  # reason -> frames
    stopped: str | None = None  # where a damaged bag ended
    interrupted: bool = False
    stop_signal: int | None = None  # the signal that interrupted the run (SIGINT, SIGTERM)
    video_fps: float | None = None

    def lines(self) -> list[str]:
        model_fps = self.frames / self.model_s if self.model_s else 0.0
        overall = self.frames / self.wall_s if self.wall_s else 0.0
        lines = [f"frames: {self.frames} processed, {sum(self.skipped.values())} skipped",
                 (f"model: {model_fps:.2f} frames/s ({self.model_s:.1f} s); "
                  f"whole command: {overall:.2f} frames/s ({self.wall_s:.1f} s)")]
        lines += [f"peak found for '{p}': {self.peaks_found[p]} of {self.frames} frames" for p in self.prompts]
        if self.with_3d or self.without_3d:
            lines.append(f"3D contact points: {self.with_3d} frames, none for {sum(self.without_3d.values())}")
        lines += [f"without 3D ({n} frames): {reason}" for reason, n in self.without_3d.items()]
        lines += [f"skipped ({n} frames): {reason}" for reason, n in self.skipped.items()]
        if self.video_fps is not None:
            lines.append(f"video at {self.video_fps:.2f} frames/s")
        if self.stopped:
            lines.append(f"the bag is damaged, read up to: {self.stopped}")
        if self.interrupted:
            lines.append("interrupted: the output bag holds the frames read so far, each with its result, and is "
                         "complete and readable")
        return lines


class OutputBag:
    """The output rosbag2: input topics copied as recorded, results under the node's names."""

    def __init__(self, path: Path, storage: str, store, inputs: Sequence[TopicInfo], use_depth: bool):
        self._store = store
        self._writer = Writer(path, version=Writer.VERSION_LATEST, storage_plugin=STORAGES[storage])
        self._writer.open()
        self._inputs = {t.name: self._writer.add_connection(t.name, t.msgtype, typestore=store,
                                                            offered_qos_profiles=list(t.qos)) for t in inputs}
        outputs = {"result": RESULT, "heatmap": IMAGE, "overlay": IMAGE}
        if use_depth:
            outputs["contact_point"] = POINT_STAMPED
        self._outputs = {name: self._writer.add_connection(f"{OUTPUT_NAMESPACE}/{name}", msgtype, typestore=store)
                         for name, msgtype in outputs.items()}

    def copy(self, topic: str, log_time: int, raw: bytes) -> None:
        self._writer.write(self._inputs[topic], log_time, raw)

    def write(self, name: str, time_ns: int, msg) -> None:
        self._writer.write(self._outputs[name], time_ns, self._store.serialize_cdr(msg, msg.__msgtype__))

    def close(self) -> None:
        """Index, metadata.yaml: the bag is complete whatever stopped the run."""
        self._writer.close()


class BagConverter:
    """Reads the frames, runs the model on batches of them and writes what comes out."""

    def __init__(self, grounder: AffordanceGrounder, store, settings: Settings, out: OutputBag,
                 video: OverlayVideo | None, stop: threading.Event):
        self.grounder, self.store, self.settings = grounder, store, settings
        self.types = message_types(store)
        self.out, self.video, self.stop = out, video, stop
        self.summary = Summary(settings.prompts)
        self._warned: set[str] = set()

    def run(self, bag: BagReader, topics: dict[str, TopicInfo]) -> Summary:
        s = self.settings
        pairer = FramePairer(s.use_depth, s.max_depth_age)
        roles = {s.image_topic: pairer.image, s.depth_topic: pairer.depth}
        batch: list[Frame] = []
        start = time.perf_counter()
        with tqdm(total=topics[s.image_topic].count, desc="bag", unit="frame") as progress:
            for topic, log_time, raw in bag.messages(topics):
                if self.stop.is_set():
                    self.summary.interrupted = True
                    break
                self.out.copy(topic, log_time, raw)
                msg = self.store.deserialize_cdr(raw, topics[topic].msgtype)
                batch += roles[topic](msg, log_time) if topic in roles else pairer.camera_info(msg)
                if len(batch) >= s.batch_size:
                    self._process(batch, progress)
                    batch = []
            self._process(batch + pairer.finish(), progress)  # every frame read gets its result, also after Ctrl-C
        self.summary.wall_s = time.perf_counter() - start
        self.summary.stopped = bag.stopped
        return self.summary

    def _process(self, frames: list[Frame], progress: tqdm) -> None:
        decoded = [(frame, rgb) for frame in frames if (rgb := self._decode(frame)) is not None]
        progress.update(len(frames) - len(decoded))
        if not decoded:
            return
        start = time.perf_counter()
        outputs = predict_frames(self.grounder, [rgb for _, rgb in decoded], self.settings.prompts)
        seconds = time.perf_counter() - start
        self.summary.model_s += seconds
        for (frame, rgb), maps in zip(decoded, outputs):
            self._write(frame, rgb, maps, seconds * 1e3 / len(decoded))  # the batch's time, shared
            progress.update(1)

    def _decode(self, frame: Frame):
        try:
            return rgb_from_message(frame.msg, MAX_IMAGE_PIXELS)
        except ImageConversionError as e:
            self.summary.skipped[str(e)] += 1
            self._warn_once(f"frame skipped: {e}")
            return None

    def _write(self, frame: Frame, rgb, maps: FrameMaps, inference_ms: float) -> None:
        header, types, predictions = frame.msg.header, self.types, maps.predictions
        when = frame.stamp or frame.log_time
        points = self._points(frame, rgb.shape[:2], predictions) if self.settings.use_depth else []
        heatmaps = [results.heatmap_image(types, p.heatmap, header) for p in predictions]
        self.out.write("result", when, results.result_message(types, header, predictions, points, inference_ms,
                                                              heatmaps))
        self.out.write("heatmap", when, heatmaps[0])
        overlay = maps.overlay(rgb, self.settings.alpha)
        self.out.write("overlay", when, types.image(overlay, "bgr8", header))
        if (best := results.best_point(points)) is not None:
            self.out.write("contact_point", when, results.point_stamped(types, header, best))
        if self.video is not None:
            self.video.add(overlay, when)
        self.summary.frames += 1
        self.summary.peaks_found.update(p.prompt for p in predictions if p.peaks)
        self.summary.with_3d += bool(points)

    def _points(self, frame: Frame, shape, predictions: list[AffordancePrediction]) -> list:
        """3D points per prompt and peak as the node computes them, or [] when this frame has none."""
        try:
            if frame.info is None:
                raise DepthError("no CameraInfo recorded before this frame")
            if frame.depth is None:
                raise DepthError(f"no depth image within max_depth_age={self.settings.max_depth_age} s of the "
                                 "image stamp")
            depth_m = depth_to_metres(image_to_numpy(frame.depth), frame.depth.encoding)
            return peak_points([[(p.u, p.v) for p in pred.peaks] for pred in predictions], depth_m, frame.info, shape,
                               self.settings.depth_window)
        except (DepthError, ImageConversionError) as e:
            self.summary.without_3d[str(e)] += 1
            self._warn_once(f"no 3D contact points: {e}")
            return []

    def _warn_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            log.warning("%s (counted in the summary)", message)
