"""The node executables, ``grounding_node`` and ``managed_grounding_node``: the ROS context, the
executor, the routing of Python logging, and an orderly shutdown on SIGINT/SIGTERM.

    ros2 run affordance_clip_ros grounding_node
    ros2 run affordance_clip_ros managed_grounding_node
"""
from __future__ import annotations

import logging
import threading
from typing import NoReturn

import rclpy
from rclpy.context import Context
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.logging import get_logger
from rclpy.signals import SignalHandlerOptions

from .grounding_node import NODE_NAME, GroundingNode, StartupError
from .managed_node import ManagedGroundingNode
from .stop_signals import StopSignals, exit_now

SPIN_PERIOD_S = 0.05  # how often the main thread looks at the stop event between callbacks


def main(args: list[str] | None = None, signals: StopSignals | None = None, managed: bool = False) -> NoReturn:
    """An executable: run the node, then end the process at once (see :func:`.stop_signals.exit_now`).
    Use :func:`run` to run the node inside a longer-lived Python process."""
    exit_now(run(args, signals or StopSignals.install(), managed))


def run(args: list[str] | None = None, signals: StopSignals | None = None, managed: bool = False) -> int:
    """Run the node until SIGINT/SIGTERM; 0 after a clean shutdown, 1 when it cannot start.

    ``signals``: installed by the executable before its imports (see :mod:`.stop_signals`;
    without it, Ctrl-C raises KeyboardInterrupt as usual). Once the node runs, a signal only asks
    for the shutdown, which then runs in order on this thread: the worker finishes the frame in hand
    and stops, the executor stops, the node and only then the ROS context are destroyed.
    (rclpy's own handlers shut the context down at once, under a worker that may be publishing:
    that crashed the process with SIGSEGV now and then.) ``managed``: the lifecycle node, which
    starts unconfigured.
    """
    context = Context()
    rclpy.init(args=args, context=context, signal_handler_options=SignalHandlerOptions.NO)
    stop_requested = signals.requested if signals else threading.Event()
    logger = get_logger(NODE_NAME)
    node = None
    executor = SingleThreadedExecutor(context=context)
    try:
        if managed:
            node = ManagedGroundingNode(context=context, signals=signals)
        else:
            node = GroundingNode(context=context)
        logger = node.get_logger()
        route_python_logging(logger)
        if not managed:
            node.start()
        executor.add_node(node)
        if signals:
            signals.started()
        while not stop_requested.is_set() and context.ok():
            executor.spin_once(timeout_sec=SPIN_PERIOD_S)
    except StartupError as e:
        logger.error(str(e))
        return 1
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.stop()
        executor.shutdown(timeout_sec=1.0)
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown(context=context)
    return 0


class _RosLogHandler(logging.Handler):
    """Python ``logging`` records of this package (the model's warnings) -> the node's logger."""

    def __init__(self, logger):
        super().__init__(logging.INFO)
        self._logger = logger

    def emit(self, record: logging.LogRecord) -> None:
        message = self.format(record)
        if record.levelno >= logging.ERROR:
            self._logger.error(message)
        elif record.levelno >= logging.WARNING:
            self._logger.warning(message)
        else:
            self._logger.info(message)


def route_python_logging(logger) -> None:
    """Python ``logging`` (the model's INFO and up, other libraries' WARNING and up) -> ``logger``."""
    root = logging.getLogger()
    root.handlers[:] = [_RosLogHandler(logger)]
    logging.getLogger("affordance_clip_ros").setLevel(logging.INFO)
