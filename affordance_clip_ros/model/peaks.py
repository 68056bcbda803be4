"""Ranked local maxima of a heatmap: the contact-point candidates."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from skimage.feature import peak_local_max


@dataclass(frozen=True)
class Peak:
    """A heatmap maximum at pixel column ``u`` and row ``v`` of the input image."""

    u: int
    v: int
    score: float


def find_peaks(heatmap: np.ndarray, num_peaks: int = 5, threshold: float = 0.3, min_distance: int = 20) -> list[Peak]:
    """Up to ``num_peaks`` local maxima at least ``min_distance`` px apart and >= ``threshold``,
    best first. A flat or all-below-threshold map gives no peaks."""
    if heatmap.ndim != 2:
        raise ValueError(f"heatmap must be 2-D, got shape {heatmap.shape}")
    if num_peaks <= 0 or heatmap.size == 0:
        return []
    coords = peak_local_max(heatmap, min_distance=max(1, int(min_distance)), threshold_abs=float(threshold),
                            num_peaks=int(num_peaks), exclude_border=False)
    peaks = [Peak(u=int(c), v=int(r), score=float(heatmap[r, c])) for r, c in coords]
    return sorted(peaks, key=lambda p: -p.score)
