"""KLD / SIM / NSS: hand-computed values, the reference protocol step by step, properties, degenerate cases."""
from __future__ import annotations

import math
import warnings

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from affordance_clip_ros.evaluation.evaluate import summarize
from affordance_clip_ros.evaluation.metrics import (degenerate_kinds, kld, nss, prepare_gt, prepare_prediction,
                                                    score_map, sim)

EPS = 1e-12


def row(*values, dtype=np.float64) -> np.ndarray:
    return np.array([values], dtype=dtype)


def test_kld_and_sim_by_hand_on_a_row_of_four():
    pred = row(1, 1, 2, 0, dtype=np.float32)  # p = 1/4 1/4 1/2 0
    gt = row(1, 1, 1, 1)  # g = 1/4 each
    # ln(g/p) is 0, 0, ln(1/2), and ln(0.25 / 1e-12) where the prediction is zero.
    assert kld(pred, gt) == pytest.approx(0.25 * (math.log(0.5) + math.log(0.25 / 1e-12)), abs=1e-6)
    assert sim(pred, gt) == pytest.approx(0.25 + 0.25 + 0.25 + 0.0, abs=1e-9)


def test_nss_by_hand_with_the_ground_truth_threshold():
    pred = row(0, 1, 2, 3, dtype=np.float32)  # mean 1.5, population std sqrt(1.25)
    gt = row(0, 0.05, 0.5, 1.0)  # fixations where gt > 0.1: the last two pixels
    expected = ((2 - 1.5) + (3 - 1.5)) / math.sqrt(1.25) / 2
    assert nss(pred, gt) == pytest.approx(expected, abs=1e-6)


def test_score_map_by_hand_on_a_binary_block():
    # 224 x 224 maps are not resized; a block of 1/16 of the image predicted exactly.
    gt = np.zeros((224, 224), np.uint8)
    gt[56:112, 56:112] = 255
    scores = score_map(gt.astype(np.float32) * 3.0, gt)
    fraction = 1 / 16  # binary map: S = (1 - f) / sqrt(f (1 - f)) = sqrt((1 - f) / f) inside the block
    assert scores["kld"] == pytest.approx(0.0, abs=1e-6)
    assert scores["sim"] == pytest.approx(1.0, abs=1e-6)
    assert scores["nss"] == pytest.approx(math.sqrt((1 - fraction) / fraction), abs=1e-5)
    # The opposite prediction: no mass on the 56 x 56 ground-truth pixels, each holding g = 1 / 3136.
    scores = score_map(255.0 - gt, gt)
    assert scores["sim"] == pytest.approx(0.0, abs=1e-9)
    assert scores["nss"] == pytest.approx(-math.sqrt((1 - fraction) / fraction), abs=1e-5)
    assert scores["kld"] == pytest.approx(math.log((1 / 3136) / 1e-12), rel=1e-6)


def reference_protocol(pred: np.ndarray, gt_uint8: np.ndarray) -> tuple[float, float, float]:
    """The AGD20K protocol written out step by step, one pixel at a time where it thresholds."""
    resized = cv2.resize(pred.astype(np.float32), dsize=(224, 224))  # OpenCV's default is INTER_LINEAR
    lo, hi = np.min(resized), np.max(resized)
    p_map = (resized - lo) / (hi - lo + 1e-10)
    g_map = cv2.resize(gt_uint8 / 255.0, (224, 224))
    p, g = p_map / (p_map.sum() + EPS), g_map / (g_map.sum() + EPS)
    kld_value = np.sum(g * np.log(g / (p + EPS) + EPS))
    sim_value = np.sum(np.minimum(p, g))
    scaled_p, scaled_g = p_map / 255.0, g_map / 255.0
    standard = (scaled_p - np.mean(scaled_p)) / np.std(scaled_p)
    normal_g = (scaled_g - np.min(scaled_g)) / (np.max(scaled_g) - np.min(scaled_g) + EPS)
    fixation = np.zeros(normal_g.shape)
    for y in range(normal_g.shape[0]):
        for x in range(normal_g.shape[1]):
            if normal_g[y][x] > 0.1:
                fixation[y][x] = 1
    nss_value = np.sum(standard * fixation) / np.sum(fixation + EPS)
    return float(kld_value), float(sim_value), float(nss_value)


@pytest.mark.parametrize("shape", [(37, 53), (224, 224), (480, 640), (300, 200)])
def test_score_map_matches_the_reference_protocol(shape):
    rng = np.random.default_rng(sum(shape))
    pred = (rng.random(shape, dtype=np.float32) ** 3) * 0.7 + 0.1  # offset and scale: min-max matters
    gt = np.zeros(shape, np.uint8)
    h, w = shape
    gt[h // 4: h // 2, w // 3: w // 2] = (rng.random((h // 2 - h // 4, w // 2 - w // 3)) * 255).astype(np.uint8)
    got = score_map(pred, gt)
    want = reference_protocol(pred, gt)
    assert abs(got["kld"] - want[0]) < 1e-8 and abs(got["sim"] - want[1]) < 1e-8 and abs(got["nss"] - want[2]) < 1e-8


def test_prepared_maps_have_the_reference_dtypes_and_order():
    gt = np.array([[0, 255], [255, 0]], np.uint8)
    prepared = prepare_gt(gt, size=4)
    assert prepared.dtype == np.float64
    np.testing.assert_array_equal(prepared, cv2.resize(gt / 255.0, (4, 4), interpolation=cv2.INTER_LINEAR))
    # Dividing before resizing keeps fractions that resizing the 8-bit map would round away.
    assert not np.array_equal(prepared, cv2.resize(gt, (4, 4)) / 255.0)
    pred = prepare_prediction(np.array([[2.0, 4.0], [6.0, 10.0]]), size=3)
    assert pred.dtype == np.float32 and pred.min() == 0.0 and pred.max() == pytest.approx(1.0)


def test_batched_metrics_equal_one_map_at_a_time():
    rng = np.random.default_rng(1)
    preds = rng.random((5, 224, 224), dtype=np.float32)
    gts = rng.random((5, 224, 224)) ** 3
    for metric in (kld, sim, nss):
        batched = metric(preds, gts)
        assert batched.shape == (5,)
        np.testing.assert_allclose(batched, [metric(p, g) for p, g in zip(preds, gts)], rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------------------------------------- properties
maps = arrays(np.uint8, st.tuples(st.integers(2, 40), st.integers(2, 40)), elements=st.integers(0, 255))


def full_range(gt: np.ndarray) -> np.ndarray:
    """Make the map span 0..255 so that min-max of the prediction equals the GT's division by 255."""
    gt = gt.copy()
    gt.flat[0], gt.flat[-1] = 0, 255
    return gt


@settings(max_examples=40, deadline=None)
@given(maps)
def test_a_prediction_equal_to_the_gt_scores_kld_0_and_sim_1(gt):
    gt = full_range(gt)
    scores = score_map(gt.astype(np.float32), gt)
    assert scores["kld"] == pytest.approx(0.0, abs=1e-5)
    assert scores["sim"] == pytest.approx(1.0, abs=1e-5)


@settings(max_examples=40, deadline=None)
@given(maps, maps)
def test_sim_is_symmetric(a, b):
    a, b = prepare_gt(a), prepare_gt(b)
    assert sim(a, b) == sim(b, a)
    assert 0.0 <= sim(a, b) <= 1.0 + 1e-9


@settings(max_examples=40, deadline=None)
@given(maps, maps, st.floats(0.1, 1e3), st.floats(-10, 10))
def test_scores_do_not_change_when_the_prediction_is_scaled_or_shifted(pred, gt, scale, shift):
    pred = pred.astype(np.float32)
    moved_pred = pred * np.float32(scale) + np.float32(shift)
    np.testing.assert_allclose(prepare_prediction(moved_pred), prepare_prediction(pred), atol=1e-5)
    base, moved = score_map(pred, gt), score_map(moved_pred, gt)
    assert moved["sim"] == pytest.approx(base["sim"], rel=1e-4, abs=1e-4)
    # KLD divides by p + 1e-12: where the normalised prediction is 0 up to float32 rounding
    # (1e-7 after min-max), each such pixel's term moves by up to g * ln(10^5); the reference
    # has the same sensitivity, so only a looser absolute agreement is a property of the metric.
    assert moved["kld"] == pytest.approx(base["kld"], rel=1e-4, abs=2e-3)
    if math.isnan(base["nss"]):
        assert math.isnan(moved["nss"])
    else:
        assert moved["nss"] == pytest.approx(base["nss"], rel=1e-4, abs=1e-4)


@settings(max_examples=40, deadline=None)
@given(maps)
def test_the_gt_as_prediction_has_a_positive_nss(gt):
    gt = full_range(gt)
    assert score_map(gt.astype(np.float32), gt)["nss"] > 0


# ---------------------------------------------------------------------------------------------- degenerate
def test_an_all_zero_gt_scores_zero_and_is_flagged():
    gt = np.zeros((30, 40), np.uint8)
    pred = np.random.default_rng(0).random((30, 40))
    assert score_map(pred, gt) == {"kld": 0.0, "sim": 0.0, "nss": 0.0}
    assert degenerate_kinds(prepare_prediction(pred), prepare_gt(gt)) == ["empty_gt"]


def test_a_flat_gt_has_no_fixation_and_nss_zero():
    gt = np.full((30, 40), 128, np.uint8)
    pred = np.random.default_rng(0).random((30, 40))
    scores = score_map(pred, gt)
    assert scores["nss"] == 0.0 and math.isfinite(scores["kld"]) and 0 < scores["sim"] < 1
    assert degenerate_kinds(prepare_prediction(pred), prepare_gt(gt)) == ["flat_gt"]


def test_a_constant_prediction_gives_nan_nss_like_the_reference_without_warnings():
    gt = np.zeros((30, 40), np.uint8)
    gt[5:15, 10:20] = 200
    pred = np.full((30, 40), 0.7, np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scores = score_map(pred, gt)
    assert math.isnan(scores["nss"])
    assert scores["sim"] == 0.0  # min-max turns a constant map into zeros
    assert math.isfinite(scores["kld"]) and scores["kld"] > 15  # every g / (0 + 1e-12) is huge
    assert degenerate_kinds(prepare_prediction(pred), prepare_gt(gt)) == ["constant_pred"]
    assert degenerate_kinds(prepare_prediction(pred), prepare_gt(np.zeros_like(gt))) == ["empty_gt", "constant_pred"]


def test_broken_inputs_are_refused_with_a_reason():
    gt = np.zeros((8, 8), np.uint8)
    with pytest.raises(ValueError, match="NaN"):
        score_map(np.full((8, 8), np.nan), gt)
    with pytest.raises(ValueError, match="IMREAD_GRAYSCALE"):
        score_map(np.ones((8, 8)), gt.astype(np.float32))
    with pytest.raises(ValueError, match="2-D"):
        score_map(np.ones((8, 8, 3)), gt)


def test_summary_keeps_nan_nss_visible_and_counted():
    records = [{"kld": 1.0, "sim": 0.2, "nss": 1.0}, {"kld": 2.0, "sim": 0.4, "nss": float("nan")},
               {"kld": 3.0, "sim": 0.6, "nss": 2.0}]
    summary = summarize(records)
    assert summary["n"] == 3 and summary["nss_nan"] == 1
    assert summary["kld"] == pytest.approx(2.0) and summary["sim"] == pytest.approx(0.4)
    assert summary["nss"] == pytest.approx(1.5)  # mean over the finite values
    assert math.isnan(summary["nss_reference"])  # the reference's plain mean
    assert summary["nss_nan_as_zero"] == pytest.approx(1.0)
    clean = summarize([records[0], records[2]])
    assert clean["nss"] == clean["nss_reference"] == clean["nss_nan_as_zero"] == pytest.approx(1.5)
