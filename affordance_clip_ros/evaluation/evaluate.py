"""Run a grounder over an AGD20K split and aggregate KLD / SIM / NSS the way the protocol does.

Images and ground truths are decoded, and predictions scored, in a thread pool (OpenCV and numpy
release the GIL), so the model runs batch after batch without waiting for the disk.

The split's figures are plain means over its images, as in the reference. NSS is the exception
that needs a decision, because the reference's NSS is NaN for a constant prediction and its plain
mean is then NaN. We report, next to each other:

* ``nss``: the mean over the images whose NSS is finite (the headline figure),
* ``nss_nan``: how many images had a NaN NSS (constant predictions),
* ``nss_reference``: what the reference's plain mean gives (NaN, written as null, if any is NaN),
* ``nss_nan_as_zero``: the mean over all images with NaN counted as 0 (chance level).

Without NaNs the four agree. Empty ground truths score 0/0/0 and count, as in the reference.
"""
from __future__ import annotations

import itertools
import logging
import math
import time
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
from tqdm import tqdm

from .agd20k import AGD20KSample, AGD20KTestSet
from .metrics import DEGENERATE_KINDS, degenerate_kinds, prepare_gt, prepare_prediction, score_prepared

log = logging.getLogger(__name__)


@dataclass
class Example:
    """A qualitative example kept for the figure."""

    sample: AGD20KSample
    prediction: np.ndarray  # float32 H x W in [0, 1], the image's size
    scores: dict


@dataclass
class EvaluationResult:
    split: str
    records: list[dict]  # per image: key, affordance, object, prompt, kld, sim, nss, degenerate
    summary: dict  # see summarize()
    per_affordance: dict[str, dict]
    per_object: dict[str, dict]
    degenerate: dict  # kind -> {"count", "images"}
    examples: list[Example] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return len(self.records) / self.seconds if self.seconds > 0 else float("nan")


def subset_indices(total: int, limit: int | None) -> list[int]:
    """All indices, or ``limit`` of them spread evenly over the sorted split (so every part of it
    is represented in a quick check)."""
    if limit is None or limit >= total:
        return list(range(total))
    if limit < 1:
        raise ValueError(f"--limit must be at least 1, got {limit}")
    return sorted({int(round(i)) for i in np.linspace(0, total - 1, limit)})


def select_examples(samples: Sequence[AGD20KSample], indices: Sequence[int], count: int) -> set[int]:
    """Up to ``count`` indices for the figure: the first image of affordances spread over the split."""
    first_of = {}
    for i in indices:
        first_of.setdefault(samples[i].affordance, i)
    firsts = list(first_of.values())
    if count <= 0 or not firsts:
        return set()
    picks = np.linspace(0, len(firsts) - 1, min(count, len(firsts)))
    return {firsts[int(round(p))] for p in picks}


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")  # sequential sum, as the reference


def summarize(records: Sequence[dict]) -> dict:
    """Means over images: kld, sim, nss (finite NSS only), nss_nan, nss_reference, nss_nan_as_zero, n."""
    nss = [r["nss"] for r in records]
    finite = [v for v in nss if math.isfinite(v)]
    return {"n": len(records), "kld": _mean(r["kld"] for r in records), "sim": _mean(r["sim"] for r in records),
            "nss": _mean(finite), "nss_nan": len(nss) - len(finite), "nss_reference": _mean(nss),
            "nss_nan_as_zero": _mean(v if math.isfinite(v) else 0.0 for v in nss)}


def group_summaries(records: Sequence[dict], key: str) -> dict[str, dict]:
    """summarize() per value of ``key`` (affordance or object), sorted by that value."""
    groups: dict[str, list[dict]] = {}
    for record in records:
        groups.setdefault(record[key], []).append(record)
    return {name: summarize(groups[name]) for name in sorted(groups)}


def degenerate_summary(records: Sequence[dict]) -> dict:
    counts = Counter(kind for r in records for kind in r["degenerate"])
    return {kind: {"count": counts[kind], "images": [r["key"] for r in records if kind in r["degenerate"]]}
            for kind in DEGENERATE_KINDS}


def score_one(prediction: np.ndarray, gt: np.ndarray) -> tuple[dict, list[str]]:
    """Scores and degenerate kinds of one raw prediction against its uint8 ground truth."""
    pred, truth = prepare_prediction(prediction), prepare_gt(gt)
    return score_prepared(pred, truth), degenerate_kinds(pred, truth)


def _prefetch(pool: ThreadPoolExecutor | None, fn: Callable, items: Iterable, depth: int) -> Iterator:
    """fn(item) for each item, in order, with up to ``depth`` calls running ahead in ``pool``."""
    if pool is None:
        yield from map(fn, items)
        return
    items = iter(items)
    pending: deque[Future] = deque(pool.submit(fn, item) for item in itertools.islice(items, depth))
    while pending:
        result = pending.popleft().result()
        for item in itertools.islice(items, 1):
            pending.append(pool.submit(fn, item))
        yield result


def _chunks(items: Iterator, size: int) -> Iterator[list]:
    while chunk := list(itertools.islice(items, size)):
        yield chunk


def evaluate(grounder, test_set: AGD20KTestSet, batch_size: int = 16, num_workers: int = 4,
             limit: int | None = None, num_examples: int = 8, progress: bool = True) -> EvaluationResult:
    """Score ``grounder`` (anything with ``heatmaps(images, prompts)``) on ``test_set``."""
    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"--num-workers must be 0 or more, got {num_workers}")
    indices = subset_indices(len(test_set), limit)
    keep = select_examples(test_set.samples, indices, num_examples)
    pool = ThreadPoolExecutor(num_workers, thread_name_prefix="agd20k") if num_workers else None
    records: list[dict] = []
    scoring: deque[tuple[int, Future | tuple]] = deque()  # scored one batch behind the model
    examples: dict[int, np.ndarray] = {}

    def collect(keep_pending: int) -> None:
        while len(scoring) > keep_pending:
            i, job = scoring.popleft()
            records.append(_record(test_set[i], *(job.result() if isinstance(job, Future) else job)))

    start = time.perf_counter()
    try:
        with tqdm(total=len(indices), desc=f"AGD20K {test_set.split}", unit="img", disable=not progress) as bar:
            loaded = _prefetch(pool, lambda i: (i, *test_set.load(i)), indices, depth=2 * batch_size)
            for batch in _chunks(loaded, batch_size):
                ids, images, gts = zip(*batch)
                predictions = grounder.heatmaps(list(images), [test_set[i].prompt for i in ids])
                for i, prediction, gt in zip(ids, predictions, gts):
                    if i in keep:
                        examples[i] = prediction
                    scoring.append((i, pool.submit(score_one, prediction, gt) if pool else score_one(prediction, gt)))
                collect(keep_pending=len(ids))
                bar.update(len(ids))
        collect(keep_pending=0)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    seconds = time.perf_counter() - start
    by_key = {r["key"]: r for r in records}
    kept = [Example(test_set[i], examples[i], by_key[test_set[i].key]) for i in sorted(examples)]
    return EvaluationResult(split=test_set.split, records=records, summary=summarize(records),
                            per_affordance=group_summaries(records, "affordance"),
                            per_object=group_summaries(records, "object"),
                            degenerate=degenerate_summary(records), examples=kept, seconds=seconds)


def _record(sample: AGD20KSample, scores: dict, kinds: list[str]) -> dict:
    return {"key": sample.key, "affordance": sample.affordance, "object": sample.object, "prompt": sample.prompt,
            **scores, "degenerate": kinds}
