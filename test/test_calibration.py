"""Scores of the training-free head (model.calibration): a pixel's score depends on its own
embedding and the texts only, a matching text lights its region, an unrelated one stays below the
default peak threshold, and a frame where nothing matches gives no peak."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import support
from affordance_clip_ros.model import AffordanceGrounder, GrounderConfig
from affordance_clip_ros.model.calibration import background_softmax
from affordance_clip_ros.model.fpn import pixel_text_logits
from affordance_clip_ros.parameter_table import SPECS

from conftest import TINY

THRESHOLD = SPECS["peak_threshold"].default


def unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=-1)


@pytest.fixture(scope="module")
def scene(tiny_grounder):
    """Pixel embeddings (1, C, 12, 16): a 4x5 region of one embedding, the rest of the frame the
    background phrases' own embeddings ("wall" to the left, "floor" to the right), each pixel
    jittered a little; plus the region's embedding and one unrelated to everything in view."""
    torch.manual_seed(0)
    walls = tiny_grounder.text_embeddings(["wall", "floor"])
    channels = walls.shape[1]
    # An object shares something with what is around it (as CLIP's embeddings of real scenes do),
    # so that in the region the background phrases score above a text unrelated to it.
    region = unit(unit(torch.randn(channels)) + 0.5 * walls[0])
    dense = torch.empty(1, channels, 12, 16)
    dense[0, :, :, :8] = walls[0][:, None, None]
    dense[0, :, :, 8:] = walls[1][:, None, None]
    dense[0, :, 3:7, 5:10] = region[:, None, None]
    dense = unit((dense + 0.02 * torch.randn_like(dense)).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    inside = torch.zeros(12, 16, dtype=torch.bool)
    inside[3:7, 5:10] = True
    # unrelated: orthogonal to the region, and no closer to the background than the region is
    unrelated = unit(torch.randn(channels))
    unrelated = unit(unrelated - (unrelated @ region) * region)
    return dense, region, unrelated, inside


def scores(grounder, dense, text):
    return grounder.calibrate(dense, pixel_text_logits(dense, text[None]))[0, 0]


def test_a_text_equal_to_a_region_lights_that_region_only(tiny_grounder, scene):
    dense, region, _, inside = scene
    s = scores(tiny_grounder, dense, region)
    assert s[inside].min() > 0.9
    assert s[~inside].max() < THRESHOLD


def test_an_unrelated_text_stays_below_the_threshold_everywhere(tiny_grounder, scene):
    dense, _, unrelated, _ = scene
    assert scores(tiny_grounder, dense, unrelated).max() < THRESHOLD


def test_scaling_or_cropping_the_rest_of_the_frame_leaves_a_pixel_unchanged(tiny_grounder, scene):
    dense, region, _, _ = scene
    reference = scores(tiny_grounder, dense, region)
    rest = dense.clone()
    rest[..., :, :5] *= 0.25  # the rest of the frame darker / weaker
    rest[..., :, 10:] = unit(torch.randn(1, 12, 6, rest.shape[1])).permute(0, 3, 1, 2)  # and something else
    changed = scores(tiny_grounder, rest, region)
    torch.testing.assert_close(changed[:, 5:10], reference[:, 5:10], rtol=0, atol=1e-6)
    cropped = scores(tiny_grounder, dense[..., 2:8, 4:11].contiguous(), region)
    torch.testing.assert_close(cropped, reference[2:8, 4:11], rtol=0, atol=1e-6)


def test_background_softmax_is_the_probability_of_the_prompt_against_the_background():
    logits = torch.tensor([0.30, 0.10])[None, :, None, None]
    background = torch.tensor([0.25, 0.20])[None, :, None, None]
    expected = [np.exp(100 * p) / (np.exp(100 * p) + np.exp(25.0) + np.exp(20.0)) for p in (0.30, 0.10)]
    np.testing.assert_allclose(background_softmax(logits, background, 100.0)[0, :, 0, 0].numpy(), expected, rtol=1e-5)
    # CLIP's scale is clamped at 100, as CLIP clamps it
    torch.testing.assert_close(background_softmax(logits, background, 1e4), background_softmax(logits, background, 100))
    with pytest.raises(ValueError, match="background"):
        background_softmax(logits, background[:, :0], 100.0)


def test_adding_a_prompt_never_changes_another_prompts_map(tiny_grounder, coffee):
    one = tiny_grounder.predict(coffee, ["cut with"])[0].heatmap
    two = tiny_grounder.predict(coffee, ["pour", "cut with"])[1].heatmap
    np.testing.assert_allclose(one, two, atol=1e-6)


def test_background_prompts_are_required_and_changeable_at_run_time(tiny_grounder):
    with pytest.raises(ValueError, match="background_prompts"):
        GrounderConfig(**TINY, background_prompts=())
    with pytest.raises(ValueError, match="background_prompts"):
        GrounderConfig(**TINY, background_prompts=("wall", " "))
    assert dataclasses.replace(tiny_grounder.config, background_prompts=("sky",)).background_prompts == ("sky",)


def test_a_frame_where_nothing_matches_gives_no_peak(tmp_path, coffee):
    """A model to which every image shows a wall: no prompt but "wall" itself gets a peak at the
    default threshold, though the maps still vary from pixel to pixel (so a per-frame min-max
    would have scored the best pixel 1.0 and published a contact point)."""
    weights = support.one_phrase_world_weights(tmp_path / "wall_world.safetensors", "wall")
    grounder = AffordanceGrounder.from_config(GrounderConfig(**{**TINY, "clip_pretrained": str(weights)}))
    for prediction in grounder.predict(coffee, ["cut with", "hold", "pour", "sit on"]):
        assert prediction.peaks == [], prediction.prompt
        assert prediction.heatmap.max() < THRESHOLD and np.ptp(prediction.heatmap) > 0
    [wall] = grounder.predict(coffee, ["wall"])  # the model is not blind: the wall is there, as likely as
    assert wall.heatmap.min() > 0.45 and wall.peaks  # the background phrase "wall" itself (0.5)
