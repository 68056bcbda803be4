"""What an evaluation writes: results.json, report.md beside the paper's tables, a figure grid PNG."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..io import read_rgb
from ..model.grounder import MODE_FPN
from .agd20k import EXPECTED_IMAGES, SPLITS, read_gt
from .evaluate import EvaluationResult, Example

# AffordanceCLIP, paper Table 1 (Test A = Seen, Test B = Unseen).
PAPER_TABLE1 = {"seen": {"kld": 1.628, "sim": 0.335, "nss": 0.791},
                "unseen": {"kld": 1.812, "sim": 0.301, "nss": 0.760}}
# Paper Table 3: FPN levels fused ({F1^O}, {F1^O, F2^O}, {F1^O, F2^O, F3^O}).
PAPER_TABLE3 = {1: {"seen": {"kld": 1.917, "sim": 0.322, "nss": 0.665},
                    "unseen": {"kld": 2.171, "sim": 0.278, "nss": 0.586}},
                2: {"seen": {"kld": 1.892, "sim": 0.329, "nss": 0.726},
                    "unseen": {"kld": 2.038, "sim": 0.297, "nss": 0.696}},
                3: PAPER_TABLE1}
TABLE3_LABELS = {1: "{F1^O}", 2: "{F1^O, F2^O}", 3: "{F1^O, F2^O, F3^O}"}
RESULTS_JSON, REPORT_MD, FIGURE_PNG = "results.json", "report.md", "qualitative.png"
PAPER_SETTING = {"clip_model": "RN101", "input_size": 416, "precision": "fp32"}  # paper Sec. 4.3


def _finite_or_none(value):
    """JSON has no NaN: non-finite floats become null (the counts say why)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_none(v) for v in value]
    return value


def paper_differences(result: EvaluationResult, run: dict) -> list[str]:
    """How the run departs from the setting of the paper's tables; empty when it is comparable:
    every image of the split, a trained FPN, RN101 with pretrained weights at 416 px, and an image
    path that really ran in fp32 (``run["precision"]`` is the resolved one, never auto)."""
    split, images = result.split, len(result.records)
    differences = []
    if images != EXPECTED_IMAGES[split]:
        differences.append(f"{images} of the split's {EXPECTED_IMAGES[split]} images (--limit or an incomplete "
                           f"dataset)")
    if run.get("mode") != MODE_FPN:
        differences.append("the training-free head, not a trained FPN (--fpn-checkpoint)")
    elif run.get("levels") != 3:
        differences.append(f"an FPN fusing {run.get('levels')} level(s); Table 1's fuses 3 (Table 3 ablates fewer)")
    if run.get("clip_pretrained") == "none":
        differences.append("random CLIP weights (--clip-pretrained none): the numbers only test the pipeline")
    differences += [f"{name} {run.get(name)}, the paper's is {value}" for name, value in PAPER_SETTING.items()
                    if run.get(name) != value]
    return differences


def results_dict(result: EvaluationResult, run: dict) -> dict:
    differences = paper_differences(result, run)
    return _finite_or_none({
        "split": result.split, "split_name": SPLITS[result.split], "images": len(result.records),
        "expected_images": EXPECTED_IMAGES[result.split],
        "comparable_with_paper": not differences, "differences_from_paper": differences,
        "run": run, "metrics": result.summary, "paper_table1": PAPER_TABLE1[result.split],
        "paper_table3": {str(k): v[result.split] for k, v in PAPER_TABLE3.items()},
        "degenerate": result.degenerate, "per_affordance": result.per_affordance, "per_object": result.per_object,
        "seconds": result.seconds, "images_per_second": result.images_per_second, "per_image": result.records,
    })


def write_json(result: EvaluationResult, run: dict, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.write_text(json.dumps(results_dict(result, run), indent=2, allow_nan=False))
    return path


def _fmt(value: float | None) -> str:
    return "NaN" if value is None or not math.isfinite(value) else f"{value:.3f}"


def _metric_row(label: str, scores: dict) -> str:
    return f"| {label} | {_fmt(scores['kld'])} | {_fmt(scores['sim'])} | {_fmt(scores['nss'])} |"


def _group_table(title: str, groups: dict[str, dict]) -> list[str]:
    lines = [f"### {title}", "", "| name | images | KLD ↓ | SIM ↑ | NSS ↑ | NaN NSS |",
             "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {name} | {s['n']} | {_fmt(s['kld'])} | {_fmt(s['sim'])} | {_fmt(s['nss'])} | {s['nss_nan']} |"
              for name, s in groups.items()]
    return lines + [""]


def _nss_note(s: dict) -> str:
    if not s["nss_nan"]:
        return "No image has a NaN NSS, so the NSS above is the reference's plain mean."
    return (f"NSS above is the mean over the {s['n'] - s['nss_nan']} images with a finite NSS; {s['nss_nan']} "
            f"image(s) have a NaN NSS. The reference's plain mean over all images gives "
            f"{_fmt(s['nss_reference'])}; counting NaN as 0 (chance level) gives {_fmt(s['nss_nan_as_zero'])}.")


def markdown(result: EvaluationResult, run: dict, figure: str | None = FIGURE_PNG) -> str:
    split, s = result.split, result.summary
    name = f"{SPLITS[split]} (Test {'A' if split == 'seen' else 'B'})"
    ours = f"This run ({run.get('mode', '?')}, levels {run.get('levels') or '-'})"
    lines = [f"# AGD20K {name}: AffordanceCLIP evaluation", "",
             f"{s['n']} images scored (the paper's split has {EXPECTED_IMAGES[split]}); model "
             f"`{run.get('clip_model')}` / `{run.get('clip_pretrained')}`, FPN checkpoint "
             f"`{run.get('fpn_checkpoint') or 'none (training-free head)'}`, input {run.get('input_size')} px, "
             f"{run.get('backend')} {run.get('precision')}, {result.seconds:.1f} s "
             f"({result.images_per_second:.2f} images/s on {run.get('device')}).", ""]
    differences = paper_differences(result, run)
    if differences:
        lines += ["> **Not comparable with the paper:** " + "; ".join(differences) + ".", ""]
    lines += ["## Results beside the paper (Table 1)", "",
              "| method | KLD ↓ | SIM ↑ | NSS ↑ |", "|---|---:|---:|---:|",
              _metric_row("AffordanceCLIP, paper Table 1", PAPER_TABLE1[split]), _metric_row(ours, s), "",
              "## FPN levels ablation (paper Table 3)", "",
              "| FPN levels | KLD ↓ | SIM ↑ | NSS ↑ |", "|---|---:|---:|---:|"]
    for levels, row in PAPER_TABLE3.items():
        lines.append(_metric_row(f"paper, {levels}: {TABLE3_LABELS[levels]}", row[split]))
        if run.get("levels") == levels:
            lines.append(_metric_row(f"**this run, {levels}**", s))
    lines += ["", "## Degenerate images", "",
              "Handled as the reference protocol does; none is dropped:", "",
              "| kind | images | effect |", "|---|---:|---|",
              f"| empty GT (all zero) | {result.degenerate['empty_gt']['count']} | scores KLD 0, SIM 0, NSS 0; "
              f"counted in the means |",
              f"| flat GT (constant, not zero) | {result.degenerate['flat_gt']['count']} | no NSS fixation: NSS 0 |",
              f"| constant prediction | {result.degenerate['constant_pred']['count']} | NSS is NaN (0/0) in the "
              f"reference |", "",
              _nss_note(s), ""]
    if figure:
        lines += ["## Qualitative examples", "", "Image and prompt | ground truth | prediction (cf. paper Fig. 3)",
                  "", f"![qualitative examples]({figure})", ""]
    lines += _group_table("Per affordance", result.per_affordance)
    lines += _group_table("Per object", result.per_object)
    return "\n".join(lines)


def write_markdown(result: EvaluationResult, run: dict, path: str | os.PathLike,
                   figure: str | None = FIGURE_PNG) -> Path:
    path = Path(path)
    path.write_text(markdown(result, run, figure))
    return path


def _overlay(ax, image: np.ndarray, heatmap: np.ndarray, title: str) -> None:
    ax.imshow(image)
    ax.imshow(heatmap, cmap="jet", alpha=0.5, vmin=0.0, vmax=1.0,
              extent=(-0.5, image.shape[1] - 0.5, image.shape[0] - 0.5, -0.5))
    ax.set_title(title, fontsize=9)


def write_figure(examples: list[Example], path: str | os.PathLike) -> Path | None:
    """Grid with one row per example: image with its prompt | ground truth | prediction (Agg, no display)."""
    if not examples:
        return None
    figure = Figure(figsize=(9, 3 * len(examples)), dpi=100)  # whole inches: the same pixels with every matplotlib
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(examples), 3, squeeze=False)
    for row, example in zip(axes, examples):
        image, gt = read_rgb(example.sample.image), read_gt(example.sample.gt)
        row[0].imshow(image)
        row[0].set_title(f'"{example.sample.prompt}" ({example.sample.object})', fontsize=9)
        _overlay(row[1], image, gt / 255.0, "ground truth")
        s = example.scores
        _overlay(row[2], image, example.prediction,
                 f"prediction KLD {_fmt(s['kld'])} SIM {_fmt(s['sim'])} NSS {_fmt(s['nss'])}")
        for ax in row:
            ax.set_axis_off()
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path)
    return path
