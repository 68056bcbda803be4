"""An MP4 of the overlays at the recording's frame rate (OpenCV's VideoWriter, MPEG-4 part 2).

The frame rate is measured from the frames' times: the median interval of the first
``PROBE_FRAMES`` frames, so the file is opened once those are in (or at the end, for a shorter
bag). Every frame gets the first frame's size.
"""
from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np

PROBE_FRAMES = 16
DEFAULT_FPS = 30.0  # when the times give no rate (one frame, or all stamped alike)
log = logging.getLogger(__name__)


class OverlayVideo:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.fps: float | None = None
        self.frames = 0
        self._writer: cv2.VideoWriter | None = None
        self._size: tuple[int, int] | None = None  # (width, height)
        self._held: list[tuple[np.ndarray, int]] = []

    def add(self, overlay_bgr: np.ndarray, time_ns: int) -> None:
        if self._writer is None:
            self._held.append((overlay_bgr, time_ns))
            if len(self._held) >= PROBE_FRAMES:
                self._open()
        else:
            self._write(overlay_bgr)

    def close(self) -> None:
        if self._writer is None and self._held:
            self._open()
        if self._writer is not None:
            self._writer.release()
            self._writer = None

    def _open(self) -> None:
        times = np.array([t for _, t in self._held], dtype=np.float64)
        steps = np.diff(times)
        steps = steps[steps > 0]
        self.fps = 1e9 / float(np.median(steps)) if steps.size else DEFAULT_FPS
        height, width = self._held[0][0].shape[:2]
        self._size = (width, height)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, self._size)
        if not writer.isOpened():
            raise OSError(f"OpenCV cannot write an MP4 video to {self.path}")
        self._writer = writer
        log.info("video %s: %dx%d at %.2f frames/s", self.path, width, height, self.fps)
        for frame, _ in self._held:
            self._write(frame)
        self._held = []

    def _write(self, frame: np.ndarray) -> None:
        if (frame.shape[1], frame.shape[0]) != self._size:
            frame = cv2.resize(frame, self._size, interpolation=cv2.INTER_AREA)
        self._writer.write(frame)
        self.frames += 1
