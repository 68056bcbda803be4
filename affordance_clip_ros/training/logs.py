"""What a training run writes for people: CSV logs and a PNG grid of predictions next to masks."""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch

from ..model.clip_backbone import CLIP_MEAN, CLIP_STD
from ..visualization import colorize

TRAIN_COLUMNS = ("step", "epoch", "loss", "lr", "images_per_s", "elapsed_s")
VAL_COLUMNS = ("step", "mIoU", "oIoU", "samples", "threshold")


class CsvLog:
    """Append rows to a CSV file with a header. ``keep_until`` drops rows of a later step (left by
    the interrupted run being resumed), so the log matches the resumed run."""

    def __init__(self, path: str | os.PathLike, columns: Sequence[str], keep_until: int | None = None):
        self.path, self.columns = Path(path), tuple(columns)
        rows = []
        if keep_until is not None and self.path.is_file():
            with open(self.path, newline="") as handle:
                rows = [r for r in csv.DictReader(handle) if int(r["step"]) <= keep_until]
        with open(self.path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.columns)
            writer.writeheader()
            writer.writerows(rows)

    def write(self, **row) -> None:
        with open(self.path, "a", newline="") as handle:
            csv.DictWriter(handle, fieldnames=self.columns).writerow(row)


def to_uint8_rgb(pixels: torch.Tensor) -> np.ndarray:
    """CLIP-normalised (3, S, S) -> uint8 S x S x 3 RGB."""
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    image = (pixels.float().cpu() * std + mean).clamp(0, 1)
    return (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def _caption(tile: np.ndarray, text: str) -> np.ndarray:
    scale = tile.shape[1] / 224
    cv2.rectangle(tile, (0, 0), (tile.shape[1], int(20 * scale)), (0, 0, 0), -1)
    cv2.putText(tile, text[:36], (4, int(14 * scale)), cv2.FONT_HERSHEY_SIMPLEX, 0.4 * scale, (255, 255, 255),
                max(1, int(scale)), cv2.LINE_AA)
    return tile


def prediction_grid(samples: Sequence[dict], threshold: float = 0.5, tile: int = 224) -> np.ndarray:
    """One row per sample: image with its sentence | true mask (the rest dimmed, outlined) | predicted probability
    (TURBO colours) with the thresholded outline in white. Returns BGR uint8."""
    rows = []
    for s in samples:
        image = cv2.cvtColor(to_uint8_rgb(s["pixels"]), cv2.COLOR_RGB2BGR)
        mask = s["mask"].numpy().astype(np.uint8)
        truth = np.where(mask[..., None] > 0, image, (image * 0.35).astype(np.uint8))
        outline, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(truth, outline, -1, (255, 255, 255), 1)
        prob = s["prob"].float().numpy()
        predicted = cv2.addWeighted(colorize(prob), 0.6, image, 0.4, 0.0)
        contours, _ = cv2.findContours((prob > threshold).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(predicted, contours, -1, (255, 255, 255), 1)
        panels = [cv2.resize(p, (tile, tile), interpolation=cv2.INTER_AREA) for p in (image, truth, predicted)]
        panels[0] = _caption(panels[0], s["text"])
        rows.append(np.hstack(panels))
    return np.vstack(rows) if rows else np.zeros((tile, 3 * tile, 3), np.uint8)


def save_prediction_grid(path: str | os.PathLike, samples: Sequence[dict], threshold: float = 0.5) -> Path:
    path = Path(path)
    if not cv2.imwrite(str(path), prediction_grid(samples, threshold)):
        raise OSError(f"could not write '{path}'")
    return path
