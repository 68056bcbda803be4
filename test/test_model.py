"""Core model: CLIP features, FPN, training-free head, grounder geometry, text cache, checkpoints, weights."""
from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import open_clip
import pytest
import torch
from safetensors.torch import save_file

from affordance_clip_ros.model import (AffordanceFPN, AffordanceGrounder, CheckpointError, FPNConfig, FrozenCLIP,
                                       GrounderConfig, WeightsNotFoundError, count_trainable_parameters, find_peaks,
                                       load_fpn, save_fpn)
from affordance_clip_ros.io import written_atomically
from affordance_clip_ros.model.letterbox import Letterbox, letterbox_batch, unletterbox

from conftest import TINY

PAPER_FPN_PARAMS = 2.71e6


def test_rn101_feature_shapes_and_fpn_parameter_count():
    clip = FrozenCLIP.create("RN101", "none", "cpu")
    assert clip.feature_channels == (512, 1024, 2048) and clip.embed_dim == 512
    assert count_trainable_parameters(clip) == 0 and not clip.training
    with torch.inference_mode():
        feats = clip.image_features(torch.randn(1, 3, 416, 416))
    assert feats.f1.shape == (1, 512, 52, 52)
    assert feats.f2.shape == (1, 1024, 26, 26)
    assert feats.f3.shape == (1, 2048, 13, 13)
    assert feats.global_embedding.shape == (1, 512)
    fpn = AffordanceFPN(FPNConfig(clip.feature_channels, clip.embed_dim))
    assert abs(count_trainable_parameters(fpn) - PAPER_FPN_PARAMS) <= 0.05 * PAPER_FPN_PARAMS
    with torch.inference_mode():
        assert fpn.eval()(feats).shape == (1, 512, 52, 52)


def test_the_trunk_computes_open_clip_s_function_with_batchnorm_folded_and_unit_pools_dropped():
    """FrozenCLIP rewrites the trunk for speed (BatchNorm folded into the convs, 1x1 average pools
    removed); the same weights give open_clip's own encoder output."""
    import copy

    torch.manual_seed(0)
    raw = open_clip.create_model("RN-tiny", force_quick_gelu=True).eval()
    with torch.no_grad():
        for name, tensor in raw.visual.named_buffers():
            if name.endswith("running_mean"):
                tensor.normal_(0, 0.1)
            elif name.endswith("running_var"):
                tensor.uniform_(0.5, 1.5)
        for name, tensor in raw.visual.named_parameters():
            if "bn" in name or "downsample.1" in name:
                tensor.uniform_(0.5, 1.5) if name.endswith("weight") else tensor.normal_(0, 0.1)
    clip = FrozenCLIP(copy.deepcopy(raw), open_clip.get_tokenizer("RN-tiny"), "RN-tiny")
    modules = list(clip.model.visual.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in modules)
    assert not any(isinstance(m, torch.nn.AvgPool2d) and m.kernel_size in (1, (1, 1)) for m in modules)
    assert any(isinstance(m, torch.nn.AvgPool2d) for m in modules)  # the striding pools stay
    pixels = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        torch.testing.assert_close(clip.model.encode_image(pixels), raw.encode_image(pixels), rtol=1e-4, atol=1e-5)


def test_attention_pool_matches_open_clip_at_native_resolution(tiny_clip):
    pixels = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        ours = tiny_clip.image_features(pixels).global_embedding
        reference = tiny_clip.model.encode_image(pixels)
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("levels,stride", [(1, 32), (2, 16), (3, 8)])
def test_fpn_levels_output_stride_and_odd_sizes(tiny_clip, levels, stride):
    fpn = AffordanceFPN(FPNConfig(tiny_clip.feature_channels, tiny_clip.embed_dim, width=16, levels=levels)).eval()
    with torch.inference_mode():
        out = fpn(tiny_clip.image_features(torch.randn(2, 3, 352, 224)))
    assert out.shape == (2, tiny_clip.embed_dim, 352 // stride, 224 // stride)
    fewer = AffordanceFPN(FPNConfig(tiny_clip.feature_channels, tiny_clip.embed_dim, width=16, levels=levels - 1)) \
        if levels > 1 else None
    if fewer is not None:
        assert count_trainable_parameters(fewer) < count_trainable_parameters(fpn)


def test_predict_shapes_range_and_sorted_peaks(tiny_grounder, coffee):
    # threshold 0: random weights score every pixel alike, near the same value
    config = dataclasses.replace(tiny_grounder.config, peak_threshold=0.0)
    grounder = AffordanceGrounder(tiny_grounder.clip, None, config)
    preds = grounder.predict(coffee, ["drink with", "hold"])
    assert [p.prompt for p in preds] == ["drink with", "hold"]
    for pred in preds:
        assert pred.heatmap.shape == coffee.shape[:2] and pred.heatmap.dtype == np.float32
        assert 0.0 <= pred.heatmap.min() and pred.heatmap.max() <= 1.0
        assert pred.peaks, "a map that is not flat has a maximum above 0"
        scores = [p.score for p in pred.peaks]
        assert scores == sorted(scores, reverse=True)
        for peak in pred.peaks:
            assert 0 <= peak.u < coffee.shape[1] and 0 <= peak.v < coffee.shape[0]
            assert pred.heatmap[peak.v, peak.u] == pytest.approx(peak.score)
    assert not np.allclose(preds[0].heatmap, preds[1].heatmap), "different prompts give different maps"


def test_bad_images_are_refused_clearly(tiny_grounder):
    with pytest.raises(ValueError, match="uint8"):
        tiny_grounder.predict(np.zeros((10, 10), np.uint8), ["hold"])
    with pytest.raises(ValueError, match="zero size"):
        tiny_grounder.predict(np.zeros((0, 10, 3), np.uint8), ["hold"])
    assert tiny_grounder.predict(np.zeros((10, 10, 3), np.uint8), []) == []


@pytest.mark.parametrize("height,width", [(300, 500), (500, 300), (416, 416), (97, 1000)])
def test_letterbox_round_trip_puts_a_bright_square_back_on_its_pixels(height, width):
    image = np.zeros((height, width, 3), np.uint8)
    scale = 416 / max(height, width)
    # At least three cells of the H/8 grid wide in the model input, so the map can resolve it.
    top, left, side = height // 5, width // 7, max(int(24 / scale) + 1, min(height, width) // 6)
    image[top:top + side, left:left + side] = 255
    pixels, [box] = letterbox_batch([torch.from_numpy(image)], 416)
    assert pixels.shape == (1, 3, 416, 416)
    # Use the red channel of the model input, pooled to the H/8 grid, as a stand-in map.
    coarse = torch.nn.functional.avg_pool2d(pixels[:, :1], 8)[0]
    back = unletterbox(coarse, box)[0].numpy()
    assert back.shape == (height, width)
    [peak] = find_peaks(back, num_peaks=1, threshold=-10, min_distance=1)
    assert top <= peak.v < top + side and left <= peak.u < left + side


def test_letterbox_geometry_is_centred():
    box = Letterbox(height=300, width=600, size=416)
    assert box.inner == (208, 416) and box.offset == (104, 0)


def test_backbone_runs_once_for_many_prompts(tiny_grounder, coffee):
    calls = []
    handle = tiny_grounder.clip.model.visual.layer4.register_forward_hook(lambda *a: calls.append(1))
    try:
        tiny_grounder.predict(coffee, ["hold"])
        one = len(calls)
        tiny_grounder.predict(coffee, [f"prompt {i}" for i in range(8)])
    finally:
        handle.remove()
    assert one == 1 and len(calls) == 2


def test_a_batch_of_frames_runs_the_backbone_once_and_matches_one_frame_at_a_time(tiny_grounder, coffee):
    """Several cameras' frames (any sizes, one prompt set) in one batch: one backbone call, and each
    frame's maps as if it had been inferred alone."""
    frames = [coffee, np.ascontiguousarray(coffee[:240, :320]), np.ascontiguousarray(coffee[::-1])]
    calls = []
    handle = tiny_grounder.clip.model.visual.layer4.register_forward_hook(lambda *a: calls.append(1))
    try:
        batch = tiny_grounder.predict_batch(frames, ["hold", "cut with"])
    finally:
        handle.remove()
    assert len(calls) == 1
    for frame, predictions in zip(frames, batch):
        alone = tiny_grounder.predict(frame, ["hold", "cut with"])
        assert [p.heatmap.shape for p in predictions] == [frame.shape[:2]] * 2
        for a, b in zip(alone, predictions):
            np.testing.assert_allclose(a.heatmap, b.heatmap, atol=1e-4)


def test_random_weights_are_the_same_in_every_run_and_leave_the_caller_s_generator_alone(coffee):
    """clip_pretrained none draws from ``random_seed``: a test or benchmark sees the same model every run."""
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    grounders = [AffordanceGrounder.from_config(GrounderConfig(**TINY, random_seed=seed)) for seed in (0, 0, 1)]
    maps = [g.predict(coffee, ["hold"])[0].heatmap for g in grounders]
    torch.testing.assert_close(torch.rand(1), expected_next)
    np.testing.assert_array_equal(maps[0], maps[1])
    assert not np.array_equal(maps[0], maps[2])


def test_text_cache_hits_and_is_bounded():
    clip = FrozenCLIP.create("RN-tiny", "none", "cpu", text_cache_size=8)
    with mock.patch.object(clip.model, "encode_text", wraps=clip.model.encode_text) as spy:
        first = clip.encode_text(["cut with", "pour"])
        again = clip.encode_text(["pour", "cut with"])
        assert spy.call_count == 1
        torch.testing.assert_close(first, again.flip(0))
        clip.encode_text([f"phrase {i}" for i in range(20)])
    assert clip.text_cache_len == 8
    torch.testing.assert_close(first.norm(dim=-1), torch.ones(2))


def test_text_embeddings_are_fp32_whatever_the_callers_autocast():
    """The cache holds one embedding per text: the first caller's autocast (the CUDA image path
    runs under fp16) must not decide it for every later caller."""
    reference = FrozenCLIP.create("RN-tiny", "none", "cpu")
    clip = FrozenCLIP.create("RN-tiny", "none", "cpu")
    clip.model.load_state_dict(reference.model.state_dict())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = clip.encode_text(["cut with"])
    assert under_autocast.dtype == torch.float32
    torch.testing.assert_close(under_autocast, reference.encode_text(["cut with"]), rtol=0, atol=0)


def test_prompt_templates_are_averaged_in_embedding_space():
    templates = ("{}", "an object to {}")
    grounder = AffordanceGrounder.from_config(GrounderConfig(**TINY, prompt_templates=templates))
    emb = grounder.text_embeddings(["cut with"])
    parts = grounder.clip.encode_text(["cut with", "an object to cut with"])
    expected = torch.nn.functional.normalize(parts.mean(0, keepdim=True), dim=-1)
    torch.testing.assert_close(emb, expected)
    with pytest.raises(ValueError, match="exactly one"):
        GrounderConfig(**TINY, prompt_templates=("no placeholder",))


def test_fpn_checkpoint_round_trip_and_grounder_uses_it(tmp_path, tiny_clip, coffee):
    fpn = AffordanceFPN(FPNConfig(tiny_clip.feature_channels, tiny_clip.embed_dim, width=16, levels=2))
    path = save_fpn(tmp_path / "fpn.safetensors", fpn, "RN-tiny", 416, recipe={"lr": 1e-4})
    loaded, meta = load_fpn(path, "RN-tiny", tiny_clip.feature_channels, tiny_clip.embed_dim)
    assert meta["fpn"]["levels"] == 2 and meta["recipe"] == {"lr": 1e-4}
    for key, value in fpn.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)
    grounder = AffordanceGrounder.from_config(GrounderConfig(**TINY, fpn_checkpoint=str(path)))
    assert grounder.mode == "fpn"
    [pred] = grounder.predict(coffee, ["hold"])
    assert pred.heatmap.shape == coffee.shape[:2] and 0 <= pred.heatmap.min() <= pred.heatmap.max() <= 1
    assert list(tmp_path.iterdir()) == [path], "atomic save leaves no temporary file"


def test_a_failed_atomic_write_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "fpn.safetensors"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError), written_atomically(path) as tmp:
        Path(tmp).write_bytes(b"half")
        raise RuntimeError("disk full")
    assert path.read_bytes() == b"old" and list(tmp_path.iterdir()) == [path]
    with written_atomically(path) as tmp:
        Path(tmp).write_bytes(b"new")
    assert path.read_bytes() == b"new" and list(tmp_path.iterdir()) == [path]


def test_checkpoint_mismatches_are_refused(tmp_path, tiny_clip):
    fpn = AffordanceFPN(FPNConfig(tiny_clip.feature_channels, tiny_clip.embed_dim, width=16))
    path = save_fpn(tmp_path / "fpn.safetensors", fpn, "RN-tiny", 416)
    with pytest.raises(CheckpointError, match="trained for CLIP 'RN-tiny'"):
        load_fpn(path, "RN101", (512, 1024, 2048), 512)
    with pytest.raises(CheckpointError, match="expects CLIP channels"):
        load_fpn(path, "RN-tiny", (1, 2, 3), tiny_clip.embed_dim)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_fpn(truncated, "RN-tiny", tiny_clip.feature_channels, tiny_clip.embed_dim)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(CheckpointError, match="without AffordanceCLIP metadata"):
        load_fpn(foreign, "RN-tiny", tiny_clip.feature_channels, tiny_clip.embed_dim)
    with pytest.raises(FileNotFoundError, match="fpn_checkpoint"):
        load_fpn(tmp_path / "missing.safetensors", "RN-tiny", tiny_clip.feature_channels, tiny_clip.embed_dim)


def test_clip_weights_load_from_a_local_file(tmp_path):
    original = open_clip.create_model("RN-tiny", force_quick_gelu=True)
    path = tmp_path / "clip.safetensors"
    save_file({k: v.contiguous() for k, v in original.state_dict().items()}, str(path))
    reloaded = FrozenCLIP.create("RN-tiny", str(path), "cpu")
    pixels = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        torch.testing.assert_close(reloaded.image_features(pixels).global_embedding,
                                   original.eval().encode_image(pixels), rtol=1e-4, atol=1e-5)
        tokens = open_clip.get_tokenizer("RN-tiny")(["pour"])
        torch.testing.assert_close(reloaded.encode_text(["pour"]),
                                   torch.nn.functional.normalize(original.encode_text(tokens), dim=-1))
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        FrozenCLIP.create("RN-tiny", str(tmp_path / "nope.safetensors"), "cpu")
    with pytest.raises(ValueError, match="Valid: an existing file path, 'none', or one of"):
        FrozenCLIP.create("RN101", "laion-someday", "cpu")


def test_missing_clip_download_fails_fast_with_instructions(tmp_path):
    """Offline, open_clip alone retries for about a minute; we fail at once with one clear message."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "XDG_CACHE_HOME": str(tmp_path)}
    # Timed from after the imports, which take seconds on a busy machine and are not the point.
    code = ("import sys, time\n"
            "from affordance_clip_ros.model import FrozenCLIP\n"
            "start = time.monotonic()\n"
            "try:\n"
            "    FrozenCLIP.create('RN101', 'openai', 'cpu')\n"
            "finally:\n"
            "    print(f'create took {time.monotonic() - start:.3f} s', file=sys.stderr)\n")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "WeightsNotFoundError" in result.stderr
    for needed in ("open_clip_model.safetensors", "timm/resnet101_clip.openai", "--clip-pretrained"):
        assert needed in result.stderr
    elapsed = float(re.search(r"create took ([0-9.]+) s", result.stderr).group(1))
    assert elapsed < 10.0, f"offline failure took {elapsed:.1f} s"
