"""One-shot requests of the ``~/ground`` service between the service callback and the worker.

The service callback checks a request (:func:`parse_request`) and hands it to the worker (a
given image) or to the next camera frame; the worker answers it with one inference, in turn with
the camera stream (``LatestSlot``). The callback is a coroutine that yields to the executor until
the answer or the timeout, so the executor's other callbacks (camera, prompts) go on meanwhile
and any number of clients wait at once, each for its own answer.
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field

from ..msg import AffordanceResult
from ..srv import Ground
from .queries import MAX_PROMPT_CHARS, MAX_PROMPTS

WAITING_FOR_CAMERA, QUEUED, RUNNING, DONE = "waiting for a camera frame", "queued", "running", "done"


@dataclass
class GroundRequest:
    """One request in flight: its inputs and, once answered, its response."""

    prompts: tuple[str, ...]
    image: object | None  # sensor_msgs/Image or CompressedImage; None until the next camera frame
    depth: object | None  # sensor_msgs/Image aligned to ``image``, or None
    camera_info: object | None  # sensor_msgs/CameraInfo, or None: the camera's latest
    timeout_s: float
    from_camera: bool
    camera: str = ""  # which camera of the node ("" with one camera)
    deadline: float = 0.0
    state: str = QUEUED
    response: Ground.Response = field(default_factory=Ground.Response)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    done: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self):
        self.deadline = time.monotonic() + self.timeout_s
        if self.from_camera:
            self.state = WAITING_FOR_CAMERA

    def give_frame(self, msg) -> bool:
        """The camera frame for a request waiting for one; False when it no longer waits."""
        with self._lock:
            if self.state != WAITING_FOR_CAMERA:
                return False
            self.image, self.state = msg, QUEUED
            return True

    def start(self) -> bool:
        """The worker takes the request; False when it was answered (timed out) already."""
        with self._lock:
            if self.state != QUEUED:
                return False
            self.state = RUNNING
            return True

    def finish(self, success: bool, message: str = "", result: AffordanceResult | None = None) -> bool:
        """Answer the request once; False when it was answered already (the later answer is dropped)."""
        with self._lock:
            if self.state == DONE:
                return False
            self.state = DONE
            self.response.success, self.response.message = success, message
            if result is not None:
                self.response.result = result
        self.done.set()
        return True

    def expire(self, image_topic: str) -> bool:
        """Past the deadline and not answered: answer with what it was still waiting for."""
        state = self.state
        why = {WAITING_FOR_CAMERA: f"no camera frame on {image_topic} within {self.timeout_s:g} s",
               QUEUED: f"not started within {self.timeout_s:g} s: the inference worker is busy",
               RUNNING: f"inference not finished within {self.timeout_s:g} s"}.get(state, "timed out")
        return self.finish(False, f"timeout_s={self.timeout_s:g}: {why}")


def is_empty_image(image) -> bool:
    return image.width == 0 or image.height == 0


def parse_request(request: Ground.Request, default_timeout_s: float, cameras: tuple[str, ...] = ()) -> GroundRequest:
    """A :class:`GroundRequest` from a service request to a node serving ``cameras`` (parameter
    cameras; empty: one unnamed camera); ValueError naming the field and the fix. An empty
    ``camera`` means the first camera."""
    prompts = tuple(p.strip() for p in request.prompts)
    if not prompts:
        raise ValueError("prompts: empty; give one or more action phrases such as 'cut with'")
    if not all(prompts):
        raise ValueError(f"prompts: prompt {prompts.index('')} is empty or blank")
    if len(prompts) > MAX_PROMPTS:
        raise ValueError(f"prompts: {len(prompts)} given, at most {MAX_PROMPTS} per request")
    if long := [p for p in prompts if len(p) > MAX_PROMPT_CHARS]:
        raise ValueError(f"prompts: a prompt of {len(long[0])} characters; at most {MAX_PROMPT_CHARS}")
    timeout_s = float(request.timeout_s)
    if not math.isfinite(timeout_s) or timeout_s < 0:
        raise ValueError(f"timeout_s: {timeout_s} must be 0 (parameter ground_timeout_s) or positive")
    camera = request.camera.strip()
    if camera and not cameras:
        raise ValueError(f"camera: '{camera}' is not a camera of this node, which serves one camera; "
                         "leave camera empty")
    if camera and camera not in cameras:
        raise ValueError(f"camera: '{camera}' is not a camera of this node; its cameras are {', '.join(cameras)} "
                         "(empty = the first)")
    from_camera = is_empty_image(request.image)
    depth = None if is_empty_image(request.depth) else request.depth
    if from_camera and depth is not None:
        raise ValueError("depth: given without an image; with an empty image the camera's paired depth is used")
    info = request.camera_info if request.camera_info.width or any(request.camera_info.k) else None
    if from_camera and info is not None:
        raise ValueError("camera_info: given without an image; with an empty image the camera's own camera_info "
                         "is used")
    return GroundRequest(prompts, None if from_camera else request.image, depth, info,
                         timeout_s or default_timeout_s, from_camera, camera or (cameras[0] if cameras else ""))


class NextSpin:
    """``await NextSpin()`` in an executor callback: hand the thread back to the executor until
    its next round (rclpy resumes a pending coroutine once per round)."""

    def __await__(self):
        yield
