"""AffordanceCLIP for ROS 2: open-vocabulary affordance heatmaps from a frozen CLIP and a small FPN.

The pure Python/torch parts (``model``, ``training``, ``evaluation``) import without ROS; the
``ros`` subpackage and the generated ``msg`` interfaces need a ROS 2 environment.
"""

__version__ = "0.1.0"
