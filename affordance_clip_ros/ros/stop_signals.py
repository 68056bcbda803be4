"""SIGINT and SIGTERM for the node executables, from the first line on (standard library only).

The executables install :class:`StopSignals` before they import torch. The signals are then
blocked in every thread and one thread waits for them, so a signal is handled at once whatever
the main thread is doing (importing, loading weights, building the int8 engine in C code):

* while the process is starting or a lifecycle ``configure`` runs, it ends the process at once,
  with a one-line note and exit code 0 (nothing is published yet, so nothing is cut short);
* once the node runs, it asks for the ordered shutdown (:attr:`StopSignals.requested`); a second
  signal during that shutdown ends the process at once.
"""
from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
from contextlib import contextmanager
from typing import Iterator, NoReturn

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """SIGINT/SIGTERM handled by one waiting thread (see the module docstring)."""

    def __init__(self) -> None:
        self.requested = threading.Event()
        self._ends_at_once = 1  # > 0: starting, or inside ends_at_once()
        self._lock = threading.Lock()

    @classmethod
    def install(cls) -> "StopSignals":
        """Block the stop signals (threads started later inherit the mask) and start the thread
        that waits for them. Call before any other thread is started."""
        signals = cls()
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        threading.Thread(target=signals._wait, name="stop_signals", daemon=True).start()
        return signals

    def started(self) -> None:
        """Start-up is over: from now on a signal asks for the ordered shutdown."""
        with self._lock:
            self._ends_at_once -= 1

    @contextmanager
    def ends_at_once(self) -> Iterator[None]:
        """Inside, a signal ends the process at once (a lifecycle configure building the model)."""
        with self._lock:
            self._ends_at_once += 1
        try:
            yield
        finally:
            with self._lock:
                self._ends_at_once -= 1

    def _wait(self) -> None:
        while True:
            signum = signal.sigwait(STOP_SIGNALS)
            with self._lock:
                at_once = self._ends_at_once > 0 or self.requested.is_set()
                if not at_once:
                    self.requested.set()
            if at_once:
                name = signal.Signals(signum).name
                sys.stderr.write(f"affordance_grounding: {name} while starting or stopping: exiting now\n")
                exit_now(0)


def exit_now(code: int) -> NoReturn:
    """Flush every output and end the process without the interpreter's finalisation.

    Called once the node, its DDS entities and the ROS context are shut down (or before they
    exist); what is left is tearing down torch, ONNX Runtime and the DDS libraries, which takes
    1 to 1.5 s on two cores and would make Ctrl-C / SIGTERM take that much longer.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        ctypes.CDLL(None).fflush(None)  # C stdio buffers (RCUTILS_LOGGING_USE_STDOUT=1 writes there)
    except (OSError, AttributeError):
        pass
    os._exit(code)
