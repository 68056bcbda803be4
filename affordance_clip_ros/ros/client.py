"""A Python client of the ``affordance_grounding`` node, for a planner, a notebook or a script:
set the prompts, receive the results, change parameters, and (without a camera) play the camera.

    from affordance_clip_ros.ros.client import GroundingClient

    with GroundingClient(outputs=("result",)) as client:  # the node launched in the root namespace
        client.publish_prompt("cut with; hold")
        result = client.next_result(timeout=10.0)        # affordance_clip_ros/msg/AffordanceResult
        for m in result.maps:
            print(m.prompt, [(p.u, p.v, p.score) for p in m.peaks])

A planner that needs one answer for its own prompts calls the ``~/ground`` service instead; it
never changes the streaming prompts, and other clients may call it at the same time::

    with GroundingClient(outputs=()) as client:
        response = client.ground(["grasp"], timeout=10.0)  # the next camera frame
        if response.success:
            best = response.result.maps[0].peaks[0]             # u, v, score, point, normal

The client has its own rclpy context and spins it on a background thread, so it works next to
any other rclpy code in the process and needs no executor of the caller. Everything the node
publishes is recorded in ``results``, ``heatmaps``, ``overlays``, ``contacts``, ``poses``,
``markers`` and ``diagnostics`` (read them under ``lock`` or through :meth:`GroundingClient.wait_for`).
Images the client publishes go to ``image_topic`` (and depth / CameraInfo beside it): give the
node the same topics (launch arguments ``image_topic``, ``depth_topic``, ``camera_info_topic``).
Call :func:`use_fastdds_profile_here` before the first client when publishing camera-sized
images, so that this process uses the package's Fast DDS profile as the launched node does.
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import rclpy
from ament_index_python.packages import get_package_share_directory
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PointStamped, PoseArray
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rcl_interfaces.msg import Parameter as ParameterMsg
from rcl_interfaces.msg import SetParametersResult
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.task import Future
from rclpy.parameter import Parameter
from rclpy.parameter_client import AsyncParameterClient
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header, String
from visualization_msgs.msg import MarkerArray

from ..msg import AffordanceResult
from ..srv import Ground
from .compat import fastdds_profile_set, fastdds_profile_variable
from .conversions import numpy_to_image
from .grounding_node import NODE_NAME, QUERY_TOPIC

PACKAGE = "affordance_clip_ros"
# A cheap request that changes nothing when repeated is sent again after this long without an answer.
RESEND_S = 2.0
TRANSITION_GOALS = {"configure": "inactive", "activate": "active", "deactivate": "inactive",
                    "cleanup": "unconfigured", "shutdown": "finalized"}
OUTPUTS = ("result", "heatmap", "overlay", "contact_point", "contact_poses", "markers")  # the node's ~/ topics


def fastdds_profile_path() -> Path:
    """The package's Fast DDS profile (shared memory + large UDP buffers), as installed."""
    return Path(get_package_share_directory(PACKAGE)) / "config" / "fastdds_profile.xml"


def use_fastdds_profile_here() -> bool:
    """Give this process the package's Fast DDS profile, as the launch file gives it to the node.

    Between processes, camera-sized images over Fast DDS's default transports are lost and
    repaired late, which also delays small messages queued behind them; with the profile (shared
    memory, big buffers) on both sides they arrive in milliseconds. Fast DDS reads
    the profile variable once per process, when the first participant is created: call
    this before any rclpy node exists. A value already set is kept (returns False).
    """
    if fastdds_profile_set():
        return False
    os.environ[fastdds_profile_variable()] = str(fastdds_profile_path())
    return True


def first_answer(send: Callable[[], Future], forget: Callable[[Future], Any], what: str, answer_s: float,
                 resend_s: float | None = None) -> Any:
    """Send a request with ``send`` and return the first answer; TimeoutError after ``answer_s``.

    With ``resend_s``, the request is sent again after each ``resend_s`` seconds without an answer:
    Fast DDS drops a service response when the client's response reader is not matched yet (it
    logs "client will not receive response" on the server), which happens to a new client's
    first calls on a busy host. Unanswered requests are handed to ``forget`` at the end.
    """
    done, futures = threading.Event(), []
    deadline = time.monotonic() + answer_s
    try:
        while True:
            future = send()
            future.add_done_callback(lambda _: done.set())
            futures.append(future)
            remaining = deadline - time.monotonic()
            if done.wait(max(0.0, min(remaining, resend_s or remaining))):
                return next(f for f in futures if f.done()).result()
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{what} did not answer within {answer_s:g} s")
    finally:
        for future in futures:
            if not future.done():
                forget(future)


class GroundingClient:
    """Talks to one grounding node: publishes prompts (and, optionally, images, depth and
    CameraInfo) and records everything the node publishes.

    ``namespace``: the node's namespace (its outputs are ``<namespace>/affordance_grounding/...``).
    ``domain_id``: the ROS domain (None: ``ROS_DOMAIN_ID`` or 0). ``query_topic``, ``image_topic``,
    ``depth_topic``, ``camera_info_topic``: where prompts and camera data are published (the
    node's defaults, as the launch file remaps them). ``image_reliability``: QoS of the camera
    publishers. ``outputs``: the node's outputs to subscribe to and record (the node draws
    ``overlay`` only while someone subscribes: leave it out to spare that work). Recorded lists
    are appended to from a background thread; read them through :meth:`wait_for` or under
    :attr:`lock`.
    ``camera``: with a node serving several cameras (parameter ``cameras``), the camera whose
    outputs (``~/<camera>/...``) and /diagnostics status are recorded; ``ground`` then asks for
    it unless told otherwise. Give ``image_topic`` etc. as that camera's topics.
    """

    def __init__(self, namespace: str = "", domain_id: int | None = None, *, query_topic: str = QUERY_TOPIC,
                 image_topic: str = "/camera/color/image_raw",
                 depth_topic: str = "/camera/aligned_depth_to_color/image_raw",
                 camera_info_topic: str = "/camera/color/camera_info",
                 image_reliability=ReliabilityPolicy.RELIABLE, node_name: str | None = None,
                 outputs: Iterable[str] = OUTPUTS, camera: str = ""):
        if unknown := set(outputs) - set(OUTPUTS):
            raise ValueError(f"unknown outputs {sorted(unknown)}; choose from {', '.join(OUTPUTS)}")
        self.namespace = namespace.rstrip("/")
        self.context = Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        default_name = "grounding_client" + self.namespace.replace("/", "_") + (f"_{camera}" if camera else "")
        node_name = node_name or default_name
        self.node = rclpy.create_node(node_name, context=self.context)
        self.lock = threading.Condition()
        self.results: list[AffordanceResult] = []
        self.result_arrivals: list[float] = []  # time.perf_counter() at which each of ``results`` came
        self.heatmaps: list[Image] = []
        self.overlays: list[Image] = []
        self.contacts: list[PointStamped] = []
        self.poses: list[PoseArray] = []
        self.markers: list[MarkerArray] = []
        self.diagnostics: list[dict[str, str]] = []

        self.image_topic, self.depth_topic = image_topic, depth_topic
        self.info_topic, self.query_topic = camera_info_topic, query_topic
        self.camera = camera
        self.node_path = node_path = f"{self.namespace}/{NODE_NAME}"
        self.output_prefix = f"{node_path}/{camera}" if camera else node_path
        sensor_qos = QoSProfile(depth=100, reliability=image_reliability)
        self.image_pub = self.node.create_publisher(Image, self.image_topic, sensor_qos)
        self.depth_pub = self.node.create_publisher(Image, self.depth_topic, sensor_qos)
        self.info_pub = self.node.create_publisher(CameraInfo, self.info_topic, sensor_qos)
        self.query_pub = self.node.create_publisher(
            String, self.query_topic,
            QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL))
        out_qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        recorded = {"result": (AffordanceResult, self.results), "heatmap": (Image, self.heatmaps),
                    "overlay": (Image, self.overlays), "contact_point": (PointStamped, self.contacts),
                    "contact_poses": (PoseArray, self.poses),
                    "markers": (MarkerArray, self.markers)}
        for name in outputs:
            msg_type, store = recorded[name]
            self.node.create_subscription(msg_type, f"{self.output_prefix}/{name}", self._recorder(store), out_qos)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 50)
        self.parameters = AsyncParameterClient(self.node, node_path)
        self.ground_client = self.node.create_client(Ground, f"{node_path}/ground")
        self._get_state = self.node.create_client(GetState, f"{node_path}/get_state")
        self._change_state = self.node.create_client(ChangeState, f"{node_path}/change_state")
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ recording
    def _spin(self) -> None:
        try:
            self.executor.spin()
        except Exception:  # shutdown races end the thread quietly
            pass

    def _recorder(self, store: list) -> Callable:
        def record(msg) -> None:
            with self.lock:
                if store is self.results:
                    self.result_arrivals.append(time.perf_counter())
                store.append(msg)
                self.lock.notify_all()
        return record

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name.startswith(f"{self.output_prefix}:"):
                values = {kv.key: kv.value for kv in status.values}
                values.update(_level=int.from_bytes(status.level, "little"), _message=status.message)
                with self.lock:
                    self.diagnostics.append(values)
                    self.lock.notify_all()

    def wait_for(self, predicate: Callable[[], Any], timeout: float) -> Any:
        """Wait until ``predicate()`` (called under the lock) is truthy; returns its last value."""
        deadline = time.monotonic() + timeout
        with self.lock:
            while not (value := predicate()):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return value
                self.lock.wait(min(remaining, 0.1))
            return value

    def next_result(self, timeout: float = 10.0) -> AffordanceResult | None:
        """The first result that arrives after this call, or None after ``timeout`` seconds."""
        with self.lock:
            count = len(self.results)
        if not self.wait_for(lambda: len(self.results) > count, timeout):
            return None
        with self.lock:
            return self.results[count]

    def clear(self) -> None:
        with self.lock:
            for store in (self.results, self.result_arrivals, self.heatmaps, self.overlays, self.contacts,
                          self.poses, self.markers, self.diagnostics):
                store.clear()

    def latest_diagnostics(self, timeout: float = 3.0, after: int | None = None) -> dict[str, str]:
        """The newest diagnostics of the node; with ``after``, one received after that many."""
        count = len(self.diagnostics) if after is None else after
        self.wait_for(lambda: len(self.diagnostics) > count, timeout)
        with self.lock:
            return dict(self.diagnostics[-1]) if self.diagnostics else {}

    def counter(self, name: str, timeout: float = 3.0) -> int:
        """A /diagnostics counter, from a status published after this call."""
        return int(self.latest_diagnostics(timeout).get(name, "-1"))

    # ------------------------------------------------------------------ publishing
    def header(self, stamp_ns: int | None = None, frame_id: str = "camera_optical_frame") -> Header:
        header = Header(frame_id=frame_id)
        if stamp_ns is None:
            header.stamp = self.node.get_clock().now().to_msg()
        else:
            header.stamp.sec, header.stamp.nanosec = divmod(int(stamp_ns), 1_000_000_000)
        return header

    def publish_image(self, array: np.ndarray, header: Header | None = None, encoding: str = "rgb8") -> Header:
        header = header or self.header()
        self.image_pub.publish(numpy_to_image(array, encoding, header))
        return header

    def publish_depth(self, array: np.ndarray, header: Header, encoding: str) -> None:
        self.depth_pub.publish(numpy_to_image(array, encoding, header))

    def publish_camera_info(self, info: CameraInfo) -> None:
        self.info_pub.publish(info)

    def publish_prompt(self, text: str) -> None:
        """Set the node's prompts: one or more action phrases separated by ';' (empty: idle)."""
        self.query_pub.publish(String(data=text))

    def set_parameters(self, timeout: float = 10.0, **values) -> list[SetParametersResult]:
        """Set parameters of the grounding node through its services; one result per parameter."""
        if not self.parameters.wait_for_services(timeout_sec=timeout):
            raise TimeoutError("parameter services of the grounding node not available")
        parameters = [Parameter(k, value=v) for k, v in values.items()]
        answer = first_answer(lambda: self.parameters.set_parameters(parameters), Future.cancel,
                              "set_parameters", timeout, RESEND_S)
        return list(answer.results)

    def get_parameters(self, *names: str, timeout: float = 10.0) -> dict[str, Any]:
        """Current values of the grounding node's parameters ``names``."""
        if not self.parameters.wait_for_services(timeout_sec=timeout):
            raise TimeoutError("parameter services of the grounding node not available")
        answer = first_answer(lambda: self.parameters.get_parameters(list(names)), Future.cancel,
                              "get_parameters", timeout, RESEND_S)
        return {n: Parameter.from_parameter_msg(ParameterMsg(name=n, value=v)).value
                for n, v in zip(names, answer.values)}

    def ground(self, prompts: Iterable[str], image: np.ndarray | Image | None = None,
               depth: np.ndarray | Image | None = None, camera_info: CameraInfo | None = None,
               timeout: float = 10.0, camera: str | None = None, frame_id: str = "camera_optical_frame"
               ) -> Ground.Response:
        """Call the node's ``~/ground`` service: one map per prompt, on ``image`` (an RGB uint8 array
        or an Image) or, when None, on the camera's next frame (with its paired depth when the node
        uses depth). ``depth``: aligned to ``image``, float32 metres or uint16 millimetres (or an
        Image); ``camera_info``: its intrinsics (None: the camera's latest); ``camera``: which of the
        node's cameras (None: the client's ``camera``; empty: the first). The node waits
        ``timeout`` seconds at most; the response says ``success`` and, if not, why (``message``).
        TimeoutError when the service is not there or does not answer."""
        header = self.header(frame_id=frame_id)
        request = Ground.Request(prompts=list(prompts), timeout_s=float(timeout),
                                 camera=self.camera if camera is None else camera)
        if image is not None:
            request.image = image if isinstance(image, Image) else numpy_to_image(image, "rgb8", header)
        if depth is not None:
            encoding = "16UC1" if getattr(depth, "dtype", None) == np.uint16 else "32FC1"
            request.depth = depth if isinstance(depth, Image) else numpy_to_image(depth, encoding, request.image.header)
        if camera_info is not None:
            request.camera_info = camera_info
        # the node answers by its own timeout, 5 s more cover transport; a lost answer is asked again once
        return self._call(self.ground_client, request, timeout, 2 * (timeout + 5.0), resend_s=timeout + 5.0)

    def lifecycle_state(self, timeout: float = 10.0) -> str:
        """The lifecycle state of a ``managed_grounding_node``: unconfigured, inactive, active or
        finalized (or a transition state such as configuring)."""
        return self._call(self._get_state, GetState.Request(), timeout, timeout, RESEND_S).current_state.label

    def change_state(self, transition: str, timeout: float = 120.0) -> bool:
        """Ask a ``managed_grounding_node`` for a lifecycle transition by its label (configure,
        activate, deactivate, cleanup, shutdown), as ``ros2 lifecycle set`` does; True when it
        succeeded. ``timeout`` covers building the model on configure.

        A lost answer does not hang the caller: while none comes, the node's state is asked every
        few seconds. Reaching the transition's goal state counts as success; a state still the
        one before the transition means the request was lost, and it is sent again (a duplicate the
        node already carried out is refused by the node as an invalid transition, which is harmless).
        """
        if transition not in TRANSITION_GOALS:
            raise ValueError(f"unknown transition {transition!r}; choose from {', '.join(TRANSITION_GOALS)}")
        goal = TRANSITION_GOALS[transition]
        before = self.lifecycle_state(timeout=min(timeout, 30.0))
        request = ChangeState.Request(transition=Transition(label=transition))
        done, futures = threading.Event(), []

        def send() -> None:
            future = self._change_state.call_async(request)
            future.add_done_callback(lambda _: done.set())
            futures.append(future)

        if not self._change_state.wait_for_service(timeout_sec=10.0):
            raise TimeoutError(f"service {self._change_state.srv_name} not available")
        deadline = time.monotonic() + timeout
        send()
        try:
            while not done.wait(RESEND_S):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"transition {transition} not answered within {timeout:g} s")
                try:
                    state = self.lifecycle_state(timeout=RESEND_S)
                except TimeoutError:
                    continue  # the node is busy with the transition (configure builds the model)
                if state == goal != before:
                    return True
                if state == before:
                    send()
            if any(f.done() and f.result().success for f in futures):
                return True
            return before != goal and self.lifecycle_state() == goal
        finally:
            for future in futures:
                if not future.done():
                    self._change_state.remove_pending_request(future)

    @staticmethod
    def _call(client, request, wait_s: float, answer_s: float, resend_s: float | None = None):
        """Call a service: TimeoutError when it is not there within ``wait_s`` seconds or does
        not answer within ``answer_s``; see :func:`first_answer` for ``resend_s``."""
        if not client.wait_for_service(timeout_sec=wait_s):
            raise TimeoutError(f"service {client.srv_name} not available")
        return first_answer(lambda: client.call_async(request), client.remove_pending_request,
                            f"service {client.srv_name}", answer_s, resend_s)

    def node_subscription_reliability(self, topic: str | None = None):
        """Reliability of the grounding node's subscription to ``topic`` (the image topic), or None."""
        for info in self.node.get_subscriptions_info_by_topic(topic or self.image_topic):
            if info.node_name == NODE_NAME:
                return info.qos_profile.reliability
        return None

    def publish_frame(self, rgb: np.ndarray, depth: tuple[np.ndarray, str] | None = None,
                      info: CameraInfo | None = None, frame_id: str = "camera_optical_frame") -> Header:
        """One camera capture: CameraInfo and depth (if given) and the image, all with one new
        header, which is returned."""
        header = self.header(frame_id=frame_id)
        if info is not None:
            info.header = header
            self.publish_camera_info(info)
        if depth is not None:
            self.publish_depth(depth[0], header, depth[1])
        self.publish_image(rgb, header)
        return header

    def stream_until(self, predicate: Callable[[], Any], rgb: np.ndarray, timeout: float = 60.0,
                     period: float = 0.25, depth: tuple[np.ndarray, str] | None = None,
                     info: CameraInfo | None = None, frame_id: str = "camera_optical_frame") -> Any:
        """Publish ``rgb`` (and depth + CameraInfo with the same stamp) every ``period`` seconds
        until ``predicate()`` holds: the first frames may be sent before discovery completes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.publish_frame(rgb, depth, info, frame_id)
            if value := self.wait_for(predicate, period):
                return value
        return predicate()

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self._thread.join(2.0)

    def __enter__(self) -> "GroundingClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

