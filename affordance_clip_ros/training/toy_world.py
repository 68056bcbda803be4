"""A toy world in which object kinds afford action verbs, for reproducing the paper's claim in miniature.

Images hold objects of six kinds (``KINDS``) in six colours, two sizes and three textures, on
varied backgrounds, each with its mask. Every verb is tied to the kinds that afford it
(``VERBS``: "roll" -> ball, ...). Three data sets are drawn from the same world:

* image-caption pairs for contrastive pre-training of a small CLIP (:func:`caption_batch`);
  some captions say what an object affords ("you can roll the red ball", "something to roll");
* referring expressions in the JSONL format of ``affordance-clip train``
  (:func:`write_referring_jsonl`): colours and kinds of the ``SEEN_KINDS`` only, never a verb;
* an AGD20K-layout test set (:func:`write_agd20k`) whose GT heatmaps are blurred masks of the
  objects affording each verb: Seen = verbs of the ``SEEN_KINDS``, Unseen = the other verbs.

Pure numpy and OpenCV; every draw comes from the ``numpy.random.Generator`` passed in.

Example::

    rng = np.random.default_rng(0)
    scene = draw_scene(rng, 96, 2)  # scene.image: (96, 96, 3) uint8; scene.objects: 2 ToyObjects with masks
    caption(rng, scene.objects)       # e.g. "you can throw the blue star"
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from ..io import written_atomically

KINDS = ("ball", "box", "triangle", "ring", "star", "cross")
VERBS = {"roll": ("ball",), "stack": ("box",), "cut": ("triangle",),
         "wear": ("ring",), "throw": ("star",), "hang": ("cross",)}
SEEN_KINDS = ("ball", "box", "triangle")  # referred to in FPN training; the others never are
COLOURS = {"red": (215, 35, 35), "green": (35, 170, 55), "blue": (40, 70, 225), "yellow": (235, 210, 30),
           "purple": (145, 50, 190), "white": (245, 245, 245)}
TEXTURES = ("plain", "striped", "spotted")
SIZES = {"small": (0.10, 0.14), "large": (0.15, 0.20)}  # circumradius as a fraction of the image side


@dataclass
class ToyObject:
    kind: str
    colour: str
    size: str
    texture: str
    mask: np.ndarray  # bool, the image's H x W

    @property
    def verbs(self) -> list[str]:
        return [verb for verb, kinds in VERBS.items() if self.kind in kinds]


@dataclass
class Scene:
    image: np.ndarray  # uint8 RGB, side x side x 3
    objects: list[ToyObject]


def seen_verbs() -> list[str]:
    """Verbs whose kinds are all among the SEEN_KINDS (AGD20K 'Seen')."""
    return [v for v, kinds in VERBS.items() if set(kinds) <= set(SEEN_KINDS)]


def unseen_verbs() -> list[str]:
    """Verbs none of whose kinds is referred to in FPN training (AGD20K 'Unseen')."""
    return [v for v, kinds in VERBS.items() if not set(kinds) & set(SEEN_KINDS)]


# ------------------------------------------------------------------------------------- drawing
def _star(cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    theta = angle - math.pi / 2 + np.arange(10) * math.pi / 5
    radius = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
    return np.stack([cx + radius * np.cos(theta), cy + radius * np.sin(theta)], 1)


def _regular(cx: float, cy: float, r: float, angle: float, count: int, start: float) -> np.ndarray:
    theta = start + angle + 2 * math.pi * np.arange(count) / count
    return np.stack([cx + r * np.cos(theta), cy + r * np.sin(theta)], 1)


def _cross(cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    a, b = r, 0.35 * r
    points = np.array([(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b), (b, a), (-b, a), (-b, b), (-a, b),
                       (-a, -b), (-b, -b)])
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    return points @ rotation.T + (cx, cy)


def kind_mask(kind: str, side: int, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    """bool side x side mask of one object of ``kind`` with circumradius ``r`` centred at (cx, cy)."""
    canvas = np.zeros((side, side), np.uint8)
    shift, scale = 4, 16  # sub-pixel coordinates: 1/16 pixel
    centre = (round(cx * scale), round(cy * scale))
    if kind == "ball":
        cv2.circle(canvas, centre, round(r * scale), 1, -1, cv2.LINE_8, shift)
    elif kind == "ring":
        cv2.circle(canvas, centre, round(r * 0.75 * scale), 1, max(2, round(r * 0.45)), cv2.LINE_8, shift)
    else:
        polygon = {"box": lambda: _regular(cx, cy, r, angle, 4, math.pi / 4),
                   "triangle": lambda: _regular(cx, cy, r, angle, 3, -math.pi / 2),
                   "star": lambda: _star(cx, cy, r, angle),
                   "cross": lambda: _cross(cx, cy, r, angle)}[kind]()
        cv2.fillPoly(canvas, [np.round(polygon * scale).astype(np.int32)], 1, cv2.LINE_8, shift)
    return canvas.astype(bool)


def _background(rng: np.random.Generator, side: int) -> np.ndarray:
    """Muted colour with noise and one of: flat, gradient, stripes, checks."""
    base = rng.uniform(60, 190) + rng.uniform(-25, 25, 3)
    image = np.broadcast_to(base, (side, side, 3)).astype(np.float32).copy()
    y, x = np.mgrid[0:side, 0:side].astype(np.float32) / side
    style = rng.integers(4)
    if style == 1:
        direction = rng.uniform(0, 2 * math.pi)
        image += (40 * ((x - 0.5) * math.cos(direction) + (y - 0.5) * math.sin(direction)))[..., None]
    elif style == 2:
        period, direction = rng.uniform(6, 16), rng.uniform(0, math.pi)
        image += (12 * np.sign(np.sin(2 * math.pi * side * (x * math.cos(direction) + y * math.sin(direction))
                                       / period)))[..., None]
    elif style == 3:
        cell = rng.uniform(8, 20) / side
        image += (10 * (((x // cell) + (y // cell)) % 2 * 2 - 1))[..., None]
    image += rng.normal(0, 6, image.shape)
    return image


def _texture(rng: np.random.Generator, texture: str, side: int) -> np.ndarray:
    """Multiplicative shading of an object's colour (1 = the plain colour)."""
    if texture == "plain":
        return np.ones((side, side), np.float32)
    y, x = np.mgrid[0:side, 0:side].astype(np.float32)
    if texture == "striped":
        direction = rng.uniform(0, math.pi)
        return np.where(np.sin((x * math.cos(direction) + y * math.sin(direction)) * math.pi / 2.5) > 0, 1.0, 0.6)
    period = 6.0
    return np.where(np.hypot((x + rng.uniform(0, period)) % period - period / 2,
                             (y + rng.uniform(0, period)) % period - period / 2) < 1.6, 0.55, 1.0)


def draw_scene(rng: np.random.Generator, side: int, count: int, kinds: Sequence[str] = KINDS,
               required: Sequence[str] = ()) -> Scene:
    """An image of ``count`` non-overlapping objects with kinds drawn from ``kinds``, including one of
    each kind in ``required``, and distinct colours."""
    if len(required) > count:
        raise ValueError(f"{len(required)} required kinds do not fit in {count} objects")
    chosen = list(required) + [str(k) for k in rng.choice(kinds, count - len(required))]
    rng.shuffle(chosen)
    colours = [str(c) for c in rng.choice(list(COLOURS), count, replace=False)]
    image = _background(rng, side)
    placed: list[tuple[float, float, float]] = []
    objects = []
    for kind, colour in zip(chosen, colours):
        size = str(rng.choice(list(SIZES)))
        for _ in range(100):  # rejection sampling of a free place; shrink when the image is crowded
            r = rng.uniform(*SIZES[size]) * side
            cx, cy = rng.uniform(r + 1, side - r - 1, 2)
            if all(math.hypot(cx - px, cy - py) > r + pr + 2 for px, py, pr in placed):
                break
            size = "small"
        placed.append((cx, cy, r))
        texture = str(rng.choice(TEXTURES))
        mask = kind_mask(kind, side, cx, cy, r, rng.uniform(0, 2 * math.pi))
        shade = _texture(rng, texture, side)[..., None]
        rgb = np.clip(np.array(COLOURS[colour], np.float32) + rng.uniform(-15, 15, 3), 0, 255)
        image[mask] = (rgb * shade)[mask]
        objects.append(ToyObject(kind, colour, size, texture, mask))
    return Scene(np.clip(image, 0, 255).astype(np.uint8), objects)


# ------------------------------------------------------------------------------------- captions
def _name(rng: np.random.Generator, obj: ToyObject) -> str:
    words = [obj.colour, obj.kind]
    if rng.random() < 0.25:
        words.insert(0, obj.size)
    if obj.texture != "plain" and rng.random() < 0.25:
        words.insert(-1, obj.texture)
    return " ".join(words)


def caption(rng: np.random.Generator, objects: Sequence[ToyObject]) -> str:
    """An image-level caption: the objects, sometimes what one of them affords, with or without its kind."""
    names = [_name(rng, o) for o in objects]
    style = rng.random()
    if style < 0.4:
        return "a " + " and a ".join(names)
    obj = objects[int(rng.integers(len(objects)))]
    verb = str(rng.choice(obj.verbs))
    if style < 0.7:
        return f"you can {verb} the {_name(rng, obj)}"
    if style < 0.85:
        return f"a {obj.colour} thing to {verb}"
    return f"something to {verb}" if len(objects) == 1 else verb


def caption_batch(rng: np.random.Generator, size: int, side: int = 96, max_objects: int = 2
                  ) -> tuple[np.ndarray, list[str]]:
    """``size`` images (size, side, side, 3) uint8 of 1..max_objects objects of any kind, and their captions."""
    images, texts = [], []
    for _ in range(size):
        scene = draw_scene(rng, side, int(rng.integers(1, max_objects + 1)))
        images.append(scene.image)
        texts.append(caption(rng, scene.objects))
    return np.stack(images), texts


# ------------------------------------------------------------------------------------- data sets on disk
def _write_rgb(path: Path, image: np.ndarray, quality: int = 95) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality]):
        raise OSError(f"could not write '{path}'")


def referring_sentences(obj: ToyObject, objects: Sequence[ToyObject]) -> list[str]:
    """Phrases that single ``obj`` out among ``objects`` by colour and kind only (colours are distinct)."""
    sentences = [f"the {obj.colour} {obj.kind}"]
    if sum(o.kind == obj.kind for o in objects) == 1:
        sentences.append(f"the {obj.kind}")
    sentences.append(f"the {obj.colour} one")
    return sentences


def write_referring_jsonl(out_dir: str | Path, num_images: int, rng: np.random.Generator, side: int = 128,
                          kinds: Sequence[str] = SEEN_KINDS) -> Path:
    """Images of 2-3 objects of ``kinds`` and one JSONL line per object (mask PNG, sentences) for
    ``affordance-clip train --train-data OUT/refer.jsonl``. No sentence holds a verb."""
    out = Path(out_dir)
    lines = []
    for index in range(num_images):
        scene = draw_scene(rng, side, int(rng.integers(2, 4)), kinds)
        image = Path("images") / f"{index:05d}.jpg"
        _write_rgb(out / image, scene.image)
        for number, obj in enumerate(scene.objects):
            mask = Path("masks") / f"{index:05d}_{number}.png"
            (out / mask).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(out / mask), obj.mask.astype(np.uint8) * 255)
            lines.append(json.dumps({"image": str(image), "mask": str(mask),
                                     "sentences": referring_sentences(obj, scene.objects)}))
    path = out / "refer.jsonl"
    with written_atomically(path) as tmp:
        Path(tmp).write_text("\n".join(lines) + "\n")
    return path


def affordance_gt(objects: Sequence[ToyObject], verb: str, sigma: float) -> np.ndarray:
    """uint8 heatmap: the masks of the objects affording ``verb``, Gaussian-blurred, peak 255."""
    union = np.zeros(objects[0].mask.shape, np.float32)
    for obj in objects:
        if obj.kind in VERBS[verb]:
            union[obj.mask] = 1.0
    blurred = cv2.GaussianBlur(union, (0, 0), sigma)
    return np.round(255 * blurred / max(float(blurred.max()), 1e-6)).astype(np.uint8)


def write_agd20k(root: str | Path, per_verb: int, rng: np.random.Generator, side: int = 128) -> dict[str, int]:
    """``root/AGD20K/{Seen,Unseen}/testset/{egocentric,GT}/<verb>/<kind>/<name>.{jpg,png}``: per verb,
    ``per_verb`` images of 2-4 objects of any kinds, at least one affording the verb (the object folder
    is its kind). Returns the image count per split."""
    counts = {}
    for split, verbs in (("Seen", seen_verbs()), ("Unseen", unseen_verbs())):
        testset = Path(root) / "AGD20K" / split / "testset"
        for verb in verbs:
            for index in range(per_verb):
                kind = str(rng.choice(VERBS[verb]))
                scene = draw_scene(rng, side, int(rng.integers(2, 5)), required=[kind])
                name = f"{verb}_{kind}_{index:04d}"
                _write_rgb(testset / "egocentric" / verb / kind / f"{name}.jpg", scene.image)
                gt_path = testset / "GT" / verb / kind / f"{name}.png"
                gt_path.parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(gt_path), affordance_gt(scene.objects, verb, sigma=side / 32))
        counts[split.lower()] = per_verb * len(verbs)
    return counts
