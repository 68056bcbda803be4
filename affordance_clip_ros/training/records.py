"""Referring-segmentation record types (what the RefCOCO and JSONL readers produce and the
dataset consumes): masks as stored, one record per sentence."""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import cv2
import numpy as np
from pycocotools import mask as mask_utils


# ---------------------------------------------------------------------------------------- masks
@dataclass(frozen=True)
class CocoSegmentation:
    """A COCO annotation's ``segmentation``: polygons [[x, y, ...], ...] or RLE (compressed or not)."""

    segmentation: Union[list, dict]

    def decode(self, height: int, width: int) -> np.ndarray:
        seg = self.segmentation
        if isinstance(seg, list):
            polygons = [p for p in seg if len(p) >= 6]  # COCO keeps degenerate polygons; they cover nothing
            if not polygons:
                return np.zeros((height, width), np.uint8)
            rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
        elif isinstance(seg.get("counts"), list):  # uncompressed RLE
            rle = mask_utils.frPyObjects(seg, height, width)
        else:
            rle = dict(seg)
            if isinstance(rle["counts"], str):
                rle["counts"] = rle["counts"].encode("ascii")
            if tuple(rle["size"]) != (height, width):
                raise ValueError(f"RLE of size {rle['size']} for an image of {height}x{width}")
        with warnings.catch_warnings():  # pycocotools' own numpy-2 copy-keyword notice, harmless
            warnings.filterwarnings("ignore", message=".*copy keyword", category=DeprecationWarning)
            return np.ascontiguousarray(mask_utils.decode(rle), dtype=np.uint8)


@dataclass(frozen=True)
class PngMask:
    """A mask image; any non-zero pixel is foreground."""

    path: str

    def decode(self, height: int, width: int) -> np.ndarray:
        mask = cv2.imread(self.path, cv2.IMREAD_UNCHANGED)
        if mask is None:
            raise FileNotFoundError(f"cannot read mask '{self.path}'")
        if mask.ndim == 3:
            mask = mask.max(axis=2)
        if mask.shape != (height, width):
            raise ValueError(f"mask '{self.path}' is {mask.shape[1]}x{mask.shape[0]} but its image is {width}x{height}")
        return (mask > 0).astype(np.uint8)


MaskSource = Union[CocoSegmentation, PngMask]


@dataclass(frozen=True)
class Record:
    """One referring sentence: its image, the sentence and the mask it refers to. ``referent``
    names the object (the sentences of one object share it); empty = an object of its own."""

    image: str
    sentence: str
    mask: MaskSource
    referent: str = ""


def check_exists(path: Path, what: str, layout: str) -> None:
    """FileNotFoundError naming the missing path and showing the expected layout."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} '{path}' not found. Expected layout:\n{layout}")
