"""`affordance-clip train` and `affordance-clip synth-refcoco`."""
from __future__ import annotations

import argparse
import logging

from .config import TrainConfig, field_help

log = logging.getLogger(__name__)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def config_overrides(args: argparse.Namespace) -> dict:
    """The options given on the command line (the others are absent from the namespace)."""
    return {name: getattr(args, name) for name in field_help() if hasattr(args, name)}


def run_train(args: argparse.Namespace) -> int:
    from .train import resume_config, train  # torch-heavy imports only when training

    overrides = config_overrides(args)
    config = resume_config(args.resume, overrides) if args.resume else TrainConfig().replace(**overrides)
    result = train(config, resume=args.resume)
    val = result["val"]
    summary = f"; validation mIoU {val['mIoU']:.4f}, oIoU {val['oIoU']:.4f} on {val['samples']} samples" if val else ""
    log.info("trained %d steps; FPN checkpoint %s%s", result["step"], result["fpn"], summary)
    return 0


def run_synth_refcoco(args: argparse.Namespace) -> int:
    from .synthetic import write_synthetic_refcoco

    counts = write_synthetic_refcoco(args.out_dir, args.num_images, args.seed)
    log.info("wrote %d images to %s; sentences per split: %s. Train with: affordance-clip train --data-root %s "
             "--train-data refcoco:unc --val-data refcoco:unc", args.num_images, args.out_dir, counts, args.out_dir)
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="train the FPN on RefCOCO/+/g (paper recipe by default)",
        description="Train the AffordanceCLIP FPN on referring segmentation with CLIP frozen. The defaults are the "
                    "paper's recipe (RefCOCO + RefCOCO+ + RefCOCOg train, 1 epoch, batch 32, Adam 1e-4, 416 px). "
                    "Run under torchrun for several GPUs or nodes.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--resume", default=None, metavar="RUN_DIR",
                        help="continue the run in RUN_DIR (or its trainer_state.pt) with its saved configuration and "
                             "data order; only --device, --num-workers, the log/save/validation intervals, "
                             "--max-steps, --epochs and the data paths may be given again")
    group = parser.add_argument_group("training options (saved in every checkpoint)")
    for name, (kind, default, text) in field_help().items():
        text = f"{text} (default: {default})"
        if kind is bool:
            group.add_argument(_flag(name), action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                               help=text)
        else:
            group.add_argument(_flag(name), type=kind, default=argparse.SUPPRESS, help=text,
                               metavar=name.upper())
    parser.set_defaults(func=run_train)

    synth = subparsers.add_parser(
        "synth-refcoco", help="write a small synthetic dataset in the RefCOCO (refer toolkit) layout",
        description="Coloured shapes referred to by phrases such as 'the red circle' and 'the blue square on the "
                    "left', written as refcoco/refs(unc).p, refcoco/instances.json and "
                    "images/mscoco/images/train2014/ (80/10/10 %% train/val/test).")
    synth.add_argument("out_dir", help="output folder (becomes --data-root for training)")
    synth.add_argument("--num-images", type=int, default=200, help="images to draw (default 200)")
    synth.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    synth.set_defaults(func=run_synth_refcoco)
