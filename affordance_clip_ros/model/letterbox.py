"""Letterboxing an image into the square model input and mapping maps back to the image."""
from __future__ import annotations

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
    """Maps (N, h, w) over the whole model input -> (N, H, W) over the original image.

    The maps are upsampled to the model input, the padding is cropped, and the image region is
    resized to the original size, so pixel (u, v) of the result is pixel (u, v) of the image.
    """
    full = F.interpolate(maps[None].float(), size=(box.size, box.size), mode="bilinear", align_corners=False)
    rows, cols = box.inner
    top, left = box.offset
    inner = full[:, :, top:top + rows, left:left + cols]
    if (rows, cols) != (box.height, box.width):
        inner = F.interpolate(inner, size=(box.height, box.width), mode="bilinear", align_corners=False)
    return inner[0]
