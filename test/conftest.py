"""Shared fixtures: the tiny random-weight CLIP (fast on two cores) and real photos from scikit-image."""
from __future__ import annotations

import numpy as np
import pytest
import skimage.data

from affordance_clip_ros.model import AffordanceGrounder, FrozenCLIP, GrounderConfig

TINY = dict(clip_model="RN-tiny", clip_pretrained="none", device="cpu")


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
