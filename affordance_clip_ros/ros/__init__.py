"""The ROS 2 layer: the ``affordance_grounding`` node and the pure helpers it is built from.

* ``conversions``: sensor_msgs/Image <-> numpy, exact and strict
* ``geometry``: depth images in metres, window medians, pinhole deprojection
* ``prompts``: parsing ``"cut with; pour"`` into a bounded list of prompts
* ``params``: the parameter table, its descriptors and its one validation function
* ``messages``: building result, marker and diagnostics messages
* ``frames``: the newest-frame slot, the depth buffer, statistics and throttled logging
* ``inference``: the grounder on frames of any size (huge frames are downscaled for the model)
* ``compat``: the few things that differ between ROS 2 distributions (Jazzy, Kilted)
* ``grounding_node``: the node and ``main``
* ``harness``: start the installed node as a process and talk to it (tests and the demo)

Only ``grounding_node`` and ``harness`` create rclpy nodes; the others are pure functions and
small classes that are tested without a running ROS graph.
"""
