"""Post-processing on the maps' own device (pure torch): peaks, resizing, the shrinking and
quantising of published maps and the overlay's heatmap blend, so that on CUDA only what is
published crosses to the host. Un-letterboxing runs on the maps' device too
(:func:`.letterbox.unletterbox`). Each operation has a host twin with OpenCV, which is faster
on the CPU; tests hold the two together."""
from __future__ import annotations

import functools

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .peaks import Peak, select_peaks


def find_peaks_torch(maps: torch.Tensor, num_peaks: int = 5, threshold: float = 0.3,
                     min_distance: int = 20) -> list[list[Peak]]:
    """Maps (N, H, W) on any device -> for each map the same peaks as :func:`.peaks.find_peaks`
    (tests compare them). The maximum filter (a separable max-pool, the window clamped to the map),
    the threshold and the score sort run on the device; only the sorted candidates, the local
    maxima above the threshold, are copied to the host, where the distance rule keeps the first
    ``num_peaks``."""
    if maps.ndim != 3:
        raise ValueError(f"maps must be 3-D (N, H, W), got shape {tuple(maps.shape)}")
    n, h, w = maps.shape
    if num_peaks <= 0 or h * w == 0:
        return [[] for _ in range(n)]
    heat = maps.float()
    distance = max(1, int(min_distance))
    size = 2 * distance + 1  # -inf padding: the same maximum as the window clamped to the map
    local_max = F.max_pool2d(heat[:, None], (1, size), stride=1, padding=(0, distance))
    local_max = F.max_pool2d(local_max, (size, 1), stride=1, padding=(distance, 0))[:, 0]
    is_max = heat == local_max
    if h * w > 1:  # a flat map has no peak; a single pixel is one
        is_max &= ~is_max.flatten(1).all(dim=1)[:, None, None]
    index = (is_max & (heat > threshold)).nonzero()  # row-major: map, row, column
    scores = heat[index[:, 0], index[:, 1], index[:, 2]]
    order = torch.argsort(-scores, stable=True)
    order = order[torch.argsort(index[order, 0], stable=True)]  # grouped by map, score order kept
    index, scores = index[order].cpu().numpy(), scores[order].cpu().numpy()
    starts = np.searchsorted(index[:, 0], np.arange(n + 1))
    return [select_peaks(index[a:b, 1], index[a:b, 2], scores[a:b], num_peaks, distance)
            for a, b in zip(starts[:-1], starts[1:])]


@functools.lru_cache(maxsize=8)
def _turbo_lut(device: torch.device) -> torch.Tensor:
    """OpenCV's TURBO colour map as a (256, 3) BGR uint8 table on ``device``."""
    grey = np.arange(256, dtype=np.uint8)[:, None]
    return torch.from_numpy(cv2.applyColorMap(grey, cv2.COLORMAP_TURBO)[:, 0]).to(device)


def blend_heatmap_torch(image_rgb: torch.Tensor, heatmap: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """uint8 H x W x 3 RGB image and an H x W [0, 1] map on one device -> the BGR uint8 blend of
    :func:`affordance_clip_ros.visualization.draw_overlay` (TURBO colours, ``alpha`` = heatmap
    weight) before the peaks and labels are drawn, on that device."""
    grey = (heatmap.float().nan_to_num(0.0) * 255.0).clamp_(0, 255).to(torch.uint8)  # truncates, as astype
    colour = _turbo_lut(heatmap.device)[grey.long()].float()
    blend = colour * float(alpha) + image_rgb.flip(-1).float() * (1.0 - float(alpha))
    return blend.round_().clamp_(0, 255).to(torch.uint8)


def reduced_size(height: int, width: int, max_side: int) -> tuple[float, tuple[int, int]]:
    """A map shrunk so that its longest side is at most ``max_side`` (0: not shrunk):
    (map pixels per input pixel, (width, height))."""
    if not 0 < max_side < max(height, width):
        return 1.0, (width, height)
    scale = max_side / max(height, width)
    return scale, (max(1, round(width * scale)), max(1, round(height * scale)))


def resize_maps(maps: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(N, h, w) [0, 1] maps -> (N, height, width), bilinear as OpenCV's INTER_LINEAR, in [0, 1]."""
    return F.interpolate(maps[None].float(), size=(height, width), mode="bilinear",
                         align_corners=False)[0].clamp_(0.0, 1.0)


def reduce_maps(maps: torch.Tensor, max_side: int = 0, encoding: str = "32FC1") -> tuple[torch.Tensor, float]:
    """(N, H, W) [0, 1] maps -> (maps as published, scale): shrunk by area averaging to at most
    ``max_side`` on the long side (see :func:`reduced_size`); ``encoding`` mono8 stores
    round(255 * value) as uint8, 32FC1 keeps float32."""
    scale, (width, height) = reduced_size(maps.shape[1], maps.shape[2], max_side)
    if scale != 1.0:
        maps = F.interpolate(maps[None].float(), size=(height, width), mode="area")[0]
    if encoding == "mono8":
        return (maps.clamp(0.0, 1.0) * 255.0).round_().to(torch.uint8), scale
    return maps.float(), scale
