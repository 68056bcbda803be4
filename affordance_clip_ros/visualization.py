"""Pictures people look at: colour heatmaps and overlays with the peaks drawn (OpenCV, BGR)."""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from .model.peaks import Peak


def colorize(heatmap: np.ndarray) -> np.ndarray:
    """[0, 1] float map -> BGR uint8 image with OpenCV's TURBO colour map."""
    grey = np.clip(np.nan_to_num(heatmap) * 255.0, 0, 255).astype(np.uint8)
    return cv2.applyColorMap(grey, cv2.COLORMAP_TURBO)


def draw_overlay(image_rgb: np.ndarray, heatmap: np.ndarray, peaks: Sequence[Peak] = (), alpha: float = 0.5,
                 label: str | None = None) -> np.ndarray:
    """Blend the colour heatmap on the image (``alpha`` = heatmap weight), mark peaks (best = 1),
    and write the prompt in the corner. Returns BGR uint8, the size of the image."""
    image_bgr = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)
    out = cv2.addWeighted(colorize(heatmap), float(alpha), image_bgr, 1.0 - float(alpha), 0.0)
    scale = max(out.shape[:2]) / 640.0
    radius, thick = max(4, int(8 * scale)), max(1, int(2 * scale))
    for rank, peak in enumerate(peaks, start=1):
        center = (int(peak.u), int(peak.v))
        cv2.circle(out, center, radius, (255, 255, 255), thick + 2, cv2.LINE_AA)
        cv2.circle(out, center, radius, (0, 0, 0), thick, cv2.LINE_AA)
        cv2.putText(out, f"{rank}:{peak.score:.2f}", (center[0] + radius + 2, center[1] - radius),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.5 * scale, (255, 255, 255), thick, cv2.LINE_AA)
    if label:
        cv2.putText(out, label, (int(10 * scale), int(30 * scale)), cv2.FONT_HERSHEY_SIMPLEX, 0.9 * scale,
                    (0, 0, 0), thick + 3, cv2.LINE_AA)
        cv2.putText(out, label, (int(10 * scale), int(30 * scale)), cv2.FONT_HERSHEY_SIMPLEX, 0.9 * scale,
                    (255, 255, 255), thick, cv2.LINE_AA)
    return out
