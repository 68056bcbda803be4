"""AGD20K evaluation (no ROS): the KLD / SIM / NSS protocol, the test-set reader, the loop and its report.

Import the loop and report from their modules (:mod:`.evaluate`, :mod:`.report`); this package
itself only pulls in numpy and OpenCV.
"""
from .agd20k import EXPECTED_IMAGES, SPLITS, AGD20KSample, AGD20KTestSet, affordance_prompt, find_testset
from .metrics import (DEGENERATE_KINDS, METRICS, degenerate_kinds, kld, nss, prepare_gt, prepare_prediction,
                      score_map, sim)

__all__ = [
    "AGD20KSample", "AGD20KTestSet", "DEGENERATE_KINDS", "EXPECTED_IMAGES", "METRICS", "SPLITS", "affordance_prompt",
    "degenerate_kinds", "find_testset", "kld", "nss", "prepare_gt", "prepare_prediction", "score_map", "sim",
]
