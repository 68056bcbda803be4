"""Small thread-safe pieces between the subscription callbacks and the inference worker.

* :class:`LatestSlot`: holds the newest unprocessed frame of each camera; a new frame replaces an
  older one of its camera (and is counted), so the worker always takes the newest and callbacks
  never wait; the waiting frames of all cameras are taken as one batch. Beside it, a queue of
  one-shot requests (~/ground), taken in turn with the batches.
* :class:`DepthBuffer`: depth images waiting for their colour image, matched by stamp.
* :class:`FrameStats`: counters and latency samples for /diagnostics.
* :class:`ThrottledLog`: at most one message per reason and period, with a count of the rest.
"""
from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable


def stamp_ns(stamp) -> int:
    """builtin_interfaces/Time -> integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


@dataclass
class Frame:
    msg: Any  # sensor_msgs/Image as received
    received: float  # time.monotonic() at reception
    camera: str = ""  # the camera it came from (parameter cameras; "" with one camera)


class LatestSlot:
    """A one-frame mailbox per camera plus a first-in first-out queue of requests: ``put`` and
    ``put_request`` never block; ``take`` waits for either (or ``close``). ``take`` hands out the
    newest frame of every camera that has one, as one batch, so a fast camera cannot starve a slow
    one. While both wait, batches and requests are taken in turn, so requests never starve the
    stream and the stream never starves them."""

    def __init__(self):
        self._cond = threading.Condition()
        self._frames: dict[str, Frame] = {}  # camera -> its newest unprocessed frame
        self._requests: collections.deque = collections.deque()
        self._request_next = True  # whose turn it is when both wait
        self._closed = False

    def put(self, frame: Frame) -> bool:
        """Store ``frame``; True when it replaced an unprocessed one of its camera."""
        with self._cond:
            replaced = self._frames.pop(frame.camera, None) is not None
            self._frames[frame.camera] = frame
            self._cond.notify()
        return replaced

    def put_request(self, request: Any) -> None:
        with self._cond:
            self._requests.append(request)
            self._cond.notify()

    def take(self, timeout: float | None = None, frames_from: float = 0.0) -> Any:
        """A batch (list) of the waiting frames, one per camera, oldest arrival first (removing them),
        or the oldest request; None on timeout or after :meth:`close`. Frames are not taken before
        ``time.monotonic()`` reaches ``frames_from`` (rate limit), a request at once."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._closed:
                now = time.monotonic()
                frames_ready = bool(self._frames) and now >= frames_from
                if self._requests and (self._request_next or not frames_ready):
                    self._request_next = False
                    return self._requests.popleft()
                if frames_ready:
                    self._request_next = True
                    batch, self._frames = list(self._frames.values()), {}
                    return batch
                waits = [t - now for t in (deadline, frames_from if self._frames else None) if t is not None]
                if deadline is not None and now >= deadline:
                    return None
                self._cond.wait(max(0.0, min(waits)) if waits else None)
            return None

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class DepthBuffer:
    """Depth images waiting for their colour image, looked up by the stamp nearest to a colour
    image's.

    Colour and depth of one capture travel on two topics and may arrive in either order, so
    :meth:`nearest` waits (briefly, up to ``wait_s``) for a depth image at or after the colour
    stamp while depth is streaming and the newest depth image is older. Depth images are dropped
    when a lookup makes them too old for any later colour image (colour stamps only grow), so the
    depth of a frame waiting for the model stays, however fast depth streams; :meth:`forget_before`
    drops them while no frame is processed. ``max_items`` bounds memory when no colour images come.
    """

    def __init__(self, max_items: int = 32):
        self._cond = threading.Condition()
        self._items: collections.deque = collections.deque(maxlen=max_items)  # (stamp_ns, msg)
        self._newest: tuple[int, float] | None = None  # (stamp_ns, arrival) of the last one added, even if dropped

    def add(self, msg) -> None:
        with self._cond:
            stamp = stamp_ns(msg.header.stamp)
            self._items.append((stamp, msg))
            self._newest = (stamp, time.monotonic())
            self._cond.notify_all()

    def forget_before(self, oldest_ns: int) -> None:
        """Drop the depth images stamped before ``oldest_ns``."""
        with self._cond:
            self._forget_before(oldest_ns)

    def _forget_before(self, oldest_ns: int) -> None:  # a filter, not a pop from the left: stamps may go back (bags)
        self._items = collections.deque((item for item in self._items if item[0] >= oldest_ns),
                                        maxlen=self._items.maxlen)

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def nearest(self, target_ns: int, max_age_s: float, wait_s: float = 0.0):
        """The depth message whose stamp is nearest ``target_ns`` and within ``max_age_s``, or None,
        after waiting up to ``wait_s`` for one that may still come. Depth images stamped more than
        ``max_age_s`` before ``target_ns`` are dropped afterwards."""
        deadline = time.monotonic() + wait_s
        with self._cond:
            while self._may_come(target_ns) and (remaining := deadline - time.monotonic()) > 0:
                self._cond.wait(remaining)
            return self._pick(target_ns, max_age_s)

    def nearest_if_final(self, target_ns: int, max_age_s: float) -> tuple[bool, object]:
        """``(True, nearest(...))`` when no depth image still to come can be nearer ``target_ns``
        (one at or after it is in, or depth is not streaming); ``(False, None)`` otherwise, without
        waiting or dropping anything."""
        with self._cond:
            if self._may_come(target_ns):
                return False, None
            return True, self._pick(target_ns, max_age_s)

    def _may_come(self, target_ns: int) -> bool:
        newest = self._newest
        return newest is not None and time.monotonic() - newest[1] < 1.0 and newest[0] < target_ns

    def _pick(self, target_ns: int, max_age_s: float):
        max_age_ns = int(max_age_s * 1e9)
        best = min(self._items, key=lambda item: abs(item[0] - target_ns), default=None)
        self._forget_before(target_ns - max_age_ns)
        if best is None or abs(best[0] - target_ns) > max_age_ns:
            return None
        return best[1]


class FrameStats:
    """Counters and the latency window behind /diagnostics (all methods thread-safe)."""

    COUNTERS = ("received", "processed", "replaced", "rejected", "failed", "downscaled", "no_depth", "idle", "lost")

    def __init__(self, window: int = 200, fps_window_s: float = 5.0):
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(self.COUNTERS, 0)
        self._latency_ms: collections.deque = collections.deque(maxlen=window)
        self._inference_ms: collections.deque = collections.deque(maxlen=window)
        self._done: collections.deque = collections.deque(maxlen=10_000)
        self._fps_window_s = fps_window_s
        self._start = time.monotonic()

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def processed(self, latency_ms: float | None, inference_ms: float) -> None:
        with self._lock:
            self._counts["processed"] += 1
            self._done.append(time.monotonic())
            self._inference_ms.append(inference_ms)
            if latency_ms is not None:
                self._latency_ms.append(latency_ms)

    def snapshot(self) -> dict[str, Any]:
        now = time.monotonic()
        with self._lock:
            counts = dict(self._counts)
            while self._done and now - self._done[0] > self._fps_window_s:
                self._done.popleft()
            span = min(self._fps_window_s, max(now - self._start, 1e-3))
            latency = sorted(self._latency_ms)
            inference = list(self._inference_ms)
            fps = len(self._done) / span
        return dict(counts, fps=fps, latency_mean_ms=_mean(latency), latency_p95_ms=_percentile(latency, 95),
                    inference_mean_ms=_mean(inference))


class LossWindow:
    """The share of frames lost in transport over the last ``window_s`` seconds, from the running
    totals of frames received and of frames DDS reported lost (best-effort sample-lost events)."""

    def __init__(self, window_s: float = 5.0):
        self._window_s = window_s
        self._samples: collections.deque = collections.deque()  # (time, received total, lost total)

    def add(self, received: int, lost: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._samples.append((now, received, lost))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self._window_s:
            self._samples.popleft()

    def share(self) -> tuple[float, int]:
        """(lost / (received + lost), frames lost) within the window; (0.0, 0) before two samples."""
        if len(self._samples) < 2:
            return 0.0, 0
        (_, received0, lost0), (_, received1, lost1) = self._samples[0], self._samples[-1]
        lost, received = lost1 - lost0, received1 - received0
        return (lost / (lost + received) if lost + received else 0.0), lost


def _mean(values) -> float:
    return sum(values) / len(values) if values else float("nan")


def _percentile(sorted_values, q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, int(round(q / 100.0 * (len(sorted_values) - 1)))))
    return sorted_values[index]


class ThrottledLog:
    """At most one message per ``key`` and ``period_s`` to an rclpy logger; the next message of a
    key says how many were suppressed in between.

    (rclpy remembers the severity of each calling line, so each severity has its own line here.)
    """

    def __init__(self, logger, period_s: float = 5.0, clock: Callable[[], float] = time.monotonic):
        self._logger = logger
        self._period = period_s
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def _due(self, key: str, message: str) -> str | None:
        now = self._clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self._period:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return None
            self._last[key] = now
            skipped = self._suppressed.pop(key, 0)
        return message + (f" ({skipped} similar message(s) suppressed)" if skipped else "")

    def info(self, key: str, message: str) -> bool:
        if (text := self._due(key, message)) is not None:
            self._logger.info(text)
        return text is not None

    def warning(self, key: str, message: str) -> bool:
        if (text := self._due(key, message)) is not None:
            self._logger.warning(text)
        return text is not None

    def error(self, key: str, message: str) -> bool:
        if (text := self._due(key, message)) is not None:
            self._logger.error(text)
        return text is not None
