"""Run the installed ``grounding_node`` as a process and talk to it over ROS 2.

Used by the tests (test/test_ros_*.py) and the demo (scripts/ros_demo.py); also handy to try
the node from a Python shell::

    env = ros_env(domain_id=42)
    with NodeProcess({"clip_model": "RN-tiny", "clip_pretrained": "none"}, namespace="/demo", env=env) as node, \
            GroundingClient("/demo", domain_id=42) as client:
        client.publish_prompt("drink with")
        client.stream_until(lambda: client.results, skimage.data.coffee())
        print(client.results[-1].maps[0].peaks)

Isolation: every run should pick its own ``domain_id`` and ``namespace`` (other programs on the
machine may run the same node); the client publishes the camera topics and the query inside the
namespace, and keeps only this node's /diagnostics.
"""
from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import rclpy
from ament_index_python.packages import get_package_prefix, get_package_share_directory
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PointStamped
from rcl_interfaces.msg import SetParametersResult
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.parameter_client import AsyncParameterClient
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header, String
from visualization_msgs.msg import MarkerArray

from ..msg import AffordanceResult
from .compat import fastdds_profile_set, fastdds_profile_variable
from .conversions import numpy_to_image

PACKAGE = "affordance_clip_ros"
NODE_NAME = "affordance_grounding"
# Middlebury 2014 "Motorcycle" at the 1/4 scale of skimage.data.stereo_motorcycle(): focal length
# and principal point (px), baseline (m) and disparity offset (px).
MOTORCYCLE_F, MOTORCYCLE_CX, MOTORCYCLE_CY = 3979.911 / 4, 1244.772 / 4, 1019.507 / 4
MOTORCYCLE_BASELINE_M, MOTORCYCLE_DOFFS = 0.193001, 124.343 / 4


def motorcycle_rgbd() -> tuple[np.ndarray, np.ndarray, CameraInfo]:
    """A real RGB-D frame: the left image, float32 depth in metres (NaN where the disparity is
    unknown) from depth = baseline * f / (disparity + doffs), and its CameraInfo (K, P, R)."""
    import skimage.data

    left, _, disparity = skimage.data.stereo_motorcycle()
    f, cx, cy = MOTORCYCLE_F, MOTORCYCLE_CX, MOTORCYCLE_CY
    with np.errstate(invalid="ignore", divide="ignore"):
        depth = (MOTORCYCLE_BASELINE_M * f / (disparity + MOTORCYCLE_DOFFS)).astype(np.float32)
    depth[~np.isfinite(disparity) | ~np.isfinite(depth) | (depth <= 0)] = np.nan
    info = CameraInfo(width=left.shape[1], height=left.shape[0], distortion_model="plumb_bob")
    info.k = [f, 0.0, cx, 0.0, f, cy, 0.0, 0.0, 1.0]
    info.p = [f, 0.0, cx, 0.0, 0.0, f, cy, 0.0, 0.0, 0.0, 1.0, 0.0]
    info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    return left, depth, info


def installed_executable() -> Path:
    return Path(get_package_prefix(PACKAGE)) / "lib" / PACKAGE / "grounding_node"


def installed_share() -> Path:
    return Path(get_package_share_directory(PACKAGE))


def free_domain_id(salt: int = 0) -> int:
    """A ROS domain id (101..200) derived from this process id and ``salt``, so that concurrent
    test runs on one machine are unlikely to share a domain (namespaces separate them anyway)."""
    return 101 + (os.getpid() * 7 + salt * 31) % 100


def ros_env(domain_id: int, fastdds_profile: bool = True, **extra: str) -> dict[str, str]:
    """The environment for the node process: this one plus the domain id and, by default, the
    package's Fast DDS profile (shared memory + large UDP buffers, see config/fastdds_profile.xml)."""
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain_id), PYTHONUNBUFFERED="1", **extra)
    if fastdds_profile:
        env[fastdds_profile_variable()] = str(installed_share() / "config" / "fastdds_profile.xml")
    return env


def use_fastdds_profile_here() -> bool:
    """Give this process the package's Fast DDS profile, as the launch file gives it to the node.

    Between processes, camera-sized images over Fast DDS's default transports are lost and
    repaired late (DESIGN.md section 5), which also delays small messages queued behind them;
    with the profile (shared memory, big buffers) on both sides they arrive in milliseconds.
    Fast DDS reads the profile variable once per process, when the first participant is
    created: call this before any rclpy node exists (at import or start-up). A value already set
    is kept (returns False).
    """
    if fastdds_profile_set():
        return False
    os.environ[fastdds_profile_variable()] = str(installed_share() / "config" / "fastdds_profile.xml")
    return True


def _param_arg(name: str, value: Any) -> str:
    """``name:=value`` for ``--ros-args -p`` (values are read as YAML: strings are quoted)."""
    def quote(text: str) -> str:
        return "'" + text.replace("'", "''") + "'"
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, (list, tuple)):
        text = "[" + ", ".join(quote(str(v)) for v in value) + "]"
    elif isinstance(value, str):
        text = quote(value)
    else:
        text = repr(value)
    return f"{name}:={text}"


class NodeProcess:
    """The installed grounding node in a subprocess; its console output goes to a log file."""

    def __init__(self, parameters: Mapping[str, Any], namespace: str = "/", remappings: Mapping[str, str] | None = None,
                 env: Mapping[str, str] | None = None, params_file: str | None = None,
                 log_path: str | os.PathLike | None = None):
        self.namespace = namespace
        args = [str(installed_executable()), "--ros-args", "-r", f"__ns:={namespace}"]
        if params_file:
            args += ["--params-file", str(params_file)]
        for name, value in parameters.items():
            args += ["-p", _param_arg(name, value)]
        for src, dst in (remappings or {}).items():
            args += ["-r", f"{src}:={dst}"]
        self.args = args
        self.env = dict(env or os.environ)
        if log_path is None:
            fd, log_path = tempfile.mkstemp(prefix="grounding_node.", suffix=".log")
            os.close(fd)
        self.log_path = Path(log_path)
        self.process: subprocess.Popen | None = None

    def start(self) -> "NodeProcess":
        self._log_file = open(self.log_path, "wb")
        self.process = subprocess.Popen(self.args, stdout=self._log_file, stderr=subprocess.STDOUT, env=self.env,
                                        start_new_session=True)
        return self

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, text: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return True
            if not self.running():
                return text in self.log()
            time.sleep(0.1)
        return False

    def rss_kb(self) -> int:
        """Resident memory of the node process (VmRSS), kB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS line")

    def send_signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout)

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGINT, then SIGKILL when it does not exit within ``timeout`` seconds."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        self._log_file.close()
        return self.process.returncode

    def __enter__(self) -> "NodeProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class GroundingClient:
    """A node that plays the camera and the user: publishes images, depth, CameraInfo and
    prompts into ``namespace`` and records everything the grounding node publishes.

    Recorded lists (``results``, ``heatmaps``, ``overlays``, ``contacts``, ``markers``,
    ``diagnostics``) are appended to from a background executor thread; read them through
    :meth:`wait_for` or under :attr:`lock`.
    """

    def __init__(self, namespace: str, domain_id: int, image_reliability=ReliabilityPolicy.RELIABLE,
                 node_name: str | None = None):
        self.namespace = namespace.rstrip("/")
        self.context = Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        node_name = node_name or "grounding_client" + self.namespace.replace("/", "_")
        self.node = rclpy.create_node(node_name, context=self.context)
        self.lock = threading.Condition()
        self.results: list[AffordanceResult] = []
        self.result_arrivals: list[float] = []  # time.perf_counter() at which each of ``results`` came
        self.heatmaps: list[Image] = []
        self.overlays: list[Image] = []
        self.contacts: list[PointStamped] = []
        self.markers: list[MarkerArray] = []
        self.diagnostics: list[dict[str, str]] = []

        ns = self.namespace
        self.image_topic, self.depth_topic = f"{ns}/camera/image", f"{ns}/camera/depth"
        self.info_topic, self.query_topic = f"{ns}/camera/camera_info", f"{ns}/affordance/query"
        self.output_prefix = f"{ns}/{NODE_NAME}"
        sensor_qos = QoSProfile(depth=100, reliability=image_reliability)
        self.image_pub = self.node.create_publisher(Image, self.image_topic, sensor_qos)
        self.depth_pub = self.node.create_publisher(Image, self.depth_topic, sensor_qos)
        self.info_pub = self.node.create_publisher(CameraInfo, self.info_topic, sensor_qos)
        self.query_pub = self.node.create_publisher(
            String, self.query_topic,
            QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL))
        out_qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        for name, msg_type, store in (("result", AffordanceResult, self.results), ("heatmap", Image, self.heatmaps),
                                      ("overlay", Image, self.overlays), ("contact_point", PointStamped, self.contacts),
                                      ("markers", MarkerArray, self.markers)):
            self.node.create_subscription(msg_type, f"{self.output_prefix}/{name}", self._recorder(store), out_qos)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 50)
        self.parameters = AsyncParameterClient(self.node, f"{self.output_prefix}")
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ recording
    def _spin(self) -> None:
        try:
            self.executor.spin()
        except Exception:  # noqa: BLE001 - shutdown races end the thread quietly
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

    def clear(self) -> None:
        with self.lock:
            for store in (self.results, self.result_arrivals, self.heatmaps, self.overlays, self.contacts,
                          self.markers, self.diagnostics):
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
        self.query_pub.publish(String(data=text))

    def set_parameters(self, timeout: float = 10.0, **values) -> list[SetParametersResult]:
        """Set parameters of the grounding node through its services; one result per parameter."""
        if not self.parameters.wait_for_services(timeout_sec=timeout):
            raise TimeoutError("parameter services of the grounding node not available")
        future = self.parameters.set_parameters([Parameter(k, value=v) for k, v in values.items()])
        deadline = time.monotonic() + timeout
        while not future.done() and time.monotonic() < deadline:
            time.sleep(0.02)
        if not future.done():
            raise TimeoutError("set_parameters did not answer")
        return list(future.result().results)

    def get_parameters(self, *names: str, timeout: float = 10.0) -> dict[str, Any]:
        if not self.parameters.wait_for_services(timeout_sec=timeout):
            raise TimeoutError("parameter services of the grounding node not available")
        future = self.parameters.get_parameters(list(names))
        deadline = time.monotonic() + timeout
        while not future.done() and time.monotonic() < deadline:
            time.sleep(0.02)
        if not future.done():
            raise TimeoutError("get_parameters did not answer")
        values = future.result().values
        return {n: Parameter.from_parameter_msg(_named(n, v)).value for n, v in zip(names, values)}

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


def _named(name: str, value):
    from rcl_interfaces.msg import Parameter as ParameterMsg
    return ParameterMsg(name=name, value=value)
