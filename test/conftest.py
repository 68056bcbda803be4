"""Shared fixtures: the tiny random-weight CLIP (fast on two cores) and real photos from scikit-image."""
from __future__ import annotations

import numpy as np
import pytest
import skimage.data

from affordance_clip_ros.model import AffordanceGrounder, FrozenCLIP, GrounderConfig

# backend "torch": tests of torch internals (hooks on CLIP layers) need the torch image path; the
# default CPU backend (onnxruntime) is covered by test_onnx_backend.py and the CLI tests.
TINY = dict(clip_model="RN-tiny", clip_pretrained="none", device="cpu", backend="torch")


@pytest.fixture(scope="session")
def coffee() -> np.ndarray:
    return skimage.data.coffee()


@pytest.fixture(scope="session")
def tiny_clip() -> FrozenCLIP:
    return FrozenCLIP.create("RN-tiny", "none", "cpu")


@pytest.fixture(scope="session")
def tiny_grounder() -> AffordanceGrounder:
    """Training-free grounder on the tiny config. Tests must not change its settings in place."""
    return AffordanceGrounder.from_config(GrounderConfig(**TINY))
