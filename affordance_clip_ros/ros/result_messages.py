"""The result messages (AffordanceResult, the heatmap Image, the best contact point) built from
predictions, for either family of message classes: rclpy's (the node, through ``messages``) or a
rosbags typestore's (the bag command, which runs without ROS). Pure: no ROS import here.

Every field is given explicitly, because rosbags' message classes have no default values.
Every message built here carries the header of the input image it was computed from.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import cv2
import numpy as np

from ..model.device_postprocess import reduced_size
from ..model.grounder import AffordancePrediction

Point3 = tuple[float, float, float]
# Per prompt, per peak (parallel to the prediction's peaks): a 3D point / a unit normal, or None.
Points = Sequence[Sequence[Point3 | None] | None]


@dataclass(frozen=True)
class MessageTypes:
    """The message classes results are built from."""

    image: Callable[[np.ndarray, str, Any], Any]  # (array, encoding, header) -> sensor_msgs/Image
    Point: type
    Vector3: type
    PointStamped: type
    ContactPoint: type
    AffordanceMap: type
    AffordanceResult: type

    def point(self, xyz: Point3 | None) -> Any:
        x, y, z = xyz if xyz is not None else (0.0, 0.0, 0.0)
        return self.Point(x=float(x), y=float(y), z=float(z))

    def vector(self, xyz: Point3 | None) -> Any:
        x, y, z = xyz if xyz is not None else (0.0, 0.0, 0.0)
        return self.Vector3(x=float(x), y=float(y), z=float(z))


def heatmap_image(types: MessageTypes, heatmap: np.ndarray, header) -> Any:
    """H x W map in [0, 1] -> Image with the input's header: 32FC1, or mono8 for a uint8 map
    (see :func:`reduce_heatmap`)."""
    heatmap = np.asarray(heatmap)
    if heatmap.dtype == np.uint8:
        return types.image(heatmap, "mono8", header)
    return types.image(heatmap.astype(np.float32, copy=False), "32FC1", header)


def reduce_heatmap(heatmap: np.ndarray, max_side: int = 0, encoding: str = "32FC1") -> tuple[np.ndarray, float]:
    """A map as ~/result carries it: (array, scale). ``max_side`` > 0 shrinks it so that its longest
    side is at most that (area averaging); ``encoding`` 32FC1 keeps float32, mono8 stores
    round(255 * value) as uint8. ``scale`` = map pixels per input pixel. (The device twin:
    :func:`affordance_clip_ros.model.device_postprocess.reduce_maps`.)"""
    heatmap = np.asarray(heatmap, dtype=np.float32)
    scale, size = reduced_size(*heatmap.shape, max_side)
    if scale != 1.0:
        heatmap = cv2.resize(heatmap, size, interpolation=cv2.INTER_AREA)
    if encoding == "mono8":
        return np.rint(np.clip(heatmap, 0.0, 1.0) * 255.0).astype(np.uint8), scale
    return heatmap, scale


def contact_points(types: MessageTypes, prediction: AffordancePrediction, points: Sequence[Point3 | None] | None,
                   normals: Sequence[Point3 | None] | None = None) -> list:
    """The prediction's peaks (best first) with their 3D point and surface normal where known."""
    out = []
    for i, peak in enumerate(prediction.peaks):
        point = nth(points, i)
        normal = nth(normals, i) if point is not None else None
        out.append(types.ContactPoint(u=float(peak.u), v=float(peak.v), score=float(peak.score),
                                      has_point=point is not None, point=types.point(point),
                                      has_normal=normal is not None, normal=types.vector(normal)))
    return out


def nth(items: Sequence | None, i: int):
    """``items[i]``, or None when there are no items or too few."""
    return items[i] if items is not None and i < len(items) else None


def result_message(types: MessageTypes, header, predictions: Sequence[AffordancePrediction], points: Points,
                   inference_ms: float, heatmap_msgs: Sequence[Any] | None = None, normals: Points | None = None,
                   scale: float = 1.0) -> Any:
    """One AffordanceMap per prompt, in prompt order. ``heatmap_msgs`` reuses already built
    heatmap Images (the ones published on ~/heatmap, or reduced ones of ``scale``) instead of
    converting again."""
    maps = []
    for i, prediction in enumerate(predictions):
        image = nth(heatmap_msgs, i)
        maps.append(types.AffordanceMap(
            prompt=prediction.prompt,
            heatmap=image if image is not None else heatmap_image(types, prediction.heatmap, header),
            scale=float(scale if image is not None else 1.0),
            peaks=contact_points(types, prediction, nth(points, i), nth(normals, i))))
    return types.AffordanceResult(header=header, maps=maps, inference_ms=float(inference_ms))


def best_point(points: Points) -> Point3 | None:
    """The first prompt's best peak that has a 3D point (peaks are sorted best first)."""
    for point in (points[0] or []) if points else []:
        if point is not None:
            return point
    return None


def point_stamped(types: MessageTypes, header, point: Point3) -> Any:
    return types.PointStamped(header=header, point=types.point(point))
