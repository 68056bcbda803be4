"""The publishing stage of the node's pipeline (pure threading, no ROS).

The inference worker hands each inferred batch to :class:`PublishStage`, whose own thread does
what follows the model (3D points, overlay, messages, publishing) while the worker already infers
the next frames. At most one batch waits for the stage: ``submit`` blocks while one waits, so
nothing queues up without bound and the newest-frame rule still decides what is inferred next.
Batches are published in the order they were inferred.
"""
from __future__ import annotations

import queue
import threading
from typing import Callable

Job = Callable[[], None]


class PublishStage:
    """One thread running submitted jobs in order; an exception in a job goes to ``on_error`` and
    the stage goes on."""

    def __init__(self, on_error: Callable[[BaseException], None], name: str = "affordance_publish"):
        self._jobs: queue.Queue[Job | None] = queue.Queue(maxsize=1)
        self._on_error = on_error
        self._idle = threading.Condition()
        self._pending = 0  # submitted and not finished
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        """Run ``job`` after the jobs before it; blocks while one job already waits."""
        with self._idle:
            self._pending += 1
        self._jobs.put(job)

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every submitted job has finished; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def close(self, timeout: float = 1.5) -> None:
        """Finish the submitted jobs, then end the thread (waiting ``timeout`` s at most)."""
        try:
            self._jobs.put(None, timeout=timeout)
        except queue.Full:  # a job hangs: the daemon thread goes with the process
            return
        self._thread.join(timeout)

    @property
    def pending(self) -> int:
        with self._idle:
            return self._pending

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                job()
            except Exception as e:  # one batch must never stop the stage
                self._on_error(e)
            finally:
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()
