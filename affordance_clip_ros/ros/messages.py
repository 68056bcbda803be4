"""Building the node's output messages from predictions (pure: no node, no publishing).

The result messages come from ``result_messages`` with rclpy's message classes; contact poses,
markers and diagnostics are built here. Every message built here carries the header of the input
image it was computed from.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import numpy as np
from builtin_interfaces.msg import Duration
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Point, PointStamped, Pose, PoseArray, Quaternion, Vector3
from scipy.spatial.transform import Rotation
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker, MarkerArray

from ..model.grounder import AffordancePrediction
from ..msg import AffordanceMap, AffordanceResult, ContactPoint
from . import result_messages
from .conversions import numpy_to_image
from .result_messages import Point3, Points, best_point, nth

# One colour per prompt (RGBA 0..1), cycled: markers of different prompts stay apart in RViz.
PALETTE = ((0.95, 0.26, 0.21), (0.13, 0.59, 0.95), (0.30, 0.69, 0.31), (1.0, 0.76, 0.03), (0.61, 0.15, 0.69),
           (0.0, 0.74, 0.83))
SPHERE_DIAMETER_M = 0.03
TEXT_HEIGHT_M = 0.03
ARROW_LENGTH_M = 0.08  # approach arrows: from this far out along the normal to the contact point
ARROW_SHAFT_M = 0.008

RCLPY_TYPES = result_messages.MessageTypes(image=numpy_to_image, Point=Point, Vector3=Vector3,
                                           PointStamped=PointStamped, ContactPoint=ContactPoint,
                                           AffordanceMap=AffordanceMap, AffordanceResult=AffordanceResult)
heatmap_image = functools.partial(result_messages.heatmap_image, RCLPY_TYPES)
contact_points = functools.partial(result_messages.contact_points, RCLPY_TYPES)
result_message = functools.partial(result_messages.result_message, RCLPY_TYPES)
point_stamped = functools.partial(result_messages.point_stamped, RCLPY_TYPES)
__all__ = ["approach_quaternion", "best_point", "contact_points", "contact_poses", "diagnostic_status",
           "diagnostics_message", "heatmap_image", "marker_array", "point_stamped", "result_message"]


def approach_quaternion(approach: Point3) -> Quaternion:
    """Orientation whose z axis is the unit vector ``approach`` and whose y axis is as close to the
    optical frame's y (down) as it can be (so that poses are repeatable, not spun at random)."""
    z = np.asarray(approach, dtype=np.float64)
    z /= np.linalg.norm(z)
    x = np.cross((0.0, 1.0, 0.0), z)
    if np.linalg.norm(x) < 1e-6:  # approaching along y: take the optical x as reference
        x = np.cross(z, (1.0, 0.0, 0.0))
    x /= np.linalg.norm(x)
    qx, qy, qz, qw = Rotation.from_matrix(np.column_stack([x, np.cross(z, x), z])).as_quat()
    return Quaternion(x=float(qx), y=float(qy), z=float(qz), w=float(qw))


def contact_poses(header: Header, points: Points, normals: Points | None) -> PoseArray:
    """One pose per 3D peak of the first prompt, best first: position = the point, z axis = the
    approach direction (minus the surface normal, into the surface); where no normal could be
    fitted, the viewing ray from the camera to the point."""
    poses = []
    first_normals = nth(normals, 0) if normals else None
    for i, point in enumerate((points[0] or []) if points else []):
        if point is None:
            continue
        normal = nth(first_normals, i)
        approach = tuple(-c for c in normal) if normal is not None else point
        poses.append(Pose(position=Point(x=float(point[0]), y=float(point[1]), z=float(point[2])),
                          orientation=approach_quaternion(approach)))
    return PoseArray(header=header, poses=poses)


def marker_array(header: Header, predictions: Sequence[AffordancePrediction], points: Points,
                 normals: Points | None = None) -> MarkerArray:
    """DELETEALL first (clears the previous frame's markers), then for every peak with a 3D
    point a sphere and a text label ``"<prompt> #<rank> <score>"`` (namespace = the prompt) and,
    where its surface normal is known, an arrow along the approach direction ending at the point
    (namespace ``"<prompt>/approach"``, id = rank)."""
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
            if (normal := nth(nth(normals, p_index), rank - 1)) is not None:
                start = Point(x=position.x + ARROW_LENGTH_M * normal[0], y=position.y + ARROW_LENGTH_M * normal[1],
                              z=position.z + ARROW_LENGTH_M * normal[2])
                arrow = Marker(header=header, ns=f"{prediction.prompt}/approach", id=rank, type=Marker.ARROW,
                               action=Marker.ADD, color=ColorRGBA(r=r, g=g, b=b, a=1.0), points=[start, position],
                               lifetime=Duration(sec=0))
                arrow.pose.orientation.w = 1.0
                arrow.scale.x, arrow.scale.y, arrow.scale.z = ARROW_SHAFT_M, 2 * ARROW_SHAFT_M, 2 * ARROW_SHAFT_M
                markers.append(arrow)
    return MarkerArray(markers=markers)


def _format(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.2f}"
    return str(value)


def diagnostic_status(name: str, hardware_id: str, level: bytes, message: str,
                      values: dict[str, Any]) -> DiagnosticStatus:
    """One DiagnosticStatus; ``level`` is DiagnosticStatus.OK / WARN / ERROR / STALE."""
    return DiagnosticStatus(level=level, name=name, message=message, hardware_id=hardware_id,
                            values=[KeyValue(key=k, value=_format(v)) for k, v in values.items()])


def diagnostics_message(stamp, statuses: list[DiagnosticStatus]) -> DiagnosticArray:
    array = DiagnosticArray(status=statuses)
    array.header.stamp = stamp
    return array
