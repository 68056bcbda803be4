"""Reader for the AGD20K affordance-grounding test sets (Seen = Test A, Unseen = Test B).

Layout (the AGD20K release of "Learning Affordance Grounding from Exocentric Images", CVPR 2022)::

    AGD20K/Seen/testset/egocentric/<affordance>/<object>/<name>.jpg
    AGD20K/Seen/testset/GT/<affordance>/<object>/<name>.png      8-bit grey heatmap, same size
    AGD20K/Unseen/testset/...                                     the same below Unseen/

Only images with a GT png are scored (as in LOCATE's test loader); the prompt is the affordance
folder name with ``_`` as a space (``cut_with`` -> "cut with"), optionally put into a template.

Example::

    test_set = AGD20KTestSet("/data/AGD20K", "seen")
    len(test_set), test_set[0].prompt          # 1675, 'beat'
    image_rgb, gt_uint8 = test_set.load(0)
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..io import read_rgb

log = logging.getLogger(__name__)

SPLITS = {"seen": "Seen", "unseen": "Unseen"}
EXPECTED_IMAGES = {"seen": 1675, "unseen": 540}  # paper Sec. 4.1
EXPECTED_AFFORDANCES = {"seen": 36, "unseen": 25}  # affordances with scored images
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
LAYOUT = """expected the AGD20K layout:
  AGD20K/Seen/testset/egocentric/<affordance>/<object>/<name>.jpg
  AGD20K/Seen/testset/GT/<affordance>/<object>/<name>.png
  AGD20K/Unseen/testset/egocentric/... and AGD20K/Unseen/testset/GT/...
ROOT may be the folder that holds AGD20K/, AGD20K/ itself, or the split folder (AGD20K/Seen).
AGD20K comes from https://github.com/lhc1224/Cross-View-AG (see docs/evaluation.md)."""


@dataclass(frozen=True)
class AGD20KSample:
    """One scored test image."""

    image: Path  # .../testset/egocentric/<affordance>/<object>/<name>.jpg
    gt: Path  # .../testset/GT/<affordance>/<object>/<name>.png
    affordance: str  # folder name, e.g. cut_with
    object: str  # folder name, e.g. knife
    prompt: str  # what the model is asked, e.g. "cut with"

    @property
    def key(self) -> str:
        """<affordance>/<object>/<file name>: unique within a split."""
        return f"{self.affordance}/{self.object}/{self.image.name}"


def normalise_split(split: str) -> str:
    """'seen' / 'Seen' / 'unseen' ... -> 'seen' or 'unseen'."""
    key = str(split).lower()
    if key not in SPLITS:
        raise ValueError(f"unknown AGD20K split '{split}': use one of {sorted(SPLITS)}")
    return key


def affordance_prompt(affordance: str, template: str = "{}") -> str:
    """Folder name -> prompt: ``cut_with`` -> "cut with", then ``template.format(...)``."""
    if template.count("{}") != 1:
        raise ValueError(f"prompt template must contain exactly one '{{}}', got '{template}'")
    return template.format(affordance.replace("_", " "))


def _child(folder: Path, name: str) -> Path | None:
    """folder/name, matching the name case-insensitively when the exact one is absent."""
    exact = folder / name
    if exact.is_dir():
        return exact
    if folder.is_dir():
        for entry in folder.iterdir():
            if entry.is_dir() and entry.name.lower() == name.lower():
                return entry
    return None


def _is_testset(folder: Path | None) -> bool:
    return folder is not None and _child(folder, "egocentric") is not None and _child(folder, "GT") is not None


def find_testset(root: str | os.PathLike, split: str) -> Path:
    """The ``testset`` folder of a split, from ROOT = the folder holding AGD20K/, AGD20K/ or AGD20K/<Split>."""
    root, split = Path(root).expanduser(), normalise_split(split)
    if not root.is_dir():
        raise FileNotFoundError(f"AGD20K root '{root}' is not a folder (--agd20k); {LAYOUT}")
    if root.name.lower() in SPLITS and root.name.lower() != split:
        raise ValueError(f"AGD20K root '{root}' is the {SPLITS[root.name.lower()]} split but --split {split} was "
                         f"asked: point --agd20k at its parent folder {root.parent}")
    agd = _child(root, "AGD20K")
    split_name = SPLITS[split]
    candidates = [(f"{root}/AGD20K/{split_name}/testset", agd and _child(agd, split_name)),
                  (f"{root}/{split_name}/testset", _child(root, split_name)),
                  (f"{root}/testset", root)]
    for _, split_dir in candidates:
        testset = _child(split_dir, "testset") if split_dir else None
        if _is_testset(testset):
            return testset
    listing = sorted(p.name for p in root.iterdir())[:12]
    tried = "\n  ".join(name for name, _ in candidates)
    raise FileNotFoundError(f"no AGD20K {SPLITS[split]} test set under '{root}' (it holds {listing}); looked for "
                            f"egocentric/ and GT/ in:\n  {tried}\n{LAYOUT}")


def _sorted_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir())


def list_samples(testset: Path, prompt_template: str = "{}") -> tuple[list[AGD20KSample], list[Path]]:
    """(scored samples, images skipped for lack of a GT png), both in sorted order."""
    egocentric, gt_root = _child(testset, "egocentric"), _child(testset, "GT")
    samples, skipped = [], []
    for affordance_dir in _sorted_dirs(egocentric):
        prompt = affordance_prompt(affordance_dir.name, prompt_template)
        for object_dir in _sorted_dirs(affordance_dir):
            for image in sorted(object_dir.iterdir()):
                if not image.is_file() or image.suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                gt = gt_root / affordance_dir.name / object_dir.name / (image.stem + ".png")
                if gt.is_file():
                    samples.append(AGD20KSample(image, gt, affordance_dir.name, object_dir.name, prompt))
                else:
                    skipped.append(image)
    return samples, skipped


def read_gt(path: Path) -> np.ndarray:
    """uint8 H x W grey ground truth, read as LOCATE's ``process_gt`` reads it (OpenCV grey)."""
    gt = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if gt is None:
        raise ValueError(f"cannot decode ground truth '{path}' (corrupted or not an image?)")
    return gt


class AGD20KTestSet:
    """The scored images of one AGD20K split, sorted by affordance, object and file name."""

    def __init__(self, root: str | os.PathLike, split: str, prompt_template: str = "{}"):
        self.split = normalise_split(split)
        self.testset = find_testset(root, self.split)
        self.samples, self.skipped = list_samples(self.testset, prompt_template)
        if not self.samples:
            raise FileNotFoundError(f"'{self.testset}' has no egocentric image with a GT png "
                                    f"({len(self.skipped)} image(s) without one); {LAYOUT}")
        if self.skipped:
            log.info("%d image(s) in %s have no GT png and are not scored (as in the reference protocol)",
                     len(self.skipped), self.testset)
        if not self.is_complete:
            log.warning("AGD20K %s in %s has %d affordance(s) with %d scored image(s), the paper's split has %d with "
                        "%d (an incomplete download?): its numbers are not comparable with the paper's",
                        SPLITS[self.split], self.testset, len(self.affordances), len(self.samples),
                        EXPECTED_AFFORDANCES[self.split], EXPECTED_IMAGES[self.split])

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> AGD20KSample:
        return self.samples[index]

    @property
    def affordances(self) -> list[str]:
        return sorted({s.affordance for s in self.samples})

    @property
    def is_complete(self) -> bool:
        """Whether the counts of affordances and scored images are the paper's (Seen 36 and 1675,
        Unseen 25 and 540)."""
        return (len(self.affordances), len(self.samples)) == (EXPECTED_AFFORDANCES[self.split],
                                                              EXPECTED_IMAGES[self.split])

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 RGB image, uint8 grey GT) of sample ``index``, the image in its stored pixel layout
        (EXIF orientation ignored, as LOCATE's PIL loader does); ValueError when their sizes differ."""
        sample = self.samples[index]
        image, gt = read_rgb(sample.image), read_gt(sample.gt)
        if image.shape[:2] != gt.shape:
            raise ValueError(f"image '{sample.image}' is {image.shape[1]}x{image.shape[0]} pixels but its ground "
                             f"truth '{sample.gt}' is {gt.shape[1]}x{gt.shape[0]}: the pair must have the same size. "
                             f"Replace both with the files of the AGD20K release (a resized or re-encoded copy?).")
        return image, gt
