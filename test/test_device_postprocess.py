"""Post-processing in torch (what runs on the GPU), checked on CPU tensors against the host path:
the same peaks as find_peaks, the same overlay blend as draw_overlay."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from affordance_clip_ros.model import Peak, find_peaks
from affordance_clip_ros.model.device_postprocess import blend_heatmap, find_peaks_torch
from affordance_clip_ros.model.letterbox import Letterbox, unletterbox
from affordance_clip_ros.visualization import draw_overlay


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
        device = blend_heatmap(torch.from_numpy(coffee), heatmap, alpha).numpy().astype(int)
        assert device.shape == host.shape and np.abs(device - host).max() <= 1, alpha
