"""`affordance-clip synth-refcoco`: a small synthetic referring dataset in the refer toolkit's layout.

Images of 2-3 coloured shapes on a noisy grey background, each shape referred to by
"the <colour> <shape>" and by its position ("... on the left", "... in the middle",
"... on the right"). The colours in one image differ, so the colour word alone identifies the
object: even a CLIP with random weights separates these phrases (their text embeddings
differ mostly by the colour word) and its early layers keep colour, so an FPN can learn the task.
Written exactly as the real data is read (``refcoco/refs(unc).p``, ``refcoco/instances.json``
with polygon segmentations, ``images/mscoco/images/train2014/COCO_train2014_%012d.jpg``), so
``affordance-clip train --data-root OUT_DIR --train-data refcoco:unc`` exercises the real loader.
"""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from .refcoco import DEFAULT_IMAGE_DIR

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 230), "yellow": (235, 215, 40),
           "purple": (150, 60, 200)}
SHAPES = ("circle", "square", "triangle")
POSITIONS = {2: ("on the left", "on the right"), 3: ("on the left", "in the middle", "on the right")}


def split_of(index: int) -> str:
    """80 % train, 10 % val, 10 % test, interleaved so every split sees the whole generator."""
    return {8: "val", 9: "test"}.get(index % 10, "train")


def shape_polygon(shape: str, cx: float, cy: float, radius: float, angle: float) -> np.ndarray:
    """(N, 2) float vertices of a shape of the given circumradius, rotated by ``angle`` radians."""
    count = {"circle": 24, "square": 4, "triangle": 3}[shape]
    start = {"circle": 0.0, "square": np.pi / 4, "triangle": -np.pi / 2}[shape] + angle
    theta = start + 2 * np.pi * np.arange(count) / count
    return np.stack([cx + radius * np.cos(theta), cy + radius * np.sin(theta)], axis=1)


def draw_image(rng: np.random.Generator) -> tuple[np.ndarray, list[dict]]:
    """One RGB image and its objects (colour, shape, polygon), sorted left to right."""
    height, width = int(rng.integers(120, 241)), int(rng.integers(160, 321))
    count = int(rng.integers(2, 4))
    grey = rng.uniform(70, 180)
    image = np.clip(rng.normal(grey, 8.0, (height, width, 3)), 0, 255).astype(np.uint8)
    column = width / count
    colours = rng.choice(list(COLOURS), size=count, replace=False)
    objects = []
    for i, colour in enumerate(colours):
        radius = rng.uniform(0.3, 0.45) * min(column, height)
        cx = (i + 0.5) * column + rng.uniform(-0.5, 0.5) * (column / 2 - radius)
        cy = rng.uniform(radius + 2, height - radius - 2)
        shape = str(rng.choice(SHAPES))
        polygon = shape_polygon(shape, cx, cy, radius, rng.uniform(-0.3, 0.3))
        rgb = np.clip(np.array(COLOURS[colour]) + rng.integers(-15, 16, 3), 0, 255)
        cv2.fillPoly(image, [np.round(polygon).astype(np.int32)], [int(v) for v in rgb], cv2.LINE_AA)
        objects.append({"colour": str(colour), "shape": shape, "polygon": polygon})
    return image, objects


def write_synthetic_refcoco(out_dir: str | Path, num_images: int = 200, seed: int = 0) -> dict:
    """Write the dataset under ``out_dir`` (the ``--data-root`` for training). Returns counts per split."""
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    rng = np.random.default_rng(seed)
    root = Path(out_dir)
    image_dir, refer_dir = root / DEFAULT_IMAGE_DIR, root / "refcoco"
    image_dir.mkdir(parents=True, exist_ok=True)
    refer_dir.mkdir(parents=True, exist_ok=True)
    categories = [{"id": i + 1, "name": s, "supercategory": "shape"} for i, s in enumerate(SHAPES)]
    images, annotations, refs = [], [], []
    counts = {"train": 0, "val": 0, "test": 0}
    next_sent_id = 0
    for index in range(num_images):
        image_id = index + 1
        image, objects = draw_image(rng)
        file_name = f"COCO_train2014_{image_id:012d}.jpg"
        cv2.imwrite(str(image_dir / file_name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
        height, width = image.shape[:2]
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        split = split_of(index)
        for position, obj in zip(POSITIONS[len(objects)], objects):
            ann_id = len(annotations) + 1
            flat = [round(float(v), 2) for v in obj["polygon"].reshape(-1)]
            rle = mask_utils.frPyObjects([flat], height, width)
            category_id = SHAPES.index(obj["shape"]) + 1
            annotations.append({"id": ann_id, "image_id": image_id, "category_id": category_id,
                                "segmentation": [flat], "area": float(mask_utils.area(rle).sum()),
                                "bbox": [float(v) for v in mask_utils.toBbox(mask_utils.merge(rle))], "iscrowd": 0})
            phrase = f"the {obj['colour']} {obj['shape']}"
            sentences = []
            for text in (phrase, f"{phrase} {position}"):
                sentences.append({"tokens": text.split(), "raw": text, "sent_id": next_sent_id, "sent": text})
                next_sent_id += 1
            refs.append({"ref_id": len(refs), "ann_id": ann_id, "image_id": image_id, "split": split,
                         "category_id": category_id, "file_name": f"COCO_train2014_{image_id:012d}_{ann_id}.jpg",
                         "sentences": sentences, "sent_ids": [s["sent_id"] for s in sentences]})
            counts[split] += len(sentences)
    with open(refer_dir / "instances.json", "w") as handle:
        json.dump({"info": {"description": "affordance_clip_ros synthetic RefCOCO", "seed": seed},
                   "images": images, "annotations": annotations, "categories": categories}, handle)
    with open(refer_dir / "refs(unc).p", "wb") as handle:
        pickle.dump(refs, handle, protocol=2)  # the refer toolkit's files are Python 2 pickles
    return counts
