"""The pixel-text contrastive loss (paper Eq. 7-8, from CRIS) and the validation IoU.

Resolution choice: the loss is computed on the logit grid (H/8 for three FPN levels). The
letterboxed mask is area-averaged onto that grid and a cell is positive when the object covers
at least half of it, as CRIS resizes its masks to its prediction grid. This keeps the loss
exactly Eq. 8 (a mean over every pixel of the map the head produces) and costs nothing; the
alternative, upsampling the logits to 416x416, gives 64x more loss terms of interpolated logits.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def mask_to_logit_grid(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, S, S) {0, 1} masks -> (B, h, w) float {0, 1}: area fraction >= 0.5."""
    coverage = F.interpolate(masks[:, None].float(), size=tuple(size), mode="area")[:, 0]
    return (coverage >= 0.5).float()


def pixel_text_loss(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Per-pixel sigmoid BCE between logits (B, h, w) and input-size masks (B, S, S), averaged over
    all B*h*w pixels (Eq. 8); computed in float32 whatever the autocast dtype."""
    target = mask_to_logit_grid(masks, logits.shape[-2:])
    return F.binary_cross_entropy_with_logits(logits.float(), target)


def iou_counts(logits: torch.Tensor, masks: torch.Tensor, boxes: torch.Tensor,
               threshold: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample intersection and union, in input pixels, of the predicted and true masks.

    The logits (B, h, w) are upsampled bilinearly to the input size S and a pixel is predicted
    when sigmoid(logit) > ``threshold`` (0.5 means logit > 0). Only the image region of the
    letterbox (``boxes`` rows: top, left, rows, cols) counts; the padding is ignored.
    """
    size = masks.shape[-2:]
    full = F.interpolate(logits[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]
    predicted = full > math.log(threshold / (1.0 - threshold))
    truth = masks.bool()
    rows = torch.arange(size[0], device=masks.device)[None, :, None]
    cols = torch.arange(size[1], device=masks.device)[None, None, :]
    top, left, height, width = (boxes[:, i, None, None].to(masks.device) for i in range(4))
    inside = (rows >= top) & (rows < top + height) & (cols >= left) & (cols < left + width)
    intersection = (predicted & truth & inside).sum(dim=(1, 2))
    union = ((predicted | truth) & inside).sum(dim=(1, 2))
    return intersection, union


def per_sample_iou(intersection: torch.Tensor, union: torch.Tensor) -> torch.Tensor:
    """I / U per sample; an empty prediction of an empty mask scores 1."""
    return torch.where(union > 0, intersection.double() / union.clamp_min(1).double(), torch.ones_like(union).double())
