"""Colour frames of a bag with their depth image and CameraInfo, paired as the node pairs them:
the depth image nearest in stamp within ``max_depth_age`` (the node's :class:`DepthBuffer`), and
the newest CameraInfo.

A bag holds the messages in the order they were recorded, and the depth image of a capture may
be recorded after its colour image. So a colour frame waits until a depth image stamped at or
after it has been read (no later one can be nearer), until the recording has gone on for
``DEPTH_LAG_S`` past it, or until the bag ends.
"""
from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Any

from ..ros.frames import DepthBuffer, stamp_ns

DEPTH_LAG_S = 1.0  # recording time a colour frame waits for its depth image
MAX_DEPTH_HELD = 256  # depth images waiting for colour frames (bounds memory when colour stops)


@dataclass
class Frame:
    msg: Any  # sensor_msgs/Image or CompressedImage (rosbags)
    log_time: int  # ns, when it was recorded
    depth: Any = None  # sensor_msgs/Image, or None when none is near enough
    info: Any = None  # sensor_msgs/CameraInfo, or None when none has come yet

    @property
    def stamp(self) -> int:
        return stamp_ns(self.msg.header.stamp)


class FramePairer:
    """Feed it the bag's messages in order; it returns the frames that are ready, in order."""

    def __init__(self, use_depth: bool, max_depth_age: float):
        self.use_depth = use_depth
        self.max_depth_age = max_depth_age
        self._depth = DepthBuffer(max_items=MAX_DEPTH_HELD)
        self._newest_depth: int | None = None
        self._info = None
        self._waiting: collections.deque[Frame] = collections.deque()

    def image(self, msg, log_time: int) -> list[Frame]:
        self._waiting.append(Frame(msg, log_time))
        return self._ready(log_time)

    def depth(self, msg, log_time: int) -> list[Frame]:
        self._depth.add(msg)
        stamp = stamp_ns(msg.header.stamp)
        self._newest_depth = stamp if self._newest_depth is None else max(self._newest_depth, stamp)
        return self._ready(log_time)

    def camera_info(self, msg) -> list[Frame]:
        self._info = msg
        return []

    def finish(self) -> list[Frame]:
        """The bag has ended: every waiting frame, paired with what there is."""
        return self._ready(None)

    def _ready(self, now: int | None) -> list[Frame]:
        ready = []
        while self._waiting and (now is None or self._may_go(self._waiting[0], now)):
            frame = self._waiting.popleft()
            if self.use_depth:
                frame.depth = self._depth.nearest(frame.stamp, self.max_depth_age)
                frame.info = self._info
            ready.append(frame)
        return ready

    def _may_go(self, frame: Frame, now: int) -> bool:
        return (not self.use_depth or (self._newest_depth is not None and self._newest_depth >= frame.stamp)
                or now - frame.log_time > DEPTH_LAG_S * 1e9)
