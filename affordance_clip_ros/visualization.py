"""Pictures people look at: colour heatmaps and overlays with the peaks drawn (OpenCV, BGR)."""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from .model.peaks import Peak

FONT = cv2.FONT_HERSHEY_SIMPLEX


def colorize(heatmap: np.ndarray) -> np.ndarray:
    """[0, 1] float map -> BGR uint8 image with OpenCV's TURBO colour map."""
    grey = np.clip(np.nan_to_num(heatmap) * 255.0, 0, 255).astype(np.uint8)
    return cv2.applyColorMap(grey, cv2.COLORMAP_TURBO)


def label_box(center: tuple[int, int], gap: int, size: tuple[int, int], shape: tuple[int, int],
              placed: Sequence[tuple[int, int, int, int]]) -> tuple[int, int, int, int]:
    """Where a peak's label goes, as (x0, y0, x1, y1): beside the marker (right-above, right-below,
    left-above, left-below), the first spot inside the image that overlaps no earlier label;
    failing that the first spot inside the image, clamped to it."""
    (u, v), (width, height), (rows, cols) = center, size, shape
    spots = [(u + gap, v - gap - height), (u + gap, v + gap), (u - gap - width, v - gap - height),
             (u - gap - width, v + gap)]
    boxes = [(x, y, x + width, y + height) for x, y in spots]
    inside = [b for b in boxes if b[0] >= 0 and b[1] >= 0 and b[2] <= cols and b[3] <= rows]
    free = [b for b in inside if not any(_overlap(b, p) for p in placed)]
    if free or inside:
        return (free or inside)[0]
    x = min(max(boxes[0][0], 0), max(cols - width, 0))
    y = min(max(boxes[0][1], 0), max(rows - height, 0))
    return x, y, x + width, y + height


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def label_size(text: str, font_scale: float, thick: int) -> tuple[int, int]:
    """(width, height) in pixels of :func:`put_label`'s box for ``text``."""
    (width, height), baseline = cv2.getTextSize(text, FONT, font_scale, thick)
    pad = thick + 1
    return width + 2 * pad, height + baseline + 2 * pad


def put_label(image: np.ndarray, text: str, top_left: tuple[int, int], font_scale: float, thick: int
              ) -> tuple[int, int, int, int]:
    """White text on a black box at ``top_left`` (readable on any heatmap colour); returns the box."""
    width, height = label_size(text, font_scale, thick)
    x, y = top_left
    cv2.rectangle(image, (x, y), (x + width - 1, y + height - 1), (0, 0, 0), cv2.FILLED)
    (_, text_height), _ = cv2.getTextSize(text, FONT, font_scale, thick)
    pad = thick + 1
    cv2.putText(image, text, (x + pad, y + pad + text_height), FONT, font_scale, (255, 255, 255), thick, cv2.LINE_AA)
    return x, y, x + width, y + height


def draw_overlay(image_rgb: np.ndarray, heatmap: np.ndarray, peaks: Sequence[Peak] = (), alpha: float = 0.5,
                 label: str | None = None) -> np.ndarray:
    """Blend the colour heatmap on the image (``alpha`` = heatmap weight), mark peaks (best = 1),
    and write the prompt in the corner. Returns BGR uint8, the size of the image."""
    return draw_peaks(blend_heatmap(image_rgb, heatmap, alpha), peaks, label)


def blend_heatmap(image_rgb: np.ndarray, heatmap: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The colour heatmap blended on the image (``alpha`` = heatmap weight): BGR uint8, before
    peaks and labels are drawn (the device twin:
    :func:`affordance_clip_ros.model.device_postprocess.blend_heatmap_torch`)."""
    image_bgr = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)
    return cv2.addWeighted(colorize(heatmap), float(alpha), image_bgr, 1.0 - float(alpha), 0.0)


def draw_peaks(out: np.ndarray, peaks: Sequence[Peak] = (), label: str | None = None) -> np.ndarray:
    """Mark peaks (best = 1) and write the prompt in the corner of a BGR uint8 image, in place (a
    blend made on the device by :func:`affordance_clip_ros.model.device_postprocess.blend_heatmap_torch`,
    say); returns it."""
    scale = max(out.shape[:2]) / 640.0
    radius, thick = max(4, int(8 * scale)), max(1, int(2 * scale))
    placed: list[tuple[int, int, int, int]] = []
    if label:  # the prompt, top left; peak labels keep clear of it
        placed.append(put_label(out, label, (int(10 * scale), int(10 * scale)), 0.9 * scale, thick))
    for rank, peak in enumerate(peaks, start=1):
        center = (int(peak.u), int(peak.v))
        cv2.circle(out, center, radius, (255, 255, 255), thick + 2, cv2.LINE_AA)
        cv2.circle(out, center, radius, (0, 0, 0), thick, cv2.LINE_AA)
        text = f"{rank}:{peak.score:.2f}"
        box = label_box(center, radius + 2, label_size(text, 0.5 * scale, thick), out.shape[:2], placed)
        placed.append(put_label(out, text, box[:2], 0.5 * scale, thick))
    return out
