#!/usr/bin/env python3
"""`make infer-demo`: run `affordance-clip infer` on the real photos that ship with scikit-image.

coffee (cup, saucer, spoon) with "drink with" and "hold"; the left image of the Middlebury
"Motorcycle" stereo pair with "ride". Uses the real RN101 with OpenAI weights when they are in
the cache, otherwise random weights (the maps are then meaningless, but every output is written).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import cv2
import skimage.data

from affordance_clip_ros.cli import main as cli_main
from affordance_clip_ros.model.weights import cached_weights_file

log = logging.getLogger("infer_demo")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo_output", help="output folder")
    parser.add_argument("--clip-pretrained", default=None, help="CLIP weights (default: openai when cached, else none)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    pretrained = args.clip_pretrained or ("openai" if cached_weights_file("RN101", "openai") else "none")
    if pretrained == "none":
        log.warning("No OpenAI RN101 weights in the cache: running with RANDOM weights. See docs/install.md, "
                    "'CLIP weights', to get real heatmaps.")
    out = Path(args.out)
    inputs = out / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    photos = {"coffee": (skimage.data.coffee(), ["drink with", "hold"]),
              "motorcycle": (skimage.data.stereo_motorcycle()[0], ["ride"])}
    for name, (rgb, prompts) in photos.items():
        path = inputs / f"{name}.png"
        cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        argv = ["infer", str(path), "--out", str(out / name), "--clip-pretrained", pretrained]
        for prompt in prompts:
            argv += ["--prompt", prompt]
        if cli_main(argv) != 0:
            return 1
    log.info("Overlays, heatmaps and peaks.json written under %s/", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
