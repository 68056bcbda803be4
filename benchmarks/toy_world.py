"""The paper's claim in miniature: a frozen toy CLIP plus an FPN trained only on referring phrases
localise action verbs that no referring phrase ever held.

After ``make build``::

    bash scripts/with_ros.sh .venv-kilted/bin/python benchmarks/toy_world.py --out runs/toy_world  # <= 30 min
    bash scripts/with_ros.sh .venv-kilted/bin/python benchmarks/toy_world.py --out /tmp/toy --quick  # check, ~20 s

(ROS is not needed: ``PYTHONPATH=. python benchmarks/toy_world.py ...`` works too.) Steps, all
in the toy world of ``affordance_clip_ros.training.toy_world``:

1. contrastive pre-training of a small open_clip ResNet CLIP (``RN-toy``) on image-caption
   pairs, some of which say what an object affords; it is saved as safetensors and frozen;
2. ``affordance-clip train`` of the FPN on JSONL referring phrases naming colours and the
   Seen kinds (ball, box, triangle) only, never a verb; the same recipe once more on a randomly
   initialised frozen CLIP of the same architecture (``random_weights``);
3. ``affordance-clip evaluate`` on an AGD20K-layout test set (GT = blurred masks of the objects
   affording the verb): Seen = verbs of the kinds referred to in FPN training, Unseen = verbs of
   kinds never referred to; compared with the training-free head on the same CLIP and a centred
   Gaussian (``centre_prior``).

A control asks every test image for another verb of its split: a method that scores as well
that way finds objects, not what they afford.

Writes ``OUT/results.json`` (``{"seen"|"unseen": {method: {"kld", "sim", "nss", "images"}}}``,
plus ``"run"``: settings, timings, the toy CLIP's zero-shot accuracy, the control and per-verb
figures), ``OUT/report.md`` (a table laid out like the paper's Table 1) and
``OUT/qualitative.png`` (image | GT | each method), with the data, weights and per-method
evaluations below ``OUT``.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import open_clip
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from affordance_clip_ros import cli
from affordance_clip_ros.benchmark import describe_cpu
from affordance_clip_ros.evaluation.agd20k import AGD20KTestSet
from affordance_clip_ros.evaluation.evaluate import evaluate
from affordance_clip_ros.model import AffordanceGrounder, GrounderConfig
from affordance_clip_ros.training.toy_clip import (TOY_CLIP_MODEL, ToyClipConfig, create_clip, pretrain_toy_clip,
                                                   save_clip, zero_shot_accuracy)
from affordance_clip_ros.training.toy_world import (SEEN_KINDS, VERBS, seen_verbs, unseen_verbs, write_agd20k,
                                                    write_referring_jsonl)

log = logging.getLogger("toy_world")
METHODS = ("fpn", "training_free", "centre_prior", "random_weights")
SPLITS = ("seen", "unseen")
METRICS = ("kld", "sim", "nss")
LOWER_IS_BETTER = {"kld"}


@dataclass(frozen=True)
class Scale:
    """How much of everything a run draws and trains."""

    clip_steps: int
    clip_batch: int
    refer_images: int
    fpn_epochs: int
    fpn_max_steps: int  # 0 = fpn_epochs over the data
    fpn_batch: int
    test_per_verb: int
    side: int = 128  # referring and test images, and the FPN's input size
    fpn_lr: float = 1e-3


FULL = Scale(clip_steps=600, clip_batch=128, refer_images=2000, fpn_epochs=3, fpn_max_steps=0, fpn_batch=32,
             test_per_verb=60)
QUICK = Scale(clip_steps=4, clip_batch=32, refer_images=16, fpn_epochs=1, fpn_max_steps=3, fpn_batch=8,
              test_per_verb=3)


class CentrePrior:
    """A centred isotropic Gaussian (sigma = a quarter of the shorter side), whatever the prompt."""

    def heatmaps(self, images, prompts):
        maps = []
        for image in images:
            h, w = image.shape[:2]
            y, x = np.mgrid[0:h, 0:w].astype(np.float32)
            sigma = 0.25 * min(h, w)
            maps.append(np.exp(-(((x - (w - 1) / 2) ** 2 + (y - (h - 1) / 2) ** 2) / (2 * sigma ** 2))))
        return maps


def run_cli(*args: str) -> None:
    """One ``affordance-clip`` command, in this process; a non-zero exit is an error."""
    log.info("affordance-clip %s", " ".join(args))
    code = cli.main(list(args))
    if code:
        raise RuntimeError(f"affordance-clip {args[0]} exited with {code}")


def train_fpn(clip_file: Path, refer: Path, out_dir: Path, scale: Scale, seed: int) -> Path:
    run_cli("train", "--clip-model", TOY_CLIP_MODEL, "--clip-pretrained", str(clip_file), "--train-data", str(refer),
            "--val-data", "", "--input-size", str(scale.side), "--batch-size", str(scale.fpn_batch),
            "--lr", str(scale.fpn_lr), "--epochs", str(scale.fpn_epochs), "--max-steps", str(scale.fpn_max_steps),
            "--lr-schedule", "cosine", "--num-workers", "0", "--device", "cpu", "--seed", str(seed),
            "--grid-samples", "0", "--log-every", "5", "--save-every", "100000", "--out-dir", str(out_dir))
    return out_dir / "fpn.safetensors"


def method_models(out: Path) -> dict[str, tuple[Path, Path | None]]:
    """CLIP weights and FPN checkpoint of each model-based method."""
    return {"fpn": (out / "toy_clip.safetensors", out / "fpn_toy" / "fpn.safetensors"),
            "training_free": (out / "toy_clip.safetensors", None),
            "random_weights": (out / "random_clip.safetensors", out / "fpn_random" / "fpn.safetensors")}


def build_grounder(out: Path, method: str, side: int) -> AffordanceGrounder:
    clip_file, fpn = method_models(out)[method]
    return AffordanceGrounder.from_config(GrounderConfig(
        clip_model=TOY_CLIP_MODEL, clip_pretrained=str(clip_file), fpn_checkpoint=str(fpn) if fpn else None,
        device="cpu", backend="torch", precision="fp32", input_size=side))


class OtherVerb:
    """A grounder asked, for each image, for the next verb of the image's split instead of its own: a
    method that scores as well this way localises objects, not what they afford."""

    def __init__(self, grounder: AffordanceGrounder):
        self.grounder = grounder
        self.swap = {}
        for verbs in (seen_verbs(), unseen_verbs()):
            self.swap |= {verb: verbs[(i + 1) % len(verbs)] for i, verb in enumerate(verbs)}

    def heatmaps(self, images, prompts):
        return self.grounder.heatmaps(images, [self.swap[p] for p in prompts])


def other_verb_control(out: Path, agd20k: Path, side: int) -> dict:
    """KLD / SIM / NSS of the CLIP-based methods when every image is asked for another verb."""
    control = {split: {} for split in SPLITS}
    for method in method_models(out):
        scorer = OtherVerb(build_grounder(out, method, side))
        for split in SPLITS:
            summary = evaluate(scorer, AGD20KTestSet(agd20k, split), num_examples=0, progress=False).summary
            control[split][method] = {m: summary[m] for m in METRICS}
    return control


def _metrics(summary: dict) -> dict:
    return {m: summary[m] for m in METRICS} | {"images": summary["n"]}


def evaluate_all(out: Path, agd20k: Path, side: int) -> tuple[dict, dict]:
    """{split: {method: metrics}} and the same per verb, {split: {method: {verb: metrics}}}."""
    results, per_verb = {split: {} for split in SPLITS}, {split: {} for split in SPLITS}
    for method, (clip_file, fpn) in method_models(out).items():
        for split in SPLITS:
            folder = out / "eval" / method / split
            args = ["evaluate", "--agd20k", str(agd20k), "--split", split, "--out", str(folder),
                    "--clip-model", TOY_CLIP_MODEL, "--clip-pretrained", str(clip_file), "--input-size", str(side),
                    "--device", "cpu", "--backend", "torch", "--precision", "fp32", "--examples", "0",
                    "--num-workers", "1"]
            run_cli(*args, *(["--fpn-checkpoint", str(fpn)] if fpn else []))
            evaluation = json.loads((folder / "results.json").read_text())
            results[split][method] = _metrics(evaluation["metrics"])
            per_verb[split][method] = {v: _metrics(s) for v, s in evaluation["per_affordance"].items()}
    for split in SPLITS:
        evaluation = evaluate(CentrePrior(), AGD20KTestSet(agd20k, split), num_examples=0, progress=False)
        results[split]["centre_prior"] = _metrics(evaluation.summary)
        per_verb[split]["centre_prior"] = {v: _metrics(s) for v, s in evaluation.per_affordance.items()}
    return ({split: {method: results[split][method] for method in METHODS} for split in SPLITS},
            {split: {method: per_verb[split][method] for method in METHODS} for split in SPLITS})


# ------------------------------------------------------------------------------------- report
def _cell(results: dict, split: str, method: str, metric: str) -> str:
    value = results[split][method][metric]
    column = [results[split][m][metric] for m in METHODS]
    best = min(column) if metric in LOWER_IS_BETTER else max(column)
    return f"**{value:.3f}**" if value == best else f"{value:.3f}"


def write_report(out: Path, results: dict, run: dict) -> Path:
    lines = ["# Toy world: AffordanceCLIP's claim in miniature", "",
             "| method | Seen KLD ↓ | Seen SIM ↑ | Seen NSS ↑ | Unseen KLD ↓ | Unseen SIM ↑ | Unseen NSS ↑ |",
             "|---|---|---|---|---|---|---|"]
    for method in METHODS:
        cells = [_cell(results, split, method, metric) for split in SPLITS for metric in METRICS]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    zs = run["toy_clip_zero_shot"]
    lines += ["", f"Seen verbs ({', '.join(run['seen_verbs'])}): kinds referred to in FPN training. "
              f"Unseen verbs ({', '.join(run['unseen_verbs'])}): kinds never referred to. "
              f"{run['images']['seen']} + {run['images']['unseen']} test images, best per column in bold.",
              "", f"Toy CLIP ({run['scale']['clip_steps']} steps): zero-shot accuracy on single-object images, "
              f"verb {zs['verb']:.2f}, kind {zs['kind']:.2f} (chance {1 / len(VERBS):.2f}); last loss "
              f"{run['toy_clip_last_loss']:.3f}. Random-init CLIP: verb {run['random_clip_zero_shot']['verb']:.2f}.",
              "", f"Seed {run['seed']}, {run['seconds']['total']:.0f} s ({run['seconds']['cpu']:.0f} s of CPU time) on "
              f"{run['machine']} "
              f"(torch {run['versions']['torch']}, open_clip {run['versions']['open_clip']}, "
              f"{run['threads']} threads)."]
    lines += ["", "Control: the same images, each asked for another verb of its split (roll -> stack -> cut -> roll, "
              "wear -> throw -> hang -> wear). A method that scores as well this way finds objects, not what they "
              "afford.", "",
              "| method, other verb | Seen KLD ↓ | Seen SIM ↑ | Seen NSS ↑ "
              "| Unseen KLD ↓ | Unseen SIM ↑ | Unseen NSS ↑ |",
              "|---|---|---|---|---|---|---|"]
    control = run["other_verb_control"]
    for method in control["seen"]:
        lines.append(f"| {method} | " + " | ".join(f"{control[split][method][metric]:.3f}" for split in SPLITS
                                                   for metric in METRICS) + " |")
    lines += ["", "![image | GT | each method](qualitative.png)", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def figure_samples(agd20k: Path) -> list:
    """The first test image of every verb, Seen then Unseen."""
    samples = []
    for split in SPLITS:
        test_set = AGD20KTestSet(agd20k, split)
        first = {}
        for sample in test_set.samples:
            first.setdefault(sample.affordance, sample)
        samples += [(split, first[verb]) for verb in (seen_verbs() if split == "seen" else unseen_verbs())]
    return samples


def write_figure(out: Path, agd20k: Path, side: int) -> Path:
    samples = figure_samples(agd20k)
    images = [cv2.cvtColor(cv2.imread(str(s.image)), cv2.COLOR_BGR2RGB) for _, s in samples]
    gts = [cv2.imread(str(s.gt), cv2.IMREAD_GRAYSCALE) for _, s in samples]
    prompts = [s.prompt for _, s in samples]
    maps = {method: build_grounder(out, method, side).heatmaps(images, prompts) for method in method_models(out)}
    maps["centre_prior"] = CentrePrior().heatmaps(images, prompts)
    columns = ["image", "GT"] + list(METHODS)
    figure = Figure(figsize=(1.3 * len(columns), 1.35 * len(samples)), dpi=72)
    for row, ((split, sample), image, gt) in enumerate(zip(samples, images, gts)):
        panels = [image, gt] + [maps[m][row] for m in METHODS]
        for col, (name, panel) in enumerate(zip(columns, panels)):
            ax = figure.add_subplot(len(samples), len(columns), row * len(columns) + col + 1)
            ax.imshow(image)
            if col:  # min-max scaled, as the metrics see it
                low, high = float(panel.min()), float(panel.max())
                ax.imshow((panel - low) / (high - low + 1e-12), cmap="jet", alpha=0.55, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name, fontsize=9)
            if col == 0:
                ax.set_ylabel(f"{split}: \"{sample.prompt}\"", fontsize=8)
    figure.tight_layout(pad=0.3)
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    path = out / "qualitative.png"
    # 256 colours: a third of the size of the full-colour PNG, indistinguishable at this size
    Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3]).quantize(256).save(path, optimize=True)
    return path


# ------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output folder (created)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the world, the CLIP and the FPN (default 0)")
    parser.add_argument("--quick", action="store_true", help="a pipeline check of about 20 s; the numbers mean nothing")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: on two cores shared with other work, OpenMP threads "
                             "waiting for a busy core made two threads slower than one)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    scale = QUICK if args.quick else FULL
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        parser.error(f"--out {out} is not empty: choose a new folder (a run never mixes with an earlier one)")
    out.mkdir(parents=True, exist_ok=True)
    seconds, start = {}, time.perf_counter()

    def lap(name: str, since: float) -> float:
        seconds[name] = time.perf_counter() - since
        log.info("%s: %.0f s", name, seconds[name])
        return time.perf_counter()

    t = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    refer = write_referring_jsonl(out / "data" / "refer", scale.refer_images, rng, scale.side, SEEN_KINDS)
    counts = write_agd20k(out / "data", scale.test_per_verb, rng, scale.side)
    t = lap("data", t)

    clip_config = ToyClipConfig(steps=scale.clip_steps, batch_size=scale.clip_batch)
    toy_clip, losses = pretrain_toy_clip(clip_config, seed=args.seed)
    save_clip(toy_clip, out / "toy_clip.safetensors")
    random_clip = create_clip(TOY_CLIP_MODEL, seed=args.seed + 1000).eval()
    save_clip(random_clip, out / "random_clip.safetensors")
    zero_shot = zero_shot_accuracy(toy_clip, seed=args.seed + 1)
    random_zero_shot = zero_shot_accuracy(random_clip, seed=args.seed + 1)
    t = lap("clip_pretraining", t)

    train_fpn(out / "toy_clip.safetensors", refer, out / "fpn_toy", scale, args.seed)
    train_fpn(out / "random_clip.safetensors", refer, out / "fpn_random", scale, args.seed)
    t = lap("fpn_training", t)

    agd20k = out / "data" / "AGD20K"
    results, per_verb = evaluate_all(out, agd20k, scale.side)
    control = other_verb_control(out, agd20k, scale.side)
    t = lap("evaluation", t)
    write_figure(out, agd20k, scale.side)
    lap("figure", t)
    seconds["total"] = time.perf_counter() - start
    seconds["cpu"] = time.process_time()  # this process's CPU time: the wall time on an idle core

    run = {"seed": args.seed, "quick": args.quick, "scale": asdict(scale), "clip": asdict(clip_config),
           "seen_verbs": seen_verbs(), "unseen_verbs": unseen_verbs(), "verbs": {v: list(k) for v, k in VERBS.items()},
           "referred_kinds": list(SEEN_KINDS), "images": counts, "toy_clip_zero_shot": zero_shot,
           "random_clip_zero_shot": random_zero_shot, "other_verb_control": control,
           "per_verb": per_verb, "toy_clip_last_loss": float(np.mean(losses[-10:])),
           "toy_clip_losses": losses, "seconds": seconds, "machine": describe_cpu(),
           "load_average_at_end": os.getloadavg(),
           "threads": torch.get_num_threads(),
           "versions": {"torch": torch.__version__, "open_clip": open_clip.__version__,
                        "python": platform.python_version()}}
    if not all(math.isfinite(results[s][m][k]) for s in SPLITS for m in METHODS for k in METRICS):
        log.warning("some metrics are not finite: %s", results)
    (out / "results.json").write_text(json.dumps({**results, "run": run}, indent=2))
    write_report(out, results, run)
    log.info("wrote %s, %s and %s in %.0f s", out / "results.json", out / "report.md", out / "qualitative.png",
             seconds["total"])
    print((out / "report.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
