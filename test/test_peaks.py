"""Peak extraction: ranked, thresholded, spaced maxima; fuzzed with hypothesis."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from skimage.feature import peak_local_max

from affordance_clip_ros.model import find_peaks


def test_two_blobs_give_two_ranked_peaks():
    yy, xx = np.mgrid[0:100, 0:200]
    heat = (0.9 * np.exp(-((xx - 50) ** 2 + (yy - 40) ** 2) / 50.0)
            + 0.6 * np.exp(-((xx - 150) ** 2 + (yy - 70) ** 2) / 50.0))
    peaks = find_peaks(heat.astype(np.float32), num_peaks=5, threshold=0.3, min_distance=10)
    assert [(p.u, p.v) for p in peaks] == [(50, 40), (150, 70)]
    assert peaks[0].score == pytest.approx(0.9, abs=1e-6)
    assert find_peaks(heat, num_peaks=1, threshold=0.3)[0].u == 50
    assert find_peaks(heat, threshold=0.95) == []
    assert find_peaks(np.full((20, 20), 0.5, np.float32)) == []
    with pytest.raises(ValueError, match="2-D"):
        find_peaks(np.zeros((2, 2, 2)))


@settings(max_examples=150, deadline=None)
@given(heat=arrays(np.float32, st.tuples(st.integers(1, 40), st.integers(1, 40)),
                   elements=st.floats(0, 1, width=32)),
       num=st.integers(0, 8), threshold=st.floats(0, 1), distance=st.integers(0, 12))
def test_peaks_are_valid_for_any_map(heat, num, threshold, distance):
    peaks = find_peaks(heat, num_peaks=num, threshold=threshold, min_distance=distance)
    assert len(peaks) <= num
    scores = [p.score for p in peaks]
    assert scores == sorted(scores, reverse=True)
    for p in peaks:
        assert 0 <= p.v < heat.shape[0] and 0 <= p.u < heat.shape[1]
        assert p.score == heat[p.v, p.u] and p.score >= threshold


@settings(max_examples=300, deadline=None)
@given(heat=arrays(np.float32, st.tuples(st.integers(1, 48), st.integers(1, 48)),
                   elements=st.floats(0, 1, width=32)),
       levels=st.sampled_from([0, 3, 12]), num=st.integers(1, 8), threshold=st.floats(0, 1),
       distance=st.integers(0, 60))
def test_peaks_are_scikit_images_peak_local_max(heat, levels, num, threshold, distance):
    """Same peaks, in the same order, as skimage.feature.peak_local_max, plateaus and ties
    included (``levels`` quantises the map so that equal values are common), with windows
    (2 * distance + 1) on both sides of the switch from OpenCV's to SciPy's maximum filter."""
    if levels:
        heat = np.round(heat * levels) / levels
    reference = peak_local_max(heat, min_distance=max(1, distance), threshold_abs=threshold, num_peaks=num,
                               exclude_border=False)
    assert [(p.v, p.u) for p in find_peaks(heat, num, threshold, distance)] == [tuple(c) for c in reference]
