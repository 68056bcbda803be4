"""A camera played from a test or benchmark: one image published at a fixed rate on a thread."""
from __future__ import annotations

import threading
import time

from affordance_clip_ros.ros.client import GroundingClient


class CameraPlayer:
    """Publishes ``rgb`` through ``client`` at ``rate_hz`` (tagged ``frame_id``) while in a ``with``
    block; ``sent`` maps each frame's stamp (sec, nanosec) to ``time.perf_counter()`` at publishing."""

    def __init__(self, client: GroundingClient, rgb, rate_hz: float, frame_id: str = "camera_optical_frame"):
        self.client, self.rgb, self.period, self.frame_id = client, rgb, 1.0 / rate_hz, frame_id
        self.sent: dict[tuple[int, int], float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        next_at = time.perf_counter()
        while not self._stop.is_set():
            sent = time.perf_counter()
            header = self.client.publish_image(self.rgb, self.client.header(frame_id=self.frame_id))
            self.sent[(header.stamp.sec, header.stamp.nanosec)] = sent
            next_at += self.period
            self._stop.wait(max(0.0, next_at - time.perf_counter()))

    def __enter__(self) -> "CameraPlayer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(2.0)

    def answered(self) -> list[tuple[float, object]]:
        """(publish -> receipt in ms, AffordanceResult) for each played frame the client got a result for."""
        with self.client.lock:
            return [((arrival - self.sent[stamp]) * 1e3, r)
                    for r, arrival in zip(self.client.results, self.client.result_arrivals)
                    if (stamp := (r.header.stamp.sec, r.header.stamp.nanosec)) in self.sent]
