"""Reader for RefCOCO, RefCOCO+ and RefCOCOg in the refer toolkit's layout (github.com/lichengunc/refer).

One record per referring sentence, tagged with its object (``dataset(splitBy):ref_id``); its mask
is the referred COCO annotation's segmentation (polygons or RLE) decoded with pycocotools, as
``REFER.getMask`` does. Annotations are drawn on the pixels as stored, so images are read without
their EXIF orientation; an image file whose size differs from the one in ``instances.json`` is
left out, with a warning that counts them.
"""
from __future__ import annotations

import json
import logging
import os
import pickle
from pathlib import Path

from ..io import stored_size
from .records import CocoSegmentation, Record, check_exists

log = logging.getLogger(__name__)

DEFAULT_IMAGE_DIR = Path("images") / "mscoco" / "images" / "train2014"
LAYOUT = """\
  <data_root>/                              (--data-root; the refer toolkit's data/ folder)
    refcoco/   refs(unc).p   instances.json
    refcoco+/  refs(unc).p   instances.json
    refcocog/  refs(umd).p   instances.json   (refs(google).p for the Google split)
    images/mscoco/images/train2014/COCO_train2014_000000000009.jpg ...
                                            (or any folder given with --coco-images)
  The refs and instances come from the refer toolkit (github.com/lichengunc/refer, data/README);
  the images are COCO train2014 (cocodataset.org, train2014.zip)."""


_PLAIN_TYPES = {"set", "frozenset", "list", "dict", "tuple", "int", "float", "str", "bytes", "bool"}


class _PlainUnpickler(pickle.Unpickler):
    """refs(*.p) hold only lists, dicts, strings and numbers: refuse anything that would run code."""

    def find_class(self, module: str, name: str):
        if module == "builtins" and name in _PLAIN_TYPES:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refs pickle refers to {module}.{name}; only plain data is accepted")


def read_refs(path: Path) -> list[dict]:
    """The refer toolkit's refs pickle (written by Python 2; strings decoded as UTF-8, else Latin-1)."""
    for encoding in ("utf-8", "latin1"):
        try:
            with open(path, "rb") as handle:
                return _PlainUnpickler(handle, encoding=encoding).load()
        except UnicodeDecodeError:
            continue
    raise ValueError(f"cannot decode the strings of '{path}'")


def load_refer(data_root: str | os.PathLike, dataset: str, split_by: str, split: str,
               image_dir: str | os.PathLike | None = None) -> list[Record]:
    """Records of one split of one refer dataset (e.g. ``refcocog``, ``umd``, ``train``)."""
    root = Path(data_root)
    folder = root / dataset
    refs_path, instances_path = folder / f"refs({split_by}).p", folder / "instances.json"
    images = Path(image_dir) if image_dir else root / DEFAULT_IMAGE_DIR
    check_exists(root, "refer data folder", LAYOUT)
    check_exists(folder, f"{dataset} folder", LAYOUT)
    check_exists(refs_path, f"{dataset} refs file", LAYOUT)
    check_exists(instances_path, f"{dataset} instances file", LAYOUT)
    check_exists(images, "COCO train2014 image folder", LAYOUT)

    refs = read_refs(refs_path)
    with open(instances_path) as handle:
        instances = json.load(handle)
    image_files = {img["id"]: img["file_name"] for img in instances["images"]}
    image_sizes = {img["id"]: (img["height"], img["width"]) for img in instances["images"]}
    segmentations = {ann["id"]: ann["segmentation"] for ann in instances["annotations"]}

    chosen = [ref for ref in refs if ref["split"] == split]
    if not chosen:
        splits = sorted({ref["split"] for ref in refs})
        raise ValueError(f"{dataset} ({split_by}) has no split '{split}'; its splits are {splits}")
    records, annotated_sizes = [], {}
    for ref in chosen:
        path = str(images / image_files[ref["image_id"]])
        mask = CocoSegmentation(segmentations[ref["ann_id"]])
        for sentence in ref["sentences"]:
            records.append(Record(path, sentence.get("sent") or sentence["raw"], mask,
                                  f"{dataset}({split_by}):{ref['ref_id']}"))
        annotated_sizes[path] = image_sizes[ref["image_id"]]
    missing = sorted(p for p in annotated_sizes if not os.path.exists(p))
    if missing:
        raise FileNotFoundError(f"{len(missing)} image(s) of {dataset} {split} are missing, e.g. '{missing[0]}'. "
                                f"Expected layout:\n{LAYOUT}")
    records = without_misfit_images(records, annotated_sizes, f"{dataset} ({split_by}) {split}")
    log.info("%s (%s) %s: %d sentences about %d objects", dataset, split_by, split, len(records),
             len({record.referent for record in records}))
    return records


def without_misfit_images(records: list[Record], annotated_sizes: dict[str, tuple[int, int]],
                          what: str) -> list[Record]:
    """``records`` less those whose image file is not the (height, width) its annotation was drawn
    on (a resized or replaced copy: the mask would not line up), with a warning that counts them.
    Checked here, from the file headers, so that a bad file cannot stop a run part-way through."""
    misfits = {}
    for path, size in annotated_sizes.items():
        stored = stored_size(path)
        if stored != size:
            misfits[path] = (stored, size)
    if not misfits:
        return records
    kept = [record for record in records if record.image not in misfits]
    path, ((height, width), (annotated_height, annotated_width)) = min(misfits.items())
    log.warning("%s: %d image file(s) differ in size from instances.json, e.g. '%s' is %dx%d pixels but annotated "
                "at %dx%d; their %d sentence(s) are left out (the masks would not line up). Replace them with the "
                "original COCO train2014 files to train on them.", what, len(misfits), path, width, height,
                annotated_width, annotated_height, len(records) - len(kept))
    return kept
