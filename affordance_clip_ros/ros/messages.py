"""Building the node's output messages from predictions (pure: no node, no publishing).

The result messages come from ``result_messages`` with rclpy's message classes; markers and
diagnostics are built here. Every message built here carries the header of the input image it
was computed from.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Sequence

from builtin_interfaces.msg import Duration
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Point, PointStamped
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker, MarkerArray

from ..model.grounder import AffordancePrediction
from ..msg import AffordanceMap, AffordanceResult, ContactPoint
from . import result_messages
from .conversions import numpy_to_image
from .result_messages import Point3, best_point

# One colour per prompt (RGBA 0..1), cycled: markers of different prompts stay apart in RViz.
PALETTE = ((0.95, 0.26, 0.21), (0.13, 0.59, 0.95), (0.30, 0.69, 0.31), (1.0, 0.76, 0.03), (0.61, 0.15, 0.69),
           (0.0, 0.74, 0.83))
SPHERE_DIAMETER_M = 0.03
TEXT_HEIGHT_M = 0.03

RCLPY_TYPES = result_messages.MessageTypes(image=numpy_to_image, Point=Point, PointStamped=PointStamped,
                                           ContactPoint=ContactPoint, AffordanceMap=AffordanceMap,
                                           AffordanceResult=AffordanceResult)
heatmap_image = functools.partial(result_messages.heatmap_image, RCLPY_TYPES)
contact_points = functools.partial(result_messages.contact_points, RCLPY_TYPES)
result_message = functools.partial(result_messages.result_message, RCLPY_TYPES)
point_stamped = functools.partial(result_messages.point_stamped, RCLPY_TYPES)
__all__ = ["best_point", "contact_points", "diagnostics_message", "heatmap_image", "marker_array", "point_stamped",
           "result_message"]


def marker_array(header: Header, predictions: Sequence[AffordancePrediction],
                 points: Sequence[Sequence[Point3 | None] | None]) -> MarkerArray:
    """DELETEALL first (clears the previous frame's markers), then for every peak with a 3D
    point a sphere and a text label ``"<prompt> #<rank> <score>"``; namespace = the prompt."""
    markers = [Marker(header=header, action=Marker.DELETEALL)]
    for p_index, prediction in enumerate(predictions):
        r, g, b = PALETTE[p_index % len(PALETTE)]
        for rank, (peak, point) in enumerate(zip(prediction.peaks, points[p_index] or []), start=1):
            if point is None:
                continue
            position = Point(x=float(point[0]), y=float(point[1]), z=float(point[2]))
            sphere = Marker(header=header, ns=prediction.prompt, id=2 * rank, type=Marker.SPHERE, action=Marker.ADD,
                            color=ColorRGBA(r=r, g=g, b=b, a=0.9), lifetime=Duration(sec=0))
            sphere.pose.position = position
            sphere.pose.orientation.w = 1.0
            sphere.scale.x = sphere.scale.y = sphere.scale.z = SPHERE_DIAMETER_M
            text = Marker(header=header, ns=prediction.prompt, id=2 * rank + 1, type=Marker.TEXT_VIEW_FACING,
                          action=Marker.ADD, color=ColorRGBA(r=1.0, g=1.0, b=1.0, a=1.0),
                          text=f"{prediction.prompt} #{rank} {peak.score:.2f}")
            text.pose.position = Point(x=position.x, y=position.y - 1.5 * SPHERE_DIAMETER_M, z=position.z)  # above
            text.pose.orientation.w = 1.0
            text.scale.z = TEXT_HEIGHT_M
            markers += [sphere, text]
    return MarkerArray(markers=markers)


def _format(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.2f}"
    return str(value)


def diagnostics_message(stamp, name: str, hardware_id: str, level: bytes, message: str,
                        values: dict[str, Any]) -> DiagnosticArray:
    """One DiagnosticStatus; ``level`` is DiagnosticStatus.OK / WARN / ERROR / STALE."""
    status = DiagnosticStatus(level=level, name=name, message=message, hardware_id=hardware_id,
                              values=[KeyValue(key=k, value=_format(v)) for k, v in values.items()])
    array = DiagnosticArray(status=[status])
    array.header.stamp = stamp
    return array
