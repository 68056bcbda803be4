"""`affordance-clip infer`: heatmaps, overlays and peaks for image files or folders."""
from __future__ import annotations

import argparse
import json
import logging
import re
from pathlib import Path
from typing import Iterable

import cv2
import numpy as np
from tqdm import tqdm

from .cli_common import add_model_arguments, add_peak_arguments, grounder_from_args, peak_settings
from .io import read_rgb
from .model import AffordanceGrounder
from .visualization import colorize, draw_overlay

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
log = logging.getLogger(__name__)


def collect_images(paths: Iterable[str]) -> list[Path]:
    """Files as given, folders expanded to their images (sorted, not recursive)."""
    images = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            images += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            images.append(path)
        else:
            raise FileNotFoundError(f"'{raw}' is neither an image file nor a folder")
    if not images:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {list(paths)}")
    return images


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower() or "prompt"


def write_outputs(grounder: AffordanceGrounder, image: np.ndarray, name: str, prompts: list[str], out: Path,
                  alpha: float = 0.5) -> dict:
    """Run one image; write <name>_<prompt>_heatmap.npy/.png and _overlay.png; return its peaks record."""
    record = {"image": name, "height": image.shape[0], "width": image.shape[1], "mode": grounder.mode, "prompts": {}}
    for pred in grounder.predict(image, prompts):
        stem = out / f"{name}_{slug(pred.prompt)}"
        np.save(f"{stem}_heatmap.npy", pred.heatmap)
        cv2.imwrite(f"{stem}_heatmap.png", colorize(pred.heatmap))
        cv2.imwrite(f"{stem}_overlay.png", draw_overlay(image, pred.heatmap, pred.peaks, alpha, pred.prompt))
        record["prompts"][pred.prompt] = [{"u": p.u, "v": p.v, "score": round(p.score, 6)} for p in pred.peaks]
    return record


def run(args: argparse.Namespace) -> int:
    images = collect_images(args.images)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    grounder = grounder_from_args(args, **peak_settings(args))
    records = []
    for path in tqdm(images, desc="infer", unit="img", disable=len(images) < 2):
        # Photos upright as viewers show them (EXIF orientation applied): CLIP sees objects the right
        # way up, and the heatmaps, overlays and peaks are all computed on and sized like this array.
        image = read_rgb(path, apply_exif_orientation=True)
        records.append(write_outputs(grounder, image, path.stem, args.prompts, out, args.alpha))
    (out / "peaks.json").write_text(json.dumps(records, indent=2))
    log.info("wrote %d image(s) x %d prompt(s) to %s", len(images), len(args.prompts), out)
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("infer", help="heatmaps, overlays and peaks for images",
                                   description="Write per image and prompt a heatmap (.npy and colour .png), "
                                               "an overlay .png with the peaks drawn, and peaks.json.")
    parser.add_argument("images", nargs="+", help="image files or folders of images")
    parser.add_argument("--prompt", "-p", action="append", dest="prompts", required=True,
                        help="action phrase, e.g. 'cut with' (repeat for several)")
    parser.add_argument("--out", "-o", required=True, help="output folder")
    add_peak_arguments(parser)
    add_model_arguments(parser)
    parser.set_defaults(func=run)
