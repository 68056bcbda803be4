"""`affordance-clip evaluate`: KLD / SIM / NSS on an AGD20K test split, with a report beside the paper.

Reproduce the paper's Table 1 (one FPN checkpoint trained with `affordance-clip train`)::

    affordance-clip evaluate --agd20k /data/AGD20K --split seen --fpn-checkpoint fpn.safetensors --out eval/seen
    affordance-clip evaluate --agd20k /data/AGD20K --split unseen --fpn-checkpoint fpn.safetensors --out eval/unseen

The image path runs in fp32 unless --precision says otherwise; results.json records the backend and
precision that really ran, and ``comparable_with_paper`` is true only for the paper's setting.
"""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from ..cli_common import add_model_arguments

log = logging.getLogger(__name__)


def checkpoint_levels(path: str | None, expected: int | None) -> int | None:
    """The FPN level count of a checkpoint (None without one); ValueError if it is not ``expected``."""
    if path is None:
        if expected is not None:
            raise ValueError("--levels checks a trained FPN's level count, but no --fpn-checkpoint was given. "
                             f"Train one with `affordance-clip train --levels {expected}` and pass it.")
        return None
    from ..model import read_metadata

    levels = int(read_metadata(path)["fpn"]["levels"])
    if expected is not None and levels != expected:
        raise ValueError(f"--levels {expected} asked, but FPN checkpoint '{path}' fuses {levels} level(s). "
                         f"Pass the checkpoint trained with `affordance-clip train --levels {expected}`, "
                         f"or --levels {levels}.")
    return levels


def run_info(args: argparse.Namespace, grounder, test_set, levels: int | None) -> dict:
    """What results.json and report.md say about the run."""
    config = grounder.config
    return {"arguments": {k: v for k, v in vars(args).items() if k != "func"}, "agd20k": str(args.agd20k),
            "testset": str(test_set.testset), "mode": grounder.mode, "levels": levels,
            "clip_model": config.clip_model, "clip_pretrained": config.clip_pretrained,
            "fpn_checkpoint": config.fpn_checkpoint, "input_size": config.input_size, "backend": grounder.backend,
            "precision": grounder.image_path_precision,
            "prompt_templates": list(config.prompt_templates), "device": str(grounder.device),
            "batch_size": args.batch_size, "limit": args.limit, "skipped_without_gt": len(test_set.skipped)}


def log_summary(result) -> None:
    from .report import PAPER_TABLE1

    s, paper = result.summary, PAPER_TABLE1[result.split]
    log.info("AGD20K %s, %d images: KLD %.3f  SIM %.3f  NSS %.3f (paper: KLD %.3f  SIM %.3f  NSS %.3f)",
             result.split, s["n"], s["kld"], s["sim"], s["nss"], paper["kld"], paper["sim"], paper["nss"])
    degenerate = {kind: v["count"] for kind, v in result.degenerate.items() if v["count"]}
    if degenerate:
        log.info("degenerate images (scored as the reference does, see report.md): %s", degenerate)
    if s["nss_nan"]:
        log.warning("%d image(s) have a NaN NSS (constant prediction): NSS %.3f is the mean over the %d finite "
                    "values; the reference's plain mean would be NaN, NaN counted as 0 gives %.3f", s["nss_nan"],
                    s["nss"], s["n"] - s["nss_nan"], s["nss_nan_as_zero"])


def run(args: argparse.Namespace) -> int:
    from ..cli_common import grounder_from_args
    from .agd20k import AGD20KTestSet
    from .evaluate import evaluate
    from .report import FIGURE_PNG, REPORT_MD, RESULTS_JSON, write_figure, write_json, write_markdown

    levels = checkpoint_levels(args.fpn_checkpoint, args.levels)
    test_set = AGD20KTestSet(args.agd20k, args.split)
    out = Path(args.out or f"eval-agd20k-{test_set.split}")
    out.mkdir(parents=True, exist_ok=True)
    log.info("AGD20K %s: %d images with GT in %s (%d without GT skipped)", test_set.split, len(test_set),
             test_set.testset, len(test_set.skipped))
    grounder = grounder_from_args(args)
    if grounder.mode != "fpn":
        log.warning("no --fpn-checkpoint: evaluating the training-free dense CLIP head, not the paper's model")
    log.info("image path: %s %s on %s", grounder.backend, grounder.image_path_precision, grounder.device)
    result = evaluate(grounder, test_set, batch_size=args.batch_size, num_workers=args.num_workers,
                      limit=args.limit, num_examples=args.examples)
    info = run_info(args, grounder, test_set, levels)
    figure = write_figure(result.examples, out / FIGURE_PNG)
    write_json(result, info, out / RESULTS_JSON)
    write_markdown(result, info, out / REPORT_MD, figure.name if figure else None)
    log_summary(result)
    log.info("%.1f s, %.2f images/s; wrote %s, %s%s in %s", result.seconds, result.images_per_second, RESULTS_JSON,
             REPORT_MD, f" and {FIGURE_PNG}" if figure else "", out)
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="KLD / SIM / NSS on an AGD20K test split (paper Table 1)",
        description="Score the grounder on AGD20K Seen (Test A) or Unseen (Test B) exactly as LOCATE's protocol "
                    "does, and write results.json (with per-image scores), report.md beside the paper's "
                    "Table 1 and Table 3 rows, and a qualitative figure.")
    parser.add_argument("--agd20k", required=True, metavar="ROOT",
                        help="the AGD20K folder (holding Seen/ and Unseen/), its parent, or AGD20K/Seen itself")
    parser.add_argument("--split", required=True, type=str.lower, choices=["seen", "unseen"],
                        help="seen = Test A (1675 images), unseen = Test B (540 images)")
    parser.add_argument("--levels", type=int, choices=[1, 2, 3], default=None,
                        help="check that --fpn-checkpoint fuses this many levels (paper Table 3) and report it")
    parser.add_argument("--out", default=None, help="output folder (default: eval-agd20k-<split>)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per model call (default 16)")
    parser.add_argument("--limit", type=int, default=None,
                        help="score only N images spread evenly over the split (quick check; not comparable)")
    parser.add_argument("--num-workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="threads decoding images and scoring predictions; 0 = the main thread "
                             "(default: min(4, CPUs))")
    parser.add_argument("--examples", type=int, default=8,
                        help="rows of the qualitative figure, 0 for none (default 8)")
    # fp32 by default: the paper's numbers are fp32, and auto would pick int8 ONNX Runtime on a CPU.
    add_model_arguments(parser, precision="fp32")
    parser.set_defaults(func=run)
