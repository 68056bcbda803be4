"""KLD, SIM and NSS as the AGD20K protocol computes them (LOCATE's evaluation code; docs/evaluation.md, Protocol).

Per image the protocol is::

    P = minmax(resize(pred, 224x224))        float32, INTER_LINEAR, minmax eps 1e-10
    G = resize(gt_uint8 / 255, 224x224)      float64, INTER_LINEAR
    p = P / (sum P + 1e-12),  g = G / (sum G + 1e-12)
    KLD = sum g * ln(g / (p + 1e-12) + 1e-12)           lower is better
    SIM = sum min(p, g)                                 higher is better
    NSS = sum(S * F) / sum(F + 1e-12)                   higher is better
          S = (P - mean P) / std P  (population std),  F = [minmax(G, eps 1e-12) > 0.1]

The dtypes follow the reference too (the prediction stays float32 until it meets the float64
ground truth), so scores agree with it to far better than 1e-6. :func:`kld`, :func:`sim` and
:func:`nss` take prepared maps of shape (..., H, W) and reduce the last two axes, so a stack of
images is scored in one call.

Degenerate images, handled as the reference does (the evaluation loop counts and reports them):

* ``empty_gt``: an all-zero ground truth scores KLD 0, SIM 0, NSS 0 and still counts in the means.
* ``flat_gt``: a non-zero but constant ground truth has no NSS fixation pixel: NSS 0.
* ``constant_pred``: a constant prediction becomes all zeros after min-max; its standard
  deviation is 0, so NSS is NaN (0/0). KLD and SIM are finite (SIM 0).

Example::

    gt = np.zeros((40, 60), np.uint8); gt[10:20, 20:40] = 255
    score_map(gt.astype(np.float32), gt)  # {'kld': 4.3e-09, 'sim': 0.99999999, 'nss': 3.01}
"""
from __future__ import annotations

import cv2
import numpy as np

SIZE = 224  # both maps are resized to SIZE x SIZE before scoring
EPS = 1e-12  # distribution, KLD and NSS epsilon
MINMAX_EPS = 1e-10  # epsilon of the prediction's min-max normalisation
NSS_THRESHOLD = 0.1  # ground-truth pixels above this (after min-max) are NSS fixations
METRICS = ("kld", "sim", "nss")
DEGENERATE_KINDS = ("empty_gt", "flat_gt", "constant_pred")
_AXES = (-2, -1)


def prepare_prediction(pred: np.ndarray, size: int = SIZE) -> np.ndarray:
    """Any-size 2-D prediction -> float32 size x size, min-max normalised to [0, 1]."""
    pred = np.asarray(pred)
    if pred.ndim != 2 or pred.size == 0 or not np.issubdtype(pred.dtype, np.number):
        raise ValueError(f"prediction must be a non-empty 2-D numeric map, got {pred.dtype} {pred.shape}")
    pred = np.ascontiguousarray(pred, dtype=np.float32)
    if not np.isfinite(pred).all():
        raise ValueError("prediction contains NaN or infinite values; the model output is broken "
                         "(with --precision fp16 try fp32 or bf16)")
    resized = cv2.resize(pred, (size, size), interpolation=cv2.INTER_LINEAR)
    low, high = resized.min(), resized.max()
    return (resized - low) / (high - low + MINMAX_EPS)


def prepare_gt(gt: np.ndarray, size: int = SIZE) -> np.ndarray:
    """8-bit grey ground truth (as read with cv2.IMREAD_GRAYSCALE) -> float64 size x size in [0, 1]."""
    gt = np.asarray(gt)
    if gt.dtype != np.uint8 or gt.ndim != 2 or gt.size == 0:
        raise ValueError(f"ground truth must be a non-empty 2-D uint8 grey map (read the png with "
                         f"cv2.IMREAD_GRAYSCALE), got {gt.dtype} {gt.shape}")
    return cv2.resize(np.ascontiguousarray(gt / 255.0), (size, size), interpolation=cv2.INTER_LINEAR)


def _distribution(maps: np.ndarray) -> np.ndarray:
    return maps / (maps.sum(axis=_AXES, keepdims=True) + EPS)


def kld(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Kullback-Leibler divergence of the prediction from the ground truth, per map (float64)."""
    p, g = _distribution(pred), _distribution(gt)
    return np.sum(g * np.log(g / (p + EPS) + EPS), axis=_AXES)


def sim(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Histogram intersection of the two maps, each normalised to sum 1, per map (float64)."""
    return np.sum(np.minimum(_distribution(pred), _distribution(gt)), axis=_AXES)


def fixations(gt: np.ndarray) -> np.ndarray:
    """NSS fixation map: 1.0 where the min-max normalised ground truth exceeds NSS_THRESHOLD."""
    low, high = gt.min(axis=_AXES, keepdims=True), gt.max(axis=_AXES, keepdims=True)
    return ((gt - low) / (high - low + EPS) > NSS_THRESHOLD).astype(np.float64)


def nss(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Normalised scanpath saliency per map (float64); NaN for a constant prediction, as in the reference."""
    # The reference divides both maps by 255 first. NSS does not depend on it, but the float32
    # rounding does, so it is kept for scores that match the reference to the last digits.
    pred = pred / 255.0
    mean, std = pred.mean(axis=_AXES, keepdims=True), pred.std(axis=_AXES, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        standardised = (pred - mean) / std
    fixation = fixations(gt / 255.0)
    return np.sum(standardised * fixation, axis=_AXES) / np.sum(fixation + EPS, axis=_AXES)


def score_prepared(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """Scores of one prepared pair (see :func:`prepare_prediction`, :func:`prepare_gt`)."""
    return {"kld": float(kld(pred, gt)), "sim": float(sim(pred, gt)), "nss": float(nss(pred, gt))}


def degenerate_kinds(pred: np.ndarray, gt: np.ndarray) -> list[str]:
    """Which of DEGENERATE_KINDS a prepared pair is (usually none); see the module docstring."""
    kinds = []
    if not gt.any():
        kinds.append("empty_gt")
    elif not fixations(gt / 255.0).any():
        kinds.append("flat_gt")
    if not (pred / 255.0).std() > 0:
        kinds.append("constant_pred")
    return kinds


def score_map(pred: np.ndarray, gt_uint8: np.ndarray) -> dict[str, float]:
    """The whole per-image protocol: raw prediction (any size, any range) and 8-bit ground truth
    -> {"kld", "sim", "nss"}. NSS is NaN for a constant prediction (see the module docstring)."""
    return score_prepared(prepare_prediction(pred), prepare_gt(gt_uint8))
