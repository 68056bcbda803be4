"""The ROS 2 layer: the ``affordance_grounding`` node, its Python client, and the pure helpers
they are built from.

* ``conversions``: sensor_msgs/Image <-> numpy, exact and strict
* ``geometry``: depth images in metres, window medians, pinhole deprojection
* ``queries``: parsing ``"cut with; pour"`` into a bounded list of prompts
* ``node_parameters``: the parameter table's ROS descriptors, its one validation callback, Settings
* ``messages``: building result, marker and diagnostics messages
* ``frames``: the newest-frame slot, the depth buffer, statistics and throttled logging
* ``inference``: the grounder on frames of any size (huge frames are downscaled for the model)
* ``compat``: the few things that differ between ROS 2 distributions (Jazzy, Kilted)
* ``camera_stream``: one camera's subscriptions, publishers, buffers and counters (parameter ``cameras``)
* ``pipeline``: the publishing stage that runs beside the inference worker
* ``grounding_node``: the node and ``main``
* ``managed_node``: the same node as a lifecycle node (``managed_grounding_node``)
* ``stop_signals``: SIGINT/SIGTERM from the executables' first line on
* ``client``: ``GroundingClient``, for a planner or a notebook: set prompts, receive results

Only ``grounding_node``, ``managed_node`` and ``client`` create rclpy nodes (``camera_stream``
creates a camera's entities on the node); the others are pure functions and small classes that
are tested without a running ROS graph.
"""
