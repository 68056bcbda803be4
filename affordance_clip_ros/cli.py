"""The `affordance-clip` command: infer, bag, params, train, evaluate, benchmark, export, synth-refcoco."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from .model import CheckpointError, WeightsNotFoundError

# Each module defines register(subparsers), which adds its subcommand with func=run(args) -> int.
COMMAND_MODULES = (
    "affordance_clip_ros.infer",
    "affordance_clip_ros.bag.command",
    "affordance_clip_ros.param_count",
    "affordance_clip_ros.training.command",
    "affordance_clip_ros.evaluation.command",
    "affordance_clip_ros.benchmark",
    "affordance_clip_ros.export",
)
log = logging.getLogger("affordance_clip_ros")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="affordance-clip", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Our messages at INFO; other libraries (open_clip logs its set-up steps at INFO) at WARNING.
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return int(args.func(args) or 0)
    except (WeightsNotFoundError, CheckpointError, FileNotFoundError, ValueError) as e:
        if args.verbose:
            raise
        log.error("%s", e)
        return 2


if __name__ == "__main__":
    sys.exit(main())
