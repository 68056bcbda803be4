"""The installed grounding node as a subprocess, for the tests, the demo and the ROS benchmark.

Isolation: every run picks its own ``domain_id`` and ``namespace`` (other programs on the machine
may run the same node); :func:`namespaced_client` publishes the camera topics and the query
inside the namespace, where :func:`namespaced_remappings` points the node.
"""
from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

from ament_index_python.packages import get_package_prefix, get_package_share_directory

from affordance_clip_ros.ros.client import PACKAGE, GroundingClient, fastdds_profile_path
from affordance_clip_ros.ros.compat import fastdds_profile_variable


def installed_executable(name: str = "grounding_node") -> Path:
    """grounding_node or managed_grounding_node, as `ros2 run` finds it."""
    return Path(get_package_prefix(PACKAGE)) / "lib" / PACKAGE / name


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
        env[fastdds_profile_variable()] = str(fastdds_profile_path())
    return env


def namespaced_remappings(namespace: str) -> dict[str, str]:
    """The node's camera and query topics, moved inside ``namespace``."""
    ns = namespace.rstrip("/")
    return {"image": f"{ns}/camera/image", "depth": f"{ns}/camera/depth", "camera_info": f"{ns}/camera/camera_info",
            "/affordance/query": f"{ns}/affordance/query"}


def namespaced_client(namespace: str, domain_id: int, **kwargs) -> GroundingClient:
    """A client for a node started with :func:`namespaced_remappings` (``namespace``)."""
    topics = namespaced_remappings(namespace)
    return GroundingClient(namespace, domain_id, query_topic=topics["/affordance/query"], image_topic=topics["image"],
                           depth_topic=topics["depth"], camera_info_topic=topics["camera_info"], **kwargs)


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
    """The installed grounding node (``executable``: or the managed one) in a subprocess; its
    console output goes to a log file."""

    def __init__(self, parameters: Mapping[str, Any], namespace: str = "/", remappings: Mapping[str, str] | None = None,
                 env: Mapping[str, str] | None = None, params_file: str | None = None,
                 log_path: str | os.PathLike | None = None, executable: str = "grounding_node"):
        self.namespace = namespace
        args = [str(installed_executable(executable)), "--ros-args", "-r", f"__ns:={namespace}"]
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
        if self.process is not None:
            raise RuntimeError("this node process was started already")
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
        """Starts the node unless :meth:`start` already has."""
        return self if self.process is not None else self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
