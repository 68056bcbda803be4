"""Depth images to 3D points: pure functions with explicit units (no ROS node, no I/O).

* Depth in: ``16UC1`` = millimetres (uint16, 0 = no reading), ``32FC1`` = metres (float32,
  NaN/inf/0/negative = no reading), as in depth_image_proc. Out: float32 metres, NaN = invalid.
* A peak's depth is the median of the valid depths in a small square window around it, which
  skips single dropouts and flying pixels at edges.
* A peak's surface normal is the normal of the least-squares plane through the back-projected
  valid depths of a wider square window around it (the smallest singular vector of the centred
  points), turned to face the camera. Too few valid depths, or points on a line rather than a
  plane, give no normal.
* Deprojection uses the camera's intrinsics: image_geometry's ``PinholeCameraModel`` when it
  imports (a real ROS install) and the projection matrix P is valid, else the exact pinhole
  maths ``x = (u - cx) z / fx``, ``y = (v - cy) z / fy`` with P, or K when P is not filled in.
  The result is in the optical frame of the image (x right, y down, z forward), metres.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

try:  # a real ROS install (vision_opencv)
    from image_geometry import PinholeCameraModel
except ImportError:  # pragma: no cover - depends on the installation
    PinholeCameraModel = None

MM_PER_M = 1000.0


class DepthError(ValueError):
    """Depth or camera intrinsics that cannot give 3D points for this frame (the reason says why)."""


def depth_to_metres(depth: np.ndarray, encoding: str) -> np.ndarray:
    """A raw depth array (``16UC1`` mm or ``32FC1`` m) -> float32 metres with NaN where invalid."""
    if encoding == "16UC1":
        if depth.dtype != np.uint16:
            raise DepthError(f"16UC1 depth must be uint16, got {depth.dtype}")
        metres = depth.astype(np.float32) / np.float32(MM_PER_M)
        metres[depth == 0] = np.nan
        return metres
    if encoding == "32FC1":
        if depth.dtype != np.float32:
            raise DepthError(f"32FC1 depth must be float32, got {depth.dtype}")
        metres = depth.astype(np.float32, copy=True)
        with np.errstate(invalid="ignore"):
            metres[~(np.isfinite(metres) & (metres > 0))] = np.nan
        return metres
    raise DepthError(f"depth encoding '{encoding}' is not supported; use 16UC1 (mm) or 32FC1 (m)")


def window_median(depth_m: np.ndarray, u: int, v: int, window: int) -> float:
    """Median of the valid (finite) depths in the ``window`` x ``window`` square centred on pixel
    (u, v), clipped at the image border; NaN when none is valid or (u, v) is outside."""
    height, width = depth_m.shape
    if not (0 <= u < width and 0 <= v < height):
        return math.nan
    half = max(0, int(window) // 2)
    patch = depth_m[max(0, v - half):v + half + 1, max(0, u - half):u + half + 1]
    valid = patch[np.isfinite(patch)]
    return float(np.median(valid)) if valid.size else math.nan


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics in pixels. ``width``/``height`` are 0 when the CameraInfo leaves them out."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int = 0
    height: int = 0

    def __post_init__(self):
        for name in ("fx", "fy", "cx", "cy"):
            if not math.isfinite(getattr(self, name)):
                raise DepthError(f"camera intrinsics: {name} is {getattr(self, name)}")
        if self.fx <= 0 or self.fy <= 0:
            raise DepthError(f"camera intrinsics: focal length fx={self.fx}, fy={self.fy} must be > 0")

    @classmethod
    def from_matrices(cls, k: Sequence[float], p: Sequence[float], width: int = 0, height: int = 0) -> "Intrinsics":
        """From CameraInfo's row-major K (3x3) and P (3x4): P when it is filled in (rectified
        images, what image_geometry uses), else K."""
        k, p = [float(x) for x in k], [float(x) for x in p]
        if len(p) == 12 and p[0] > 0 and p[5] > 0:
            return cls(p[0], p[5], p[2], p[6], int(width), int(height))
        if len(k) != 9:
            raise DepthError(f"camera intrinsics: K must have 9 values, got {len(k)}")
        return cls(k[0], k[4], k[2], k[5], int(width), int(height))

    @classmethod
    def from_camera_info(cls, info) -> "Intrinsics":
        """From a sensor_msgs/CameraInfo message (DepthError when the focal length is 0 or NaN)."""
        return cls.from_matrices(info.k, info.p, info.width, info.height)

    def deproject(self, u: float, v: float, z: float) -> tuple[float, float, float]:
        """Pixel (u, v) at depth z metres -> (x, y, z) metres in the optical frame."""
        return ((u - self.cx) * z / self.fx, (v - self.cy) * z / self.fy, z)


class Deprojector:
    """Pixel + depth -> 3D with one camera: image_geometry when available, else :class:`Intrinsics`."""

    def __init__(self, info):
        self.intrinsics = Intrinsics.from_camera_info(info)  # validates, also for image_geometry
        self._model = None
        p = [float(x) for x in info.p]
        if PinholeCameraModel is not None and len(p) == 12 and p[0] > 0 and p[5] > 0:  # pragma: no cover
            self._model = PinholeCameraModel()
            self._model.fromCameraInfo(info)

    @property
    def backend(self) -> str:
        return "image_geometry" if self._model is not None else "pinhole"

    def deproject(self, u: float, v: float, z: float) -> tuple[float, float, float]:
        if self._model is not None:  # pragma: no cover - only on a real ROS install
            rx, ry, rz = self._model.projectPixelTo3dRay((u, v))  # unit ray
            return (rx * z / rz, ry * z / rz, z)
        return self.intrinsics.deproject(u, v, z)


def check_frame(image_shape: tuple[int, int], depth_shape: tuple[int, int], intrinsics: Intrinsics) -> None:
    """Raise :class:`DepthError` when the depth image or the CameraInfo do not belong to an image
    of ``image_shape`` (H, W): depth must be registered to the image at the same resolution."""
    if tuple(depth_shape) != tuple(image_shape):
        raise DepthError(f"depth image is {depth_shape[1]}x{depth_shape[0]} but the colour image is "
                         f"{image_shape[1]}x{image_shape[0]}; publish depth registered to the colour image")
    if intrinsics.width and intrinsics.height and (intrinsics.height, intrinsics.width) != tuple(image_shape):
        raise DepthError(f"CameraInfo is for {intrinsics.width}x{intrinsics.height} but the image is "
                         f"{image_shape[1]}x{image_shape[0]}")


MIN_PLANE_POINTS = 6
# A plane needs spread in two directions: the second singular value of the centred points must be
# at least this share of the first (points along one line, e.g. a 1-pixel edge, give no normal).
MIN_PLANE_SPREAD = 0.05


def window_points(depth_m: np.ndarray, u: int, v: int, window: int, intrinsics: Intrinsics) -> np.ndarray:
    """(N, 3) points (metres, optical frame) of the valid depths in the ``window`` x ``window``
    square centred on pixel (u, v), clipped at the image border."""
    height, width = depth_m.shape
    half = max(0, int(window) // 2)
    top, left = max(0, v - half), max(0, u - half)
    patch = depth_m[top:v + half + 1, left:u + half + 1]
    rows, cols = np.nonzero(np.isfinite(patch))
    z = patch[rows, cols].astype(np.float64)
    x = (cols + left - intrinsics.cx) * z / intrinsics.fx
    y = (rows + top - intrinsics.cy) * z / intrinsics.fy
    return np.stack([x, y, z], axis=1)


def plane_normal(points: np.ndarray) -> tuple[float, float, float] | None:
    """Unit normal of the least-squares plane through (N, 3) points, facing the camera at the
    origin (normal . centroid < 0); None for fewer than MIN_PLANE_POINTS or no plane."""
    if len(points) < MIN_PLANE_POINTS:
        return None
    centroid = points.mean(axis=0)
    _, singular, vt = np.linalg.svd(points - centroid, full_matrices=False)
    if singular[0] <= 0 or singular[1] < MIN_PLANE_SPREAD * singular[0]:
        return None
    normal = vt[2] / np.linalg.norm(vt[2])
    if normal @ centroid > 0:
        normal = -normal
    return (float(normal[0]), float(normal[1]), float(normal[2]))


def surface_normals(pixels: Sequence[tuple[float, float]], depth_m: np.ndarray, intrinsics: Intrinsics,
                    window: int) -> list[tuple[float, float, float] | None]:
    """Unit surface normal (optical frame, facing the camera) at each pixel (u, v) from a plane fit
    over the valid depths of the ``window`` x ``window`` square around it, or None."""
    height, width = depth_m.shape
    normals: list[tuple[float, float, float] | None] = []
    for u, v in pixels:
        u, v = int(round(u)), int(round(v))
        inside = 0 <= u < width and 0 <= v < height
        normals.append(plane_normal(window_points(depth_m, u, v, window, intrinsics)) if inside else None)
    return normals


def deproject_pixels(pixels: Sequence[tuple[float, float]], depth_m: np.ndarray, deprojector: Deprojector,
                     window: int) -> list[tuple[float, float, float] | None]:
    """3D point (metres) for each pixel (u, v), or None where the window holds no valid depth."""
    points: list[tuple[float, float, float] | None] = []
    for u, v in pixels:
        z = window_median(depth_m, int(round(u)), int(round(v)), window)
        points.append(deprojector.deproject(float(u), float(v), z) if math.isfinite(z) else None)
    return points


def peak_points(pixels_per_prompt: Sequence[Sequence[tuple[float, float]]], depth_m: np.ndarray, info,
                image_shape: tuple[int, int], window: int) -> list[list[tuple[float, float, float] | None]]:
    """3D points of every prompt's peaks (:func:`deproject_pixels`) from a depth image in metres
    and its CameraInfo. :class:`DepthError` when depth or CameraInfo do not fit the image, or when
    there are peaks but none of them has a valid depth."""
    deprojector = Deprojector(info)
    check_frame(image_shape, depth_m.shape, deprojector.intrinsics)
    points = [deproject_pixels(pixels, depth_m, deprojector, window) for pixels in pixels_per_prompt]
    if any(pixels_per_prompt) and not any(pt for pts in points for pt in pts):
        raise DepthError("no valid depth (0, NaN, inf or negative) around any contact point")
    return points
