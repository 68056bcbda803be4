"""How faithful one image path's heatmaps are to another's: the prompts and the measure shared by
the int8 gate (``onnx_backend``) and ``affordance-clip benchmark``."""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch

# Affordances (AGD20K labels) whose heatmaps must stay faithful to fp32 for int8 to be used.
FIDELITY_PROMPTS = ("hold", "cut with", "drink with", "pour", "sit on", "open", "kick", "ride")


def min_correlation(pairs: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Smallest Pearson correlation over all maps of all pairs; each pair holds two (N, ...) stacks
    of N maps, compared map by map."""
    worst = 1.0
    for reference, candidate in pairs:
        for a, b in zip(reference.flatten(1).cpu().numpy(), candidate.flatten(1).cpu().numpy()):
            worst = min(worst, float(np.corrcoef(a, b)[0, 1]))
    return worst
