"""One camera of the grounding node: its subscriptions (image, and depth + CameraInfo with
``use_depth``), publishers, depth buffer, latest CameraInfo, counters and /diagnostics problems.

With parameter ``cameras`` empty the node has one unnamed stream on ``image`` (outputs ``~/result``
and so on); camera ``N`` subscribes ``N/image`` and publishes ``~/N/result``. Relative names, so
they resolve in the node's namespace and can be remapped. The model, prompts and worker are the
node's; a stream only stores what arrived and publishes what it is given.

Thread safety: subscription callbacks and timers run on the executor's thread; the worker reads
``depth`` (locks itself), ``stats`` (locks itself) and ``camera_info`` (one reference), and
publishes.
"""
from __future__ import annotations

import functools
import threading
import time
from typing import Callable

from geometry_msgs.msg import PointStamped, PoseArray
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from visualization_msgs.msg import MarkerArray

from ..msg import AffordanceResult
from .compat import fastdds_profile_variable
from .frames import DepthBuffer, FrameStats, LossWindow

# image_qos: sensor_data = SensorDataQoS (best effort, volatile) or reliable. The image queue
# holds 1: the node only ever processes the newest frame, a deeper queue would only add latency
# and memory (Fast DDS keeps a buffer of the largest message seen for every queue slot: five 8K
# frames are 500 MB). Depth and CameraInfo hold a few, so that a fast depth stream (90 Hz) does
# not replace a frame's own depth image before the callback has stored it.
QUEUE_DEPTH = {"image": 1, "depth": 5, "camera_info": 5}
# Depth 1: only the newest output is kept for late or slow subscribers (bounds memory with big frames).
OUTPUT_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
IMAGE_SILENCE_WARN_S = 5.0  # prompts set, outputs subscribed, no image for this long: /diagnostics WARN
# Share of image frames DDS reported lost over the last LOSS_WINDOW_S seconds above which
# /diagnostics warns (best-effort readers are told of samples that never arrived), once at least
# LOSS_WARN_MIN_FRAMES were lost: a frame or two lost while a subscription starts is no alarm.
TRANSPORT_LOSS_WARN = 0.05
LOSS_WARN_MIN_FRAMES = 5
LOSS_WINDOW_S = 5.0
# image_qos auto: a replaced subscription keeps delivering until its successor does, and is
# destroyed then (RETIRE_S at most).
RETIRE_S = 2.0
OUTPUTS = {"result": AffordanceResult, "heatmap": Image, "overlay": Image, "contact_point": PointStamped,
           "markers": MarkerArray, "contact_poses": PoseArray}


def reliability_name(reliability) -> str:
    return "reliable" if reliability == ReliabilityPolicy.RELIABLE else "best effort"


class CameraStream:
    """The inputs and outputs of one camera (``name`` "" = the node's single camera)."""

    def __init__(self, node, name: str, throttled):
        self.node, self.name, self.throttled = node, name, throttled
        self.stats = FrameStats()
        self.depth = DepthBuffer()
        self.camera_info: CameraInfo | None = None
        self.marker_frame = ""  # frame_id of the last markers published
        self.last_image_at = time.monotonic()
        self.awaiting: list = []  # ~/ground requests for this camera's next frame
        self.awaiting_lock = threading.Lock()
        self.pub: dict[str, object] = {}  # output name -> publisher
        self._subs: dict[str, tuple] = {}  # role -> (subscription, reliability, msg type, callback)
        self._generation: dict[str, int] = {}  # role -> generation of its newest subscription
        self._live_generation: dict[str, int] = {}  # role -> newest generation that delivered a message
        self._retiring: list[tuple] = []  # (role, generation, replaced subscription, monotonic time replaced)
        self._counts_seen: dict[str, int] = {}  # counters at the last /diagnostics
        self._loss = LossWindow(LOSS_WINDOW_S)
        self._image_qos = "auto"  # parameter image_qos, set by open()

    def topic(self, role: str) -> str:
        """The relative input topic of ``role`` (image, depth, camera_info)."""
        return f"{self.name}/{role}" if self.name else role

    # ------------------------------------------------------------------ endpoints
    def open(self, settings, on_image: Callable) -> None:
        """Create the publishers and the subscriptions; ``on_image(stream, msg)`` gets each image."""
        prefix = f"~/{self.name}/" if self.name else "~/"
        self.pub = {name: self.node.create_publisher(kind, prefix + name, OUTPUT_QOS) for name, kind in OUTPUTS.items()}
        self._image_qos = settings.image_qos
        image = functools.partial(on_image, self)
        if settings.image_transport == "compressed":  # image_transport's name: <remapped image>/compressed
            self._subscribe("image", CompressedImage, image,
                            topic=self.node.resolve_topic_name(self.topic("image")) + "/compressed")
        else:
            self._subscribe("image", Image, image)
        if settings.use_depth:
            self._subscribe("depth", Image, self.depth.add)
            self._subscribe("camera_info", CameraInfo, self._on_camera_info)

    def close(self) -> None:
        """Destroy the subscriptions and publishers."""
        for sub in [s for s, *_ in self._subs.values()] + [r[2] for r in self._retiring]:
            self.node.destroy_subscription(sub)
        for pub in self.pub.values():
            self.node.destroy_publisher(pub)
        self._subs, self._retiring, self.pub = {}, [], {}

    @property
    def image_topic(self) -> str:
        return self._subs["image"][0].topic_name

    def describe_inputs(self) -> str:
        return ", ".join(f"{sub.topic_name} ({reliability_name(rel)})" for sub, rel, _, _ in self._subs.values())

    def input_qos(self) -> str:
        return ", ".join(f"{role}: {reliability_name(rel)}" for role, (_, rel, _, _) in self._subs.items())

    def has_listeners(self) -> bool:
        try:
            return any(pub.get_subscription_count() for pub in self.pub.values())
        except Exception:  # the context is shutting down
            return False

    def _on_camera_info(self, msg: CameraInfo) -> None:
        self.camera_info = msg

    def _on_message_lost(self, info) -> None:
        """DDS reports images that never arrived (best effort): counted as frames_lost."""
        self.stats.count("lost", int(info.total_count_change))

    def _subscribe(self, role: str, msg_type, callback, reliability=None, topic: str = "") -> None:
        """(Re)create the subscription of ``role`` on ``topic`` (default: the role's own name);
        image_qos decides the reliability unless given."""
        topic = topic or self.topic(role)
        qos_choice = self._image_qos
        if reliability is None:
            reliability = (ReliabilityPolicy.RELIABLE if qos_choice == "reliable"
                           else ReliabilityPolicy.BEST_EFFORT)  # best effort also matches reliable publishers
        qos = QoSProfile(depth=QUEUE_DEPTH[role], reliability=reliability, history=HistoryPolicy.KEEP_LAST,
                         durability=DurabilityPolicy.VOLATILE)
        generation = self._generation[role] = self._generation.get(role, 0) + 1

        def deliver(msg) -> None:  # the newest subscription wins; an older one only until it delivers
            if generation >= self._live_generation.get(role, 0):
                self._live_generation[role] = generation
                callback(msg)

        def lost(info) -> None:  # a replaced best-effort subscription's losses are not the camera's
            if generation == self._generation[role]:
                self._on_message_lost(info)

        events = SubscriptionEventCallbacks(
            matched=(lambda _info: self.match_publisher_qos()) if qos_choice == "auto" else None,
            message_lost=lost if role == "image" else None)
        sub = self.node.create_subscription(msg_type, topic, deliver, qos, event_callbacks=events)
        if role in self._subs:
            self._retiring.append((role, generation - 1, self._subs[role][0], time.monotonic()))
        self._subs[role] = (sub, reliability, msg_type, callback)

    def match_publisher_qos(self) -> None:
        """image_qos=auto (as image_pipeline does): subscribe reliable when every publisher of the
        topic is reliable (a best-effort reader loses large frames), best effort otherwise. The
        subscription being replaced keeps delivering until the new one does."""
        now = time.monotonic()
        for retired in [r for r in self._retiring
                        if self._live_generation.get(r[0], 0) > r[1] or now - r[3] > RETIRE_S]:
            self.node.destroy_subscription(retired[2])
            self._retiring.remove(retired)
        for role, (sub, current, msg_type, callback) in list(self._subs.items()):
            publishers = self.node.get_publishers_info_by_topic(sub.topic_name)
            if not publishers:
                continue
            wanted = (ReliabilityPolicy.RELIABLE
                      if all(p.qos_profile.reliability == ReliabilityPolicy.RELIABLE for p in publishers)
                      else ReliabilityPolicy.BEST_EFFORT)
            if wanted != current:
                self.node.get_logger().info(f"{sub.topic_name}: matching its publishers, subscribing "
                                            f"{reliability_name(wanted)}")
                self._subscribe(role, msg_type, callback, wanted, sub.topic_name)

    # ------------------------------------------------------------------ /diagnostics
    def problems_since_last(self, snap: dict, s) -> list[str]:
        """What went wrong with this camera since the last /diagnostics (each makes its status WARN)."""
        new = {name: snap[name] - self._counts_seen.get(name, 0) for name in ("received", "rejected", "failed",
                                                                              "no_depth")}
        self._counts_seen = {name: snap[name] for name in new}
        now = time.monotonic()
        self._loss.add(snap["received"], snap["lost"], now)
        if new["received"]:
            self.last_image_at = now
        problems = []
        if new["rejected"] + new["failed"]:
            problems.append(f"{new['rejected'] + new['failed']} frame(s) rejected or failed")
        if s.use_depth and new["no_depth"]:
            problems.append(f"{new['no_depth']} frame(s) without 3D points")
        share, lost = self._loss.share()
        if share > TRANSPORT_LOSS_WARN and lost >= LOSS_WARN_MIN_FRAMES:
            problems.append(self._transport_loss_problem(share, lost))
        silent_s = now - self.last_image_at
        if s.prompts and silent_s > IMAGE_SILENCE_WARN_S and self.has_listeners():
            problems.append(f"no image on {self.image_topic} for {silent_s:.0f} s")
        return problems

    def transport_loss(self) -> float:
        return self._loss.share()[0]

    def _transport_loss_problem(self, share: float, lost: int) -> str:
        """What the loss means and how to fix it, from the image subscription's and publishers' QoS."""
        sub, reliability = self._subs["image"][:2]
        text = f"{share:.0%} of frames on {sub.topic_name} lost in transport ({lost} in {LOSS_WINDOW_S:.0f} s)"
        publishers = self.node.get_publishers_info_by_topic(sub.topic_name)
        if reliability == ReliabilityPolicy.RELIABLE:
            fix = ("the camera's reliable writer dropped frames this node had not acknowledged in time: the "
                   "node's computer or the network is too busy for the camera's rate and size")
        elif publishers and all(p.qos_profile.reliability == ReliabilityPolicy.RELIABLE for p in publishers):
            fix = ("the camera publishes reliably but this node subscribes best effort: set image_qos to auto "
                   "(the default) or reliable")
        else:
            fix = ("the camera publishes best effort and large frames travel as UDP fragments that are never "
                   "resent: start the camera driver with this package's Fast DDS profile "
                   f"({fastdds_profile_variable()}=<share>/affordance_clip_ros/config/fastdds_profile.xml), or "
                   "have it publish reliably")
        self.throttled.warning(f"transport loss {self.name}", f"{text}; {fix}")
        return f"{text}; {fix}"
