"""Letterboxing an image into the square model input and mapping maps back to the image."""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .clip_backbone import CLIP_MEAN, CLIP_STD


@dataclass(frozen=True)
class Letterbox:
    """Where an H x W image lies inside the size x size model input (scaled, then centred)."""

    height: int
    width: int
    size: int

    @property
    def scale(self) -> float:
        return self.size / max(self.height, self.width)

    @property
    def inner(self) -> tuple[int, int]:
        """(rows, cols) the image occupies in the model input."""
        return (max(1, round(self.height * self.scale)), max(1, round(self.width * self.scale)))

    @property
    def offset(self) -> tuple[int, int]:
        """(top, left) padding."""
        rows, cols = self.inner
        return ((self.size - rows) // 2, (self.size - cols) // 2)


def letterbox_batch(images: list[torch.Tensor], size: int) -> tuple[torch.Tensor, list[Letterbox]]:
    """uint8 HxWx3 RGB tensors (any sizes, on the target device) -> normalised (B, 3, size, size).

    Resizing (bilinear, antialiased) and normalisation run on the images' device. Padding is 0
    after normalisation, i.e. CLIP's mean colour.
    """
    batch = torch.zeros((len(images), 3, size, size), device=images[0].device)
    boxes = []
    mean = torch.tensor(CLIP_MEAN, device=batch.device).view(3, 1, 1)
    std = torch.tensor(CLIP_STD, device=batch.device).view(3, 1, 1)
    for i, image in enumerate(images):
        box = Letterbox(int(image.shape[0]), int(image.shape[1]), size)
        rows, cols = box.inner
        top, left = box.offset
        chw = image.permute(2, 0, 1).unsqueeze(0).float().div_(255.0)
        if (rows, cols) != (box.height, box.width):
            chw = F.interpolate(chw, size=(rows, cols), mode="bilinear", align_corners=False, antialias=True)
        batch[i, :, top:top + rows, left:left + cols] = (chw[0].clamp_(0, 1) - mean) / std
        boxes.append(box)
    return batch, boxes


def unletterbox(maps: torch.Tensor, box: Letterbox) -> torch.Tensor:
    """Maps (N, h, w) over the whole model input -> (N, H, W) float32 over the original image.

    Pixel (u, v) of the result is pixel (u, v) of the image: each output pixel is sampled
    bilinearly (half-pixel centres, edges clamped) at its place in the coarse grid, i.e. the crop
    of the padding and the resize to H x W happen in one step, as two small matrix products. The
    cost per prompt is one H x W write, whatever the model input size.
    """
    n, h, w = maps.shape
    rows_matrix, cols_matrix = _resampling_matrices(box, h, w, maps.device)
    return rows_matrix @ maps.float() @ cols_matrix


@functools.lru_cache(maxsize=16)
def _resampling_matrices(box: Letterbox, h: int, w: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(H, h) and (w, W) bilinear interpolation matrices from the coarse grid to the image."""
    rows, cols = box.inner
    top, left = box.offset
    return (_axis_matrix(box.height, rows, top, h, box.size, device),
            _axis_matrix(box.width, cols, left, w, box.size, device).T.contiguous())


def _axis_matrix(out: int, inner: int, offset: int, coarse: int, size: int, device: torch.device) -> torch.Tensor:
    """(out, coarse) weights: output index i lies at model-input coordinate offset + (i + 0.5) *
    inner / out, i.e. at coarse coordinate that * coarse / size - 0.5 (half-pixel centres)."""
    centres = offset + (torch.arange(out, dtype=torch.float64) + 0.5) * inner / out
    position = (centres * coarse / size - 0.5).clamp(0, coarse - 1)
    low = position.floor().long()
    high = (low + 1).clamp(max=coarse - 1)
    frac = position - low
    matrix = torch.zeros(out, coarse, dtype=torch.float64)
    index = torch.arange(out)
    matrix.index_put_((index, low), 1 - frac, accumulate=True)
    matrix.index_put_((index, high), frac, accumulate=True)
    return matrix.float().to(device)
