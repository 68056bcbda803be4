"""The result messages (AffordanceResult, the heatmap Image, the best contact point) built from
predictions, for either family of message classes: rclpy's (the node, through ``messages``) or a
rosbags typestore's (the bag command, which runs without ROS). Pure: no ROS import here.

Every field is given explicitly, because rosbags' message classes have no default values.
Every message built here carries the header of the input image it was computed from.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from ..model.grounder import AffordancePrediction

Point3 = tuple[float, float, float]


@dataclass(frozen=True)
class MessageTypes:
    """The message classes results are built from."""

    image: Callable[[np.ndarray, str, Any], Any]  # (array, encoding, header) -> sensor_msgs/Image
    Point: type
    PointStamped: type
    ContactPoint: type
    AffordanceMap: type
    AffordanceResult: type

    def point(self, xyz: Point3 | None) -> Any:
        x, y, z = xyz if xyz is not None else (0.0, 0.0, 0.0)
        return self.Point(x=float(x), y=float(y), z=float(z))


def heatmap_image(types: MessageTypes, heatmap: np.ndarray, header) -> Any:
    """float32 H x W map in [0, 1] -> 32FC1 Image with the input's header."""
    return types.image(np.asarray(heatmap, dtype=np.float32), "32FC1", header)


def contact_points(types: MessageTypes, prediction: AffordancePrediction,
                   points: Sequence[Point3 | None] | None) -> list:
    """The prediction's peaks (best first) with their 3D point where one is known."""
    out = []
    for i, peak in enumerate(prediction.peaks):
        point = points[i] if points is not None and i < len(points) else None
        out.append(types.ContactPoint(u=float(peak.u), v=float(peak.v), score=float(peak.score),
                                      has_point=point is not None, point=types.point(point)))
    return out


def result_message(types: MessageTypes, header, predictions: Sequence[AffordancePrediction],
                   points: Sequence[Sequence[Point3 | None] | None], inference_ms: float,
                   heatmap_msgs: Sequence[Any] | None = None) -> Any:
    """One AffordanceMap per prompt, in prompt order. ``heatmap_msgs`` reuses already built
    heatmap Images (e.g. the one published on ~/heatmap) instead of converting again."""
    maps = []
    for i, prediction in enumerate(predictions):
        image = heatmap_msgs[i] if heatmap_msgs is not None and i < len(heatmap_msgs) else None
        maps.append(types.AffordanceMap(
            prompt=prediction.prompt,
            heatmap=image if image is not None else heatmap_image(types, prediction.heatmap, header),
            peaks=contact_points(types, prediction, points[i] if i < len(points) else None)))
    return types.AffordanceResult(header=header, maps=maps, inference_ms=float(inference_ms))


def best_point(points: Sequence[Sequence[Point3 | None] | None]) -> Point3 | None:
    """The first prompt's best peak that has a 3D point (peaks are sorted best first)."""
    for point in (points[0] or []) if points else []:
        if point is not None:
            return point
    return None


def point_stamped(types: MessageTypes, header, point: Point3) -> Any:
    return types.PointStamped(header=header, point=types.point(point))
