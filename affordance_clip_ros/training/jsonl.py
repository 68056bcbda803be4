"""Reader for custom referring data: one JSON object per line.

    {"image": "imgs/0001.jpg", "mask": "masks/0001.png", "sentences": ["the mug handle", "grip here"]}
    {"image": "imgs/0002.jpg", "polygon": [[10, 10, 80, 12, 45, 70]], "sentences": ["the knife blade"]}

* ``image``: path (relative paths are relative to the .jsonl file's folder).
* exactly one of ``mask`` (image file of the same stored size; non-zero = object) or ``polygon``
  (COCO style: a list of polygons ``[x1, y1, x2, y2, ...]`` in pixels; a single flat polygon or
  a list of ``[x, y]`` points is accepted too), both in the image's pixels as stored (an EXIF
  orientation tag is ignored).
* ``sentences``: a list of referring phrases (a single string is accepted); they refer to one
  object (``sample_unit`` decides whether an epoch takes each of them or one drawn at random).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..io import stored_size
from .records import CocoSegmentation, PngMask, Record, check_exists

EXAMPLE = __doc__.split("\n\n")[1]


def normalise_polygon(polygon) -> list[list[float]]:
    """Any accepted polygon form -> COCO's list of flat [x1, y1, x2, y2, ...] lists."""
    if not isinstance(polygon, list) or not polygon:
        raise ValueError("polygon must be a non-empty list")
    if all(isinstance(v, (int, float)) for v in polygon):
        polygons = [polygon]
    elif all(isinstance(p, list) and len(p) == 2 and all(isinstance(v, (int, float)) for v in p) for p in polygon):
        polygons = [[float(v) for point in polygon for v in point]]
    else:
        polygons = polygon
    for p in polygons:
        if not isinstance(p, list) or len(p) < 6 or len(p) % 2 or not all(isinstance(v, (int, float)) for v in p):
            raise ValueError("each polygon needs at least 3 (x, y) points as numbers [x1, y1, x2, y2, ...]")
    return [[float(v) for v in p] for p in polygons]


def _record_fields(entry, base: Path) -> tuple[str, object, list[str]]:
    if not isinstance(entry, dict):
        raise ValueError("expected a JSON object")
    if "image" not in entry or "sentences" not in entry:
        raise ValueError("needs 'image' and 'sentences'")
    if ("mask" in entry) == ("polygon" in entry):
        raise ValueError("needs exactly one of 'mask' and 'polygon'")
    image = str(base / entry["image"])
    check_exists(Path(image), "image", EXAMPLE)
    if "mask" in entry:
        mask_path = str(base / entry["mask"])
        check_exists(Path(mask_path), "mask", EXAMPLE)
        (mask_h, mask_w), (image_h, image_w) = stored_size(mask_path), stored_size(image)
        if (mask_h, mask_w) != (image_h, image_w):
            raise ValueError(f"mask '{mask_path}' is {mask_w}x{mask_h} pixels but its image is {image_w}x{image_h}")
        mask = PngMask(mask_path)
    else:
        mask = CocoSegmentation(normalise_polygon(entry["polygon"]))
    sentences = entry["sentences"]
    sentences = [sentences] if isinstance(sentences, str) else sentences
    if not isinstance(sentences, list) or not sentences or not all(isinstance(s, str) and s.strip() for s in sentences):
        raise ValueError("'sentences' must be a non-empty list of non-empty strings")
    return image, mask, sentences


def load_jsonl(path: str | os.PathLike) -> list[Record]:
    """Records of a .jsonl file; errors name the file and line."""
    path = Path(path)
    check_exists(path, "JSONL data file", EXAMPLE)
    records = []
    with open(path) as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                image, mask, sentences = _record_fields(json.loads(line), path.parent)
            except (ValueError, FileNotFoundError) as e:
                kind = FileNotFoundError if isinstance(e, FileNotFoundError) else ValueError
                raise kind(f"{path}:{number}: {e}") from e
            records += [Record(image, s.strip(), mask, f"{path}:{number}") for s in sentences]
    return records
