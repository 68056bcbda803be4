"""Building the node's output messages from predictions (pure: no node, no publishing).

Every message built here carries the header of the input image it was computed from.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import cv2
import numpy as np
from builtin_interfaces.msg import Duration
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Point, PointStamped, Pose, PoseArray, Quaternion, Vector3
from scipy.spatial.transform import Rotation
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker, MarkerArray

from ..model.grounder import AffordancePrediction
from ..msg import AffordanceMap, AffordanceResult, ContactPoint
from .conversions import numpy_to_image

Point3 = tuple[float, float, float]
# Per prompt, per peak (parallel to the prediction's peaks): a 3D point / a unit normal, or None.
Points = Sequence[Sequence[Point3 | None] | None]

# One colour per prompt (RGBA 0..1), cycled: markers of different prompts stay apart in RViz.
PALETTE = ((0.95, 0.26, 0.21), (0.13, 0.59, 0.95), (0.30, 0.69, 0.31), (1.0, 0.76, 0.03), (0.61, 0.15, 0.69),
           (0.0, 0.74, 0.83))
SPHERE_DIAMETER_M = 0.03
TEXT_HEIGHT_M = 0.03
ARROW_LENGTH_M = 0.08  # approach arrows: from this far out along the normal to the contact point
ARROW_SHAFT_M = 0.008


def heatmap_image(heatmap: np.ndarray, header: Header):
    """float32 H x W map in [0, 1] -> 32FC1 Image with the input's header."""
    return numpy_to_image(np.asarray(heatmap, dtype=np.float32), "32FC1", header)


def result_heatmap(heatmap: np.ndarray, header: Header, max_side: int = 0, encoding: str = "32FC1"):
    """A map for ~/result: (Image, scale). ``max_side`` > 0 shrinks it so that its longest side is
    at most that (area averaging); ``encoding`` 32FC1 keeps floats, mono8 stores round(255 * value).
    ``scale`` = map pixels per input pixel."""
    height, width = heatmap.shape
    scale = 1.0
    if 0 < max_side < max(height, width):
        scale = max_side / max(height, width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        heatmap = cv2.resize(np.asarray(heatmap, dtype=np.float32), size, interpolation=cv2.INTER_AREA)
    if encoding == "mono8":
        return numpy_to_image(np.rint(np.clip(heatmap, 0.0, 1.0) * 255.0).astype(np.uint8), "mono8", header), scale
    return heatmap_image(heatmap, header), scale


def contact_points(prediction: AffordancePrediction, points: Sequence[Point3 | None] | None,
                   normals: Sequence[Point3 | None] | None = None) -> list[ContactPoint]:
    """The prediction's peaks (best first) with their 3D point and surface normal where known."""
    out = []
    for i, peak in enumerate(prediction.peaks):
        point = _nth(points, i)
        normal = _nth(normals, i) if point is not None else None
        cp = ContactPoint(u=float(peak.u), v=float(peak.v), score=float(peak.score), has_point=point is not None,
                          has_normal=normal is not None)
        if point is not None:
            cp.point = Point(x=float(point[0]), y=float(point[1]), z=float(point[2]))
        if normal is not None:
            cp.normal = Vector3(x=float(normal[0]), y=float(normal[1]), z=float(normal[2]))
        out.append(cp)
    return out


def _nth(items: Sequence | None, i: int):
    return items[i] if items is not None and i < len(items) else None


def result_message(header: Header, predictions: Sequence[AffordancePrediction], points: Points, inference_ms: float,
                   heatmap_msgs: Sequence[Any] | None = None, normals: Points | None = None,
                   scale: float = 1.0) -> AffordanceResult:
    """One AffordanceMap per prompt, in prompt order. ``heatmap_msgs`` reuses already built
    heatmap Images (the ones published on ~/heatmap, or reduced ones of ``scale``) instead of
    converting again."""
    maps = []
    for i, prediction in enumerate(predictions):
        image = _nth(heatmap_msgs, i)
        maps.append(AffordanceMap(prompt=prediction.prompt,
                                  heatmap=image if image is not None else heatmap_image(prediction.heatmap, header),
                                  scale=float(scale if image is not None else 1.0),
                                  peaks=contact_points(prediction, _nth(points, i), _nth(normals, i))))
    return AffordanceResult(header=header, maps=maps, inference_ms=float(inference_ms))


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
    first_normals = _nth(normals, 0) if normals else None
    for i, point in enumerate((points[0] or []) if points else []):
        if point is None:
            continue
        normal = _nth(first_normals, i)
        approach = tuple(-c for c in normal) if normal is not None else point
        poses.append(Pose(position=Point(x=float(point[0]), y=float(point[1]), z=float(point[2])),
                          orientation=approach_quaternion(approach)))
    return PoseArray(header=header, poses=poses)


def best_point(points: Points) -> Point3 | None:
    """The first prompt's best peak that has a 3D point (peaks are sorted best first)."""
    for point in (points[0] or []) if points else []:
        if point is not None:
            return point
    return None


def point_stamped(header: Header, point: Point3) -> PointStamped:
    return PointStamped(header=header, point=Point(x=float(point[0]), y=float(point[1]), z=float(point[2])))


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
            if (normal := _nth(_nth(normals, p_index), rank - 1)) is not None:
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


def diagnostics_message(stamp, name: str, hardware_id: str, level: bytes, message: str,
                        values: dict[str, Any]) -> DiagnosticArray:
    """One DiagnosticStatus; ``level`` is DiagnosticStatus.OK / WARN / ERROR / STALE."""
    status = DiagnosticStatus(level=level, name=name, message=message, hardware_id=hardware_id,
                              values=[KeyValue(key=k, value=_format(v)) for k, v in values.items()])
    array = DiagnosticArray(status=[status])
    array.header.stamp = stamp
    return array
