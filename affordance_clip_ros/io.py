"""File helpers shared by every layer: atomic writes, and reading image files for training,
evaluation and ``affordance-clip infer``.

A JPEG may carry an EXIF orientation tag (phones set it instead of rotating the pixels).
OpenCV's ``IMREAD_COLOR`` applies it; PIL's ``Image.open(...).convert("RGB")``, which LOCATE's
AGD20K loader uses, does not, and the AGD20K ground truths and COCO annotations are drawn on the
pixels as stored. Training and evaluation therefore read the stored layout (the default here).
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
from PIL import Image


def read_rgb(path: str | os.PathLike, apply_exif_orientation: bool = False) -> np.ndarray:
    """uint8 H x W x 3 RGB pixels of an image file.

    ``apply_exif_orientation=False``: the pixels as stored, whatever the EXIF orientation tag says
    (the frame of the AGD20K ground truths and the COCO annotations). True: turned upright as
    image viewers show the file. FileNotFoundError when the file is missing, ValueError when it
    cannot be decoded.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"image '{path}' not found")
    flags = cv2.IMREAD_COLOR if apply_exif_orientation else cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
    bgr = cv2.imread(str(path), flags)
    if bgr is None:
        raise ValueError(f"cannot decode image '{path}' (corrupted or not an image?)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def stored_size(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) of the pixels as stored (what :func:`read_rgb` returns by default), read
    from the file header without decoding the image; ValueError when it is not an image."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (OSError, Image.DecompressionBombError) as e:  # UnidentifiedImageError is an OSError
        raise ValueError(f"cannot read image '{path}' (corrupted or not an image?)") from e
    return height, width


@contextmanager
def written_atomically(path: str | os.PathLike) -> Iterator[str]:
    """A temporary file name beside ``path`` to write to; when the block ends without an error, it
    replaces ``path`` in one rename, so readers never see a partial file. An error leaves ``path``
    as it was and no temporary file (a killed process leaves ``<name>.*.tmp``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
