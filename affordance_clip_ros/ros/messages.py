"""Building the node's output messages from predictions (pure: no node, no publishing).

Every message built here carries the header of the input image it was computed from.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from builtin_interfaces.msg import Duration
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Point, PointStamped
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker, MarkerArray

from ..model.grounder import AffordancePrediction
from ..msg import AffordanceMap, AffordanceResult, ContactPoint
from .conversions import numpy_to_image

Point3 = tuple[float, float, float]

# One colour per prompt (RGBA 0..1), cycled: markers of different prompts stay apart in RViz.
PALETTE = ((0.95, 0.26, 0.21), (0.13, 0.59, 0.95), (0.30, 0.69, 0.31), (1.0, 0.76, 0.03), (0.61, 0.15, 0.69),
           (0.0, 0.74, 0.83))
SPHERE_DIAMETER_M = 0.03
TEXT_HEIGHT_M = 0.03


def heatmap_image(heatmap: np.ndarray, header: Header):
    """float32 H x W map in [0, 1] -> 32FC1 Image with the input's header."""
    return numpy_to_image(np.asarray(heatmap, dtype=np.float32), "32FC1", header)


def contact_points(prediction: AffordancePrediction, points: Sequence[Point3 | None] | None) -> list[ContactPoint]:
    """The prediction's peaks (best first) with their 3D point where one is known."""
    out = []
    for i, peak in enumerate(prediction.peaks):
        point = points[i] if points is not None and i < len(points) else None
        cp = ContactPoint(u=float(peak.u), v=float(peak.v), score=float(peak.score), has_point=point is not None)
        if point is not None:
            cp.point = Point(x=float(point[0]), y=float(point[1]), z=float(point[2]))
        out.append(cp)
    return out


def result_message(header: Header, predictions: Sequence[AffordancePrediction],
                   points: Sequence[Sequence[Point3 | None] | None], inference_ms: float,
                   heatmap_msgs: Sequence[Any] | None = None) -> AffordanceResult:
    """One AffordanceMap per prompt, in prompt order. ``heatmap_msgs`` reuses already built
    heatmap Images (e.g. the one published on ~/heatmap) instead of converting again."""
    maps = []
    for i, prediction in enumerate(predictions):
        image = heatmap_msgs[i] if heatmap_msgs is not None and i < len(heatmap_msgs) else None
        maps.append(AffordanceMap(prompt=prediction.prompt,
                                  heatmap=image if image is not None else heatmap_image(prediction.heatmap, header),
                                  peaks=contact_points(prediction, points[i] if i < len(points) else None)))
    return AffordanceResult(header=header, maps=maps, inference_ms=float(inference_ms))


def best_point(points: Sequence[Sequence[Point3 | None] | None]) -> Point3 | None:
    """The first prompt's best peak that has a 3D point (peaks are sorted best first)."""
    for point in (points[0] or []) if points else []:
        if point is not None:
            return point
    return None


def point_stamped(header: Header, point: Point3) -> PointStamped:
    return PointStamped(header=header, point=Point(x=float(point[0]), y=float(point[1]), z=float(point[2])))


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
