"""The toy world: its data sets keep their promises, and benchmarks/toy_world.py --quick runs end to end."""
from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from affordance_clip_ros.evaluation.agd20k import AGD20KTestSet
from affordance_clip_ros.model import FrozenCLIP
from affordance_clip_ros.training.jsonl import load_jsonl
from affordance_clip_ros.training.toy_clip import create_clip, save_clip
from affordance_clip_ros.training.toy_world import (KINDS, SEEN_KINDS, VERBS, affordance_gt, caption, draw_scene,
                                                    seen_verbs, unseen_verbs, write_agd20k, write_referring_jsonl)

ROOT = Path(__file__).resolve().parents[1]


def test_scenes_hold_disjoint_masks_of_the_required_kinds_in_distinct_colours():
    rng = np.random.default_rng(3)
    for _ in range(20):
        scene = draw_scene(rng, 128, 4, required=["star"])
        assert scene.image.shape == (128, 128, 3) and scene.image.dtype == np.uint8
        assert "star" in [o.kind for o in scene.objects]
        assert len({o.colour for o in scene.objects}) == 4
        masks = np.stack([o.mask for o in scene.objects])
        assert masks.sum(axis=(1, 2)).min() > 20 and masks.sum(axis=0).max() == 1  # visible, never overlapping
    with pytest.raises(ValueError, match="required kinds"):
        draw_scene(rng, 96, 1, required=["ball", "box"])


def test_verbs_split_into_seen_and_unseen_by_the_referred_kinds():
    assert set(seen_verbs()) | set(unseen_verbs()) == set(VERBS) and not set(seen_verbs()) & set(unseen_verbs())
    assert {k for v in seen_verbs() for k in VERBS[v]} == set(SEEN_KINDS)
    assert {k for v in unseen_verbs() for k in VERBS[v]} == set(KINDS) - set(SEEN_KINDS)
    rng = np.random.default_rng(0)
    captions = [caption(rng, draw_scene(rng, 96, 2).objects) for _ in range(200)]
    assert any(any(v in c.split() for v in VERBS) for c in captions)  # some captions name what objects afford
    assert any(not any(v in c.split() for v in VERBS) for c in captions)


def test_referring_data_names_seen_kinds_and_colours_only_and_loads_for_training(tmp_path):
    path = write_referring_jsonl(tmp_path / "refer", 12, np.random.default_rng(1), side=64)
    records = load_jsonl(path)
    assert len(records) >= 24
    words = {w for r in records for w in r.sentence.split()}
    assert not words & set(VERBS)
    assert not words & (set(KINDS) - set(SEEN_KINDS))
    assert words & set(SEEN_KINDS)


def test_agd20k_set_has_the_layout_and_gt_of_the_affording_objects(tmp_path):
    counts = write_agd20k(tmp_path, 2, np.random.default_rng(2), side=64)
    for split, verbs in (("seen", seen_verbs()), ("unseen", unseen_verbs())):
        test_set = AGD20KTestSet(tmp_path, split)
        assert len(test_set) == counts[split] == 2 * len(verbs)
        assert {s.affordance for s in test_set.samples} == set(verbs)
        assert all(s.object in VERBS[s.affordance] for s in test_set.samples)
        image, gt = test_set.load(0)
        assert image.shape == (64, 64, 3) and gt.shape == (64, 64) and gt.max() == 255
    rng = np.random.default_rng(5)
    scene = draw_scene(rng, 64, 3, kinds=["box"], required=["ball"])
    ball = next(o for o in scene.objects if o.kind == "ball")
    gt = affordance_gt(scene.objects, "roll", sigma=2)
    assert gt[ball.mask].mean() > 128
    assert all(gt[o.mask].mean() < 64 for o in scene.objects if o.kind == "box")


def test_a_saved_toy_clip_loads_through_clip_pretrained(tmp_path):
    model = create_clip(seed=7)
    path = save_clip(model, tmp_path / "clip.safetensors")
    frozen = FrozenCLIP.create("RN-toy", str(path), "cpu")
    assert frozen.embed_dim == 64
    with torch.no_grad():
        expected = torch.nn.functional.normalize(model.eval().encode_text(frozen.tokenizer(["roll"])), dim=-1)
    assert torch.allclose(frozen.encode_text(["roll"]), expected, atol=1e-5)


def test_quick_run_writes_results_report_and_figure(tmp_path):
    out = tmp_path / "toy"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "toy_world.py"), "--out", str(out), "--quick",
                          "--seed", "3"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    for split in ("seen", "unseen"):
        assert set(results[split]) == {"fpn", "training_free", "centre_prior", "random_weights"}
        for method, metrics in results[split].items():
            assert {"kld", "sim", "nss"} <= set(metrics), (split, method)
            assert all(math.isfinite(metrics[k]) for k in ("kld", "sim", "nss")), (split, method, metrics)
            assert metrics["kld"] >= 0 and 0 <= metrics["sim"] <= 1
    assert results["run"]["seed"] == 3 and results["run"]["quick"]
    table = (out / "report.md").read_text().split("Control")[0]  # Table 1 layout, before the other-verb control
    methods = r"\| (fpn|training_free|centre_prior|random_weights) \|"
    rows = [line for line in table.splitlines() if re.match(methods, line)]
    assert len(rows) == 4 and all(line.count("|") == 8 for line in rows)
    figure = (out / "qualitative.png").read_bytes()
    assert figure[:8] == b"\x89PNG\r\n\x1a\n" and len(figure) > 10_000
