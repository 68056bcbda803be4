"""Referring-segmentation samples from the RefCOCO and JSONL readers: decoding, letterboxing, and a
data order that can be resumed part-way through an epoch."""
from __future__ import annotations

import hashlib
import os
from typing import Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler

from ..io import read_rgb
from ..model.letterbox import Letterbox, letterbox_batch
from .jsonl import load_jsonl
from .records import Record
from .refcoco import load_refer


# ---------------------------------------------------------------------------------------- images
def letterbox_mask(mask: np.ndarray, box: Letterbox) -> torch.Tensor:
    """H x W {0, 1} mask -> (size, size) uint8 with the geometry :func:`letterbox_batch` gives the image.

    Resized as a float map (area when shrinking, bilinear when enlarging) and binarised at 0.5,
    so a thin part keeps its pixels when it covers at least half of them; padding is 0.
    """
    rows, cols = box.inner
    top, left = box.offset
    inner = mask.astype(np.float32)
    if (rows, cols) != mask.shape:
        shrink = rows < mask.shape[0]
        inner = cv2.resize(inner, (cols, rows), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    out = torch.zeros((box.size, box.size), dtype=torch.uint8)
    out[top:top + rows, left:left + cols] = torch.from_numpy((inner >= 0.5).astype(np.uint8))
    return out


class ReferringDataset(Dataset):
    """Records -> letterboxed model inputs. Runs in DataLoader workers.

    ``per_object=False``: one sample per sentence. ``per_object=True``: one sample per referred
    object, with one of its sentences drawn at random each epoch (as CRIS trains). The draw depends
    only on (seed, epoch, object), so a resumed run draws the same. An index may carry its epoch
    as ``epoch * len(dataset) + index`` (what :class:`ResumableSampler` yields); a plain index
    means epoch 0.

    Item: ``pixels`` (3, S, S) float normalised for CLIP, ``mask`` (S, S) uint8, ``box`` (4,) int
    (top, left, rows, cols) of the image inside the input, ``text`` str.
    """

    def __init__(self, records: Sequence[Record], input_size: int, per_object: bool = False, seed: int = 0):
        self.records = list(records)
        self.input_size = input_size
        self.per_object, self.seed = per_object, seed
        groups: dict[str, list[int]] = {}
        for i, record in enumerate(self.records):
            groups.setdefault(record.referent or f"#{i}", []).append(i)
        self.objects = list(groups.values()) if per_object else [[i] for i in range(len(self.records))]

    def __len__(self) -> int:
        return len(self.objects)

    def record(self, index: int) -> Record:
        """The record behind ``index`` (which may carry its epoch, see the class docstring)."""
        epoch, index = divmod(index, len(self.objects))
        sentences = self.objects[index]
        if len(sentences) == 1:
            return self.records[sentences[0]]
        draw = np.random.default_rng((self.seed, epoch, index)).integers(len(sentences))
        return self.records[sentences[draw]]

    def __getitem__(self, index: int) -> dict:
        record = self.record(index)
        image = read_rgb(record.image)  # stored pixel layout, the frame of the annotations (EXIF ignored)
        mask = record.mask.decode(*image.shape[:2])
        pixels, [box] = letterbox_batch([torch.from_numpy(image)], self.input_size)
        top, left = box.offset
        return {"pixels": pixels[0], "mask": letterbox_mask(mask, box), "text": record.sentence,
                "box": torch.tensor([top, left, *box.inner])}

    def fingerprint(self) -> dict:
        """``{"samples": count, "digest": hex}`` of the image file names and sentences in order: what a
        resumed run must find again to continue the same data order (the folders may move)."""
        digest = hashlib.sha256()
        for record in self.records:
            digest.update(f"{os.path.basename(record.image)}\t{record.sentence}\n".encode())
        return {"samples": len(self), "digest": digest.hexdigest()[:16]}

    def subset(self, count: int) -> "ReferringDataset":
        """``count`` evenly spaced records (all when count is 0 or too large), in order."""
        if count <= 0 or count >= len(self.records):
            return self
        picks = np.linspace(0, len(self.records) - 1, count).round().astype(int)
        return ReferringDataset([self.records[i] for i in picks], self.input_size, self.per_object, self.seed)


def worker_init(_: int) -> None:
    """DataLoader worker set-up: one OpenCV thread per worker (the workers are the parallelism)."""
    cv2.setNumThreads(1)


def build_dataset(sources: str, split: str, input_size: int, data_root: str, coco_images: str = "",
                  per_object: bool = False, seed: int = 0) -> ReferringDataset:
    """``sources``: comma-separated ``dataset:splitBy`` (refer toolkit, under ``data_root``) or ``*.jsonl``
    files; ``per_object``, ``seed``: see :class:`ReferringDataset`."""
    records: list[Record] = []
    for source in (s.strip() for s in sources.split(",") if s.strip()):
        if source.endswith(".jsonl"):
            records += load_jsonl(source)
        else:
            name, sep, split_by = source.partition(":")
            if not sep or not name or not split_by:
                raise ValueError(f"data source '{source}' must be 'dataset:splitBy' (e.g. refcoco:unc, "
                                 f"refcocog:umd) or a path ending in .jsonl")
            records += load_refer(data_root, name, split_by, split, coco_images or None)
    if not records:
        raise ValueError(f"no samples in '{sources}' (split '{split}')")
    return ReferringDataset(records, input_size, per_object, seed)


# ---------------------------------------------------------------------------------------- order
class ResumableSampler(DistributedSampler):
    """:class:`DistributedSampler` that can start part-way through an epoch.

    The permutation of epoch ``e`` is ``torch.randperm(n, generator seeded with seed + e)``, split
    across processes as ``DistributedSampler`` does, so it depends only on (seed, epoch, number of
    processes). :meth:`set_position` skips the samples this process already consumed.
    Works without ``torch.distributed`` (num_replicas=1, rank=0).
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int, shuffle: bool = True):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.start = 0

    def set_position(self, epoch: int, start: int) -> None:
        if not 0 <= start <= self.num_samples:
            raise ValueError(f"start {start} outside the epoch's {self.num_samples} samples")
        self.set_epoch(epoch)
        self.start = start

    def __iter__(self):
        # Each index carries its epoch (epoch * dataset size + index): the dataset can then draw
        # per epoch (ReferringDataset per object) in worker processes that never see set_epoch.
        offset = self.epoch * len(self.dataset)
        return iter([offset + i for i in list(super().__iter__())[self.start:]])

    def __len__(self) -> int:
        return self.num_samples - self.start
