"""The ``managed_grounding_node`` executable: the grounding node as a ROS 2 lifecycle node.

    ros2 run affordance_clip_ros managed_grounding_node --ros-args -r image:=/camera/color/image_raw
    ros2 lifecycle set /affordance_grounding configure
    ros2 lifecycle set /affordance_grounding activate

The same parameters, topics and ~/ground service as ``grounding_node``, plus the standard
lifecycle services (``~/change_state``, ``~/get_state``, ``~/get_available_transitions``, ...)
and ``~/transition_event``. The states (docs/ros.md, "Managed node"):

* unconfigured: parameters only, nothing loaded;
* configure: builds the model (a failure is logged, the transition fails, the node stays
  unconfigured and can be configured again);
* active: subscribes to the camera and publishes; ~/ground answers;
* deactivate: unsubscribes from the camera after the frame in hand; the model stays;
* cleanup: frees the model, GPU memory included;
* shutdown (from every state): as cleanup, then finalized.

Prompts (``/affordance/query`` and the ``prompts`` parameter) are taken in every state and
apply once active.
"""
from __future__ import annotations

from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn

from .grounding_node import GroundingNode, StartupError
from .stop_signals import StopSignals


class ManagedGroundingNode(GroundingNode, LifecycleNode):
    """GroundingNode whose model and camera traffic follow the lifecycle transitions."""

    def __init__(self, signals: StopSignals | None = None, **kwargs):
        super().__init__(**kwargs)
        self._signals = signals

    def destroy_node(self) -> None:
        """Also destroy rclpy's lifecycle state machine: it holds the node's handle, and rclpy's
        LifecycleNode leaves it, so the node and its DDS participant outlived ``destroy_node`` and
        the participant's shared-memory files in /dev/shm outlived the process."""
        super().destroy_node()
        self._state_machine.destroy_when_not_in_use()

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            if self._signals is not None:
                with self._signals.ends_at_once():  # Ctrl-C while the model is built ends the process
                    self.load_model()
            else:
                self.load_model()
        except StartupError as e:
            self.get_logger().error(f"configure failed, still unconfigured: {e}")
            return TransitionCallbackReturn.FAILURE
        self.get_logger().info(f"configured: CLIP {self.settings.clip_model} ({self.grounder.mode}) on "
                               f"{self.grounder.device}; activate to subscribe and publish")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.open_io()
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.close_io()
        self.get_logger().info("inactive: unsubscribed from the camera, the model stays loaded")
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.free_model()
        self.get_logger().info("cleaned up: model freed")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self._io_open:
            self.close_io()
        self.free_model()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        """A transition raised: back to unconfigured with nothing loaded."""
        self.get_logger().error(f"error in state {state.label}: closing and freeing the model")
        if self._io_open:
            self.close_io()
        self.free_model()
        return TransitionCallbackReturn.SUCCESS
