"""Scores of the training-free head that mean the same in every frame (pure torch).

CLIP's dense features have no calibrated similarity scale, and a per-frame min-max would give
every frame's best pixel 1.0, whether or not anything in view affords the action. Instead, as
MaskCLIP does with class sets, each pixel's score is the softmax probability, at CLIP's logit
scale, of the prompt against a fixed set of background phrases ("wall", "floor", ...): it depends
on that pixel's embedding and the texts only, never on the rest of the frame.
"""
from __future__ import annotations

import torch

MAX_LOGIT_SCALE = 100.0  # CLIP clamps its learned temperature here


def background_softmax(logits: torch.Tensor, background: torch.Tensor, logit_scale: float) -> torch.Tensor:
    """Per-pixel probability of each prompt against the background phrases.

    logits (B, N, h, w) and background (B, K, h, w): cosine similarities of the pixels with N
    prompts and K background phrases -> (B, N, h, w) float32 in [0, 1]. Each prompt competes
    with the background phrases only, so adding a prompt never changes another prompt's map.
    """
    if background.shape[1] == 0:
        raise ValueError("background_softmax needs at least one background phrase")
    scale = min(float(logit_scale), MAX_LOGIT_SCALE)
    prompt = logits.float() * scale
    rest = torch.logsumexp(background.float() * scale, dim=1, keepdim=True)  # (B, 1, h, w)
    return torch.sigmoid(prompt - rest)  # = exp(p) / (exp(p) + sum_k exp(b_k))
