"""Depth -> 3D (affordance_clip_ros.ros.geometry): units, invalid pixels, window medians,
pinhole deprojection, surface normals, on synthetic data and on the real Middlebury "Motorcycle" RGB-D frame.

    bash scripts/with_ros.sh .venv-kilted/bin/python -m pytest -q test/test_ros_geometry.py
"""
from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("sensor_msgs.msg", reason="needs the ROS 2 environment (scripts/with_ros.sh)")

import skimage.data
from sensor_msgs.msg import CameraInfo

from affordance_clip_ros.ros.geometry import (DepthError, Deprojector, Intrinsics, check_frame,
                                              depth_to_metres, deproject_pixels, surface_normals, window_median)

# Middlebury 2014 "Motorcycle" calibration, at the 1/4 scale scikit-image ships.
F = 3979.911 / 4
CX, CY = 1244.772 / 4, 1019.507 / 4
BASELINE_MM = 193.001
DOFFS = 124.343 / 4


def camera_info(fx=F, fy=F, cx=CX, cy=CY, width=0, height=0, with_p=True) -> CameraInfo:
    info = CameraInfo(width=width, height=height)
    info.k = [fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0]
    if with_p:
        info.p = [fx, 0.0, cx, 0.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0]
    return info


def motorcycle_depth_m() -> tuple[np.ndarray, np.ndarray]:
    """(left RGB, depth in metres with NaN where the disparity is unknown)."""
    left, _, disparity = skimage.data.stereo_motorcycle()
    with np.errstate(invalid="ignore", divide="ignore"):
        depth = BASELINE_MM * F / (disparity + DOFFS) / 1000.0
    depth[~np.isfinite(disparity) | ~np.isfinite(depth) | (depth <= 0)] = np.nan  # unknown disparity is inf
    return left, depth.astype(np.float32)


def test_16uc1_millimetres_zero_is_invalid():
    raw = np.array([[0, 1, 1500], [65535, 0, 250]], dtype=np.uint16)
    metres = depth_to_metres(raw, "16UC1")
    assert metres.dtype == np.float32
    np.testing.assert_allclose(metres, [[np.nan, 0.001, 1.5], [65.535, np.nan, 0.25]], rtol=1e-6)


def test_32fc1_nan_inf_zero_negative_are_invalid():
    raw = np.array([[np.nan, np.inf, -np.inf], [0.0, -1.0, 2.5]], dtype=np.float32)
    metres = depth_to_metres(raw, "32FC1")
    assert np.isnan(metres).sum() == 5 and metres[1, 2] == np.float32(2.5)
    assert np.isfinite(raw[1, 2])  # the input is not modified


@pytest.mark.parametrize("array, encoding", [(np.zeros((2, 2), np.uint16), "mono16"),
                                             (np.zeros((2, 2), np.float32), "16UC1"),
                                             (np.zeros((2, 2), np.uint16), "32FC1")])
def test_other_depth_encodings_refused(array, encoding):
    with pytest.raises(DepthError):
        depth_to_metres(array, encoding)


def test_window_median_skips_invalid_and_clips_at_borders():
    depth = np.full((5, 5), np.nan, dtype=np.float32)
    depth[0, 0], depth[0, 1], depth[1, 0] = 1.0, 2.0, 9.0
    assert window_median(depth, 0, 0, 3) == 2.0  # window clipped to rows 0..1, cols 0..1
    assert window_median(depth, 0, 0, 1) == 1.0
    assert math.isnan(window_median(depth, 4, 4, 3))  # nothing valid
    assert math.isnan(window_median(depth, 5, 0, 3))  # outside the image
    assert math.isnan(window_median(depth, -1, 0, 3))


def test_intrinsics_prefer_p_fall_back_to_k():
    info = camera_info(with_p=False)
    assert Intrinsics.from_camera_info(info) == Intrinsics(F, F, CX, CY)
    info.p = [500.0, 0, 320.0, 0, 0, 510.0, 240.0, 0, 0, 0, 1, 0]
    assert Intrinsics.from_camera_info(info) == Intrinsics(500.0, 510.0, 320.0, 240.0)


@pytest.mark.parametrize("fx, fy", [(0.0, 0.0), (0.0, 500.0), (-1.0, 500.0), (math.nan, 500.0), (500.0, math.inf)])
def test_bad_focal_lengths_refused(fx, fy):
    with pytest.raises(DepthError, match="intrinsics"):
        Deprojector(camera_info(fx=fx, fy=fy, with_p=False))


def test_empty_camera_info_refused():
    with pytest.raises(DepthError):
        Deprojector(CameraInfo())


def test_deprojection_inverts_projection():
    d = Deprojector(camera_info(fx=600.0, fy=610.0, cx=320.5, cy=239.5))
    for u, v, z in [(0, 0, 0.5), (320.5, 239.5, 2.0), (639, 479, 3.25), (100, 400, 1.0)]:
        x, y, zz = d.deproject(u, v, z)
        assert zz == z
        assert 600.0 * x / z + 320.5 == pytest.approx(u) and 610.0 * y / z + 239.5 == pytest.approx(v)


def test_check_frame_sizes():
    intr = Intrinsics(500, 500, 320, 240, width=640, height=480)
    check_frame((480, 640), (480, 640), intr)
    with pytest.raises(DepthError, match="depth image is 320x240"):
        check_frame((480, 640), (240, 320), intr)
    with pytest.raises(DepthError, match="CameraInfo is for 640x480"):
        check_frame((240, 320), (240, 320), intr)
    check_frame((240, 320), (240, 320), Intrinsics(500, 500, 160, 120))  # size not given in CameraInfo


def test_motorcycle_points_match_disparity_geometry():
    """Real RGB-D: each deprojected point has the window-median depth and projects back to its pixel."""
    left, depth = motorcycle_depth_m()
    assert depth.shape == left.shape[:2] and 0.3 < np.nanmedian(depth) < 10.0
    deprojector = Deprojector(camera_info())
    pixels = [(370, 250), (100, 100), (700, 450), (0, 0), (740, 499)]
    points = deproject_pixels(pixels, depth, deprojector, window=5)
    valid = 0
    for (u, v), point in zip(pixels, points):
        z = window_median(depth, u, v, 5)
        if math.isnan(z):
            assert point is None
            continue
        valid += 1
        x, y, zz = point
        assert zz == pytest.approx(z)
        assert x == pytest.approx((u - CX) * z / F) and y == pytest.approx((v - CY) * z / F)
    assert valid >= 3


def test_motorcycle_16uc1_matches_32fc1_within_a_millimetre():
    _, depth = motorcycle_depth_m()
    mm = np.nan_to_num(depth * 1000.0, nan=0.0).round().astype(np.uint16)
    back = depth_to_metres(mm, "16UC1")
    assert np.array_equal(np.isnan(back), np.isnan(depth))
    assert np.nanmax(np.abs(back - depth)) <= 0.0005 + 1e-6


# --- surface normals -------------------------------------------------------------------------

def tilted_plane_depth(normal, distance_m: float, intrinsics: Intrinsics, width: int, height: int) -> np.ndarray:
    """Depth (metres) of the plane {X : normal . X = -distance_m} seen by a pinhole camera: the
    ray through pixel (u, v) is r = ((u - cx) / fx, (v - cy) / fy, 1) and meets it at z = -d / (n . r)."""
    u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    n = np.asarray(normal, dtype=np.float64)
    rays_dot_n = n[0] * (u - intrinsics.cx) / intrinsics.fx + n[1] * (v - intrinsics.cy) / intrinsics.fy + n[2]
    return (-distance_m / rays_dot_n).astype(np.float32)


def angle_deg(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return math.degrees(math.acos(np.clip(a @ b / np.linalg.norm(a) / np.linalg.norm(b), -1.0, 1.0)))


@pytest.mark.parametrize("encoding", ["32FC1", "16UC1"])
def test_tilted_plane_normal_within_two_degrees_also_at_the_borders(encoding):
    """A plane tilted 35 degrees about x and 20 about y, 1.2 m away, 640x480 at fx = fy = 600:
    the fitted normal is within 2 degrees of the true one at the centre, the corners and the edges,
    from float metres and from millimetre (16UC1) depth."""
    width, height = 640, 480
    intrinsics = Intrinsics(600.0, 600.0, 319.5, 239.5, width, height)
    true = np.array([math.sin(math.radians(20)), math.sin(math.radians(35)), -1.0])
    true /= np.linalg.norm(true)  # facing the camera: n . X < 0 for points in front of it
    depth = tilted_plane_depth(true, 1.2, intrinsics, width, height)
    assert np.isfinite(depth).all() and (depth > 0.5).all() and (depth < 3.0).all()
    if encoding == "16UC1":
        depth = depth_to_metres(np.rint(depth * 1000).astype(np.uint16), "16UC1")
    pixels = [(320, 240), (0, 0), (639, 0), (0, 479), (639, 479), (320, 0), (0, 240), (639, 240), (320, 479)]
    normals = surface_normals(pixels, depth, intrinsics, window=15)
    errors = [angle_deg(n, true) for n in normals]
    assert max(errors) < 2.0, errors
    for n in normals:
        assert abs(np.linalg.norm(n) - 1.0) < 1e-6


def test_motorcycle_normals_are_unit_and_face_the_camera():
    """The real Middlebury RGB-D frame: every normal found is a unit vector pointing back towards
    the camera (n . p < 0 at its 3D point), and most pixels with valid depth get one."""
    _, depth = motorcycle_depth_m()
    deprojector = Deprojector(camera_info())
    height, width = depth.shape
    pixels = [(u, v) for v in range(10, height, 37) for u in range(10, width, 41) if math.isfinite(depth[v, u])]
    normals = surface_normals(pixels, depth, deprojector.intrinsics, window=15)
    points = deproject_pixels(pixels, depth, deprojector, 5)
    found = [(n, p) for n, p in zip(normals, points) if n is not None and p is not None]
    assert len(found) > 0.8 * len(pixels) > 50
    for n, p in found:
        assert abs(np.linalg.norm(n) - 1.0) < 1e-6
        assert np.dot(n, p) < 0


def test_depth_holes_give_no_normal_and_no_error():
    intrinsics = Intrinsics(500.0, 500.0, 50.0, 40.0, 100, 80)
    depth = np.full((80, 100), np.nan, np.float32)
    depth[40, :] = 1.0  # one valid row: points on a line, no plane
    depth[10, 10] = depth[11, 12] = 1.0  # too few points
    pixels = [(50, 40), (10, 10), (70, 20), (-5, 3), (100, 80), (99.6, 79.6)]
    assert surface_normals(pixels, depth, intrinsics, window=15) == [None] * len(pixels)
    assert surface_normals([], depth, intrinsics, window=15) == []
