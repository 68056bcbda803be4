"""Overlays: the heatmap blended at image size, and every peak's label readable inside the image."""
from __future__ import annotations

import numpy as np

from affordance_clip_ros.model.peaks import Peak
from affordance_clip_ros.visualization import draw_overlay, label_box


def test_labels_stay_inside_the_image_at_every_edge():
    rows, cols = 480, 640
    for center in [(639, 0), (0, 479), (639, 479), (0, 0), (320, 2), (637, 240)]:
        x0, y0, x1, y1 = label_box(center, 10, (50, 14), (rows, cols), [])
        assert 0 <= x0 < x1 <= cols and 0 <= y0 < y1 <= rows, center


def test_labels_of_close_peaks_do_not_overlap():
    placed = []
    for center in [(300, 200), (310, 205), (305, 215), (295, 195)]:
        box = label_box(center, 10, (50, 14), (480, 640), placed)
        assert not any(box[0] < p[2] and p[0] < box[2] and box[1] < p[3] and p[1] < box[3] for p in placed)
        placed.append(box)


def test_overlay_draws_the_label_of_a_peak_at_the_right_edge(coffee):
    heatmap = np.zeros(coffee.shape[:2], np.float32)
    peak = Peak(u=coffee.shape[1] - 3, v=100, score=0.87)
    plain = draw_overlay(coffee, heatmap, [], 0.5)
    marked = draw_overlay(coffee, heatmap, [peak], 0.5)
    assert marked.shape == coffee.shape and marked.dtype == np.uint8
    changed = np.argwhere(np.any(marked != plain, axis=2))
    # marker and label: pixels changed left of the marker, where the label had to go
    assert changed[:, 1].min() < peak.u - 40
    # the label is white on black, readable whatever the heatmap's colour there
    rows, cols = np.nonzero((marked == 0).all(axis=2) & (marked != plain).any(axis=2))
    label = marked[rows.min():rows.max() + 1, cols.min():peak.u - 10].reshape(-1, 3)
    assert (label == 0).all(axis=1).mean() > 0.4 and (label > 200).all(axis=1).any()
