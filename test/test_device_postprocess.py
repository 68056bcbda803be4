"""Post-processing in torch (what runs on the GPU), checked on CPU tensors against the host path:
the same peaks as find_peaks, the same overlay as draw_overlay, the same resized and reduced
maps as OpenCV, and the same published forms from the node's FrameMaps either way."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from affordance_clip_ros.model import AffordanceGrounder, GrounderConfig, Peak, find_peaks
from affordance_clip_ros.model.device_postprocess import blend_heatmap_torch, find_peaks_torch, reduce_maps, resize_maps
from affordance_clip_ros.model.letterbox import Letterbox, unletterbox
from affordance_clip_ros.ros.inference import FrameMaps, predict_frames
from affordance_clip_ros.ros.result_messages import reduce_heatmap
from affordance_clip_ros.visualization import draw_overlay
from conftest import TINY


def _host_peaks(maps: np.ndarray, num: int, threshold: float, distance: int) -> list:
    return [find_peaks(m, num, threshold, distance) for m in maps]


@settings(max_examples=300, deadline=None)
@given(maps=arrays(np.float32, st.tuples(st.integers(1, 3), st.integers(1, 40), st.integers(1, 40)),
                   elements=st.floats(0, 1, width=32)),
       levels=st.sampled_from([0, 2, 5, 12]), num=st.integers(0, 8),
       threshold=st.sampled_from([0.0, 0.3, 0.5, float(np.float32(0.3)), 1 / 3]), distance=st.integers(0, 50))
def test_the_same_peaks_as_find_peaks(maps, levels, num, threshold, distance):
    """Ties, plateaus and values at the threshold are common (``levels`` quantises the maps; 1/3
    and float32(0.3) sit on or beside quantised values), windows from 3 px to wider than the map."""
    if levels:
        maps = (np.round(maps * levels) / levels).astype(np.float32)
    assert find_peaks_torch(torch.from_numpy(maps), num, threshold, distance) == \
        _host_peaks(maps, num, threshold, distance)


def test_hand_made_maps():
    flat = np.full((2, 20, 30), 0.5, np.float32)
    flat[1, 3, 4] = 0.9  # a flat map beside one with a single peak
    assert find_peaks_torch(torch.from_numpy(flat)) == [[], find_peaks(flat[1])]
    assert find_peaks_torch(torch.full((1, 1, 1), 0.7)) == [[Peak(0, 0, float(np.float32(0.7)))]]  # one pixel
    twins = np.zeros((1, 50, 50), np.float32)
    twins[0, 10, 10] = twins[0, 10, 20] = twins[0, 40, 40] = 0.8  # equal scores: row-major order, 10 px apart
    for distance in (5, 10, 11):
        assert find_peaks_torch(torch.from_numpy(twins), 5, 0.3, distance) == _host_peaks(twins, 5, 0.3, distance)
    assert len(find_peaks_torch(torch.from_numpy(twins), 5, 0.3, 11)[0]) == 2
    assert find_peaks_torch(torch.from_numpy(twins), 0) == [[]]
    with pytest.raises(ValueError, match="3-D"):
        find_peaks_torch(torch.zeros(4, 4))


def test_peaks_of_unletterboxed_maps(coffee):
    """Smooth maps at camera size, as the grounder makes them."""
    torch.manual_seed(0)
    coarse = torch.rand(4, 13, 13)
    maps = unletterbox(coarse, Letterbox(*coffee.shape[:2], 416))
    assert find_peaks_torch(maps, 5, 0.3, 20) == _host_peaks(maps.numpy(), 5, 0.3, 20)


def test_blend_is_draw_overlays_within_one_grey_level(coffee):
    torch.manual_seed(0)
    heatmap = unletterbox(torch.rand(1, 13, 13) * 1.2 - 0.1, Letterbox(*coffee.shape[:2], 416))[0]
    heatmap[0, :5] = float("nan")
    for alpha in (0.0, 0.3, 0.5, 1.0):
        host = draw_overlay(coffee, heatmap.numpy(), [], alpha).astype(int)
        device = blend_heatmap_torch(torch.from_numpy(coffee), heatmap, alpha).numpy().astype(int)
        assert device.shape == host.shape and np.abs(device - host).max() <= 1, alpha


def _smooth_maps(n: int, height: int, width: int) -> torch.Tensor:
    torch.manual_seed(0)
    return unletterbox(torch.rand(n, 13, 13), Letterbox(height, width, 416))


def test_resize_is_opencvs_bilinear():
    maps = _smooth_maps(3, 240, 320)
    resized = resize_maps(maps, 480, 640)
    for ours, source in zip(resized.numpy(), maps.numpy()):
        host = np.clip(cv2.resize(source, (640, 480), interpolation=cv2.INTER_LINEAR), 0, 1)
        assert ours.shape == (480, 640) and np.abs(ours - host).max() < 1e-5


@pytest.mark.parametrize("height, width, max_side", [(480, 640, 0), (480, 640, 160), (400, 600, 150),
                                                     (480, 640, 300), (479, 641, 97), (480, 640, 2000)])
def test_reduced_maps_are_the_host_reduction(height, width, max_side):
    """Shapes and scales are identical; values agree exactly for whole shrink factors and within
    0.02 otherwise (area averaging over whole pixels against OpenCV's fractional areas)."""
    maps = _smooth_maps(2, height, width)
    whole = max_side == 0 or max_side >= max(height, width) or max(height, width) % max_side == 0
    for encoding, tolerance in (("32FC1", 1e-5 if whole else 0.02), ("mono8", 1 if whole else 6)):
        ours, scale = reduce_maps(maps, max_side, encoding)
        for device_map, source in zip(ours.numpy(), maps.numpy()):
            host, host_scale = reduce_heatmap(source, max_side, encoding)
            assert (device_map.dtype, device_map.shape, scale) == (host.dtype, host.shape, host_scale)
            assert np.abs(device_map.astype(float) - host.astype(float)).max() <= tolerance, encoding


def test_frame_maps_publish_the_same_on_the_device_and_on_the_host(tiny_grounder, coffee):
    """What the node publishes from a frame's maps, made by the torch operations (CUDA's path, here
    on CPU tensors) and by OpenCV: the result maps, full or reduced, and the overlay."""
    [host] = predict_frames(tiny_grounder, [coffee], ["hold", "cut with"])
    device = FrameMaps(["hold", "cut with"], host.maps, [p.peaks for p in host.predictions], on_device=True)
    assert not host.on_device and [p.peaks for p in device.predictions] == [p.peaks for p in host.predictions]
    for max_side, encoding, tolerance in ((0, "32FC1", 0.0), (150, "mono8", 1), (250, "32FC1", 0.02)):
        ours, scale = device.result_maps(max_side, encoding)
        theirs, host_scale = host.result_maps(max_side, encoding)
        assert scale == host_scale and len(ours) == len(theirs) == 2
        for a, b in zip(ours, theirs):
            assert a.dtype == b.dtype and a.shape == b.shape
            assert np.abs(a.astype(float) - b.astype(float)).max() <= tolerance, (max_side, encoding)
    ours, theirs = device.overlay(coffee, 0.4).astype(int), host.overlay(coffee, 0.4).astype(int)
    assert ours.shape == theirs.shape == coffee.shape and np.abs(ours - theirs).max() <= 2
    first = host.predictions[0]
    assert np.array_equal(theirs, draw_overlay(coffee, first.heatmap, first.peaks, 0.4, first.prompt))


def test_downscaled_frames_get_maps_and_peaks_at_their_resolution(coffee):
    grounder = AffordanceGrounder.from_config(GrounderConfig(**TINY, peak_threshold=0.0))  # random weights: flat maps
    big = cv2.resize(coffee, (1200, 800), interpolation=cv2.INTER_LINEAR)
    [frame] = predict_frames(grounder, [big], ["hold"], max_side=600)
    [small] = predict_frames(grounder, [cv2.resize(big, (600, 400), interpolation=cv2.INTER_AREA)], ["hold"])
    assert frame.downscaled and not small.downscaled
    expected = np.clip(cv2.resize(small.heatmap(0), (1200, 800), interpolation=cv2.INTER_LINEAR), 0, 1)
    assert frame.heatmap(0).shape == (800, 1200) and np.abs(frame.heatmap(0) - expected).max() < 1e-6
    assert small.predictions[0].peaks
    assert [(p.u, p.v, p.score) for p in frame.predictions[0].peaks] == \
        [(2 * p.u + 1, 2 * p.v + 1, p.score) for p in small.predictions[0].peaks]
