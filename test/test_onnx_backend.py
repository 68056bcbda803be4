"""The image-path backends: ONNX Runtime (same heatmaps as torch, any size, cache, int8 gate) and
torch.compile of the torch path."""
from __future__ import annotations

import logging
from dataclasses import replace
from unittest import mock

import numpy as np
import pytest
import torch

from affordance_clip_ros.model import AffordanceGrounder, GrounderConfig
from affordance_clip_ros.model import onnx_backend
from affordance_clip_ros.model.grounder import autocast_dtype, resolve_backend
from affordance_clip_ros.model.onnx_backend import ImagePath, OrtImagePath, build_ort_image_path

from conftest import TINY


@pytest.fixture(scope="module")
def torch_grounder() -> AffordanceGrounder:
    return AffordanceGrounder.from_config(GrounderConfig(**dict(TINY, backend="torch")))


def same_weights(grounder: AffordanceGrounder, **changes) -> AffordanceGrounder:
    """Another grounder on the same CLIP (random weights differ per build) with other settings."""
    return AffordanceGrounder(grounder.clip, grounder.fpn, replace(grounder.config, **changes)).prepare()


def test_auto_backend_is_onnxruntime_on_cpu_and_torch_elsewhere():
    assert resolve_backend("auto", "auto", torch.device("cpu")) == "onnxruntime"
    assert resolve_backend("auto", "auto", torch.device("cuda")) == "torch"
    with pytest.raises(ValueError, match="CPU only"):
        resolve_backend("onnxruntime", "auto", torch.device("cuda"))
    with pytest.raises(ValueError, match="needs backend 'onnxruntime'"):
        resolve_backend("torch", "int8", torch.device("cpu"))
    with pytest.raises(ValueError, match="precision auto, fp32 or int8"):
        resolve_backend("onnxruntime", "fp16", torch.device("cpu"))
    with pytest.raises(ValueError, match="backend must be one of"):
        GrounderConfig(**dict(TINY, backend="tensorrt"))
    # what ONNX Runtime cannot run, auto gives to torch; an explicit contradiction is an error
    assert resolve_backend("auto", "bf16", torch.device("cpu")) == "torch"
    assert resolve_backend("auto", "auto", torch.device("cpu"), compile="default") == "torch"
    with pytest.raises(ValueError, match="applies to backend 'torch'"):
        resolve_backend("onnxruntime", "auto", torch.device("cpu"), compile="default")
    with pytest.raises(ValueError, match="compile must be one of"):
        GrounderConfig(**dict(TINY, compile="fast"))


def test_auto_precision_is_fp16_on_cuda_only_under_compile():
    """Measured on an H200 (docs/performance.md): eager fp16 autocast was slower than fp32 at batch 1,
    compiled with CUDA graphs it was faster."""
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert autocast_dtype("auto", cuda) is None
    assert autocast_dtype("auto", cuda, compile="reduce-overhead") is torch.float16
    assert autocast_dtype("auto", cpu, compile="default") is None
    assert autocast_dtype("fp16", cuda) is torch.float16 and autocast_dtype("bf16", cpu) is torch.bfloat16
    assert autocast_dtype("fp32", cuda, compile="max-autotune") is None


def test_a_compile_that_fails_says_how_to_run_without_it(torch_grounder):
    """No working compiler on the machine (here: inductor pointed at a C++ compiler that does not
    exist, caches off): a clear error at start-up that names the fix."""
    from torch._inductor import config as inductor_config
    with inductor_config.patch({"cpp.cxx": (None, "/nonexistent/c++"), "fx_graph_cache": False}), \
            pytest.raises(RuntimeError, match="compile to 'off'") as failure:
        same_weights(torch_grounder, compile="default", input_size=192)
    assert "InvalidCxxCompiler" in str(failure.value)


def test_compiled_torch_image_path_gives_the_eager_heatmaps(torch_grounder, coffee):
    """compile: the image path is compiled when the grounder is prepared, and changes no heatmap."""
    compiled = same_weights(torch_grounder, compile="default")
    assert compiled.backend == "torch" and hasattr(compiled._embedder, "_torchdynamo_orig_callable")
    prompts = ["drink with", "hold"]
    for ours, reference in zip(compiled.predict(coffee, prompts), torch_grounder.predict(coffee, prompts)):
        assert np.abs(ours.heatmap - reference.heatmap).max() < 1e-4
        assert [(p.u, p.v) for p in ours.peaks] == [(p.u, p.v) for p in reference.peaks]


def test_default_cpu_backend_heatmaps_match_torch_through_predict(torch_grounder, coffee):
    """auto on CPU: ONNX Runtime, int8 if it passes its fidelity gate (random tiny weights may not)."""
    default = same_weights(torch_grounder, backend="auto", precision="auto")
    assert default.backend == "onnxruntime" and default._embedder.precision in ("int8", "fp32")
    prompts = ["drink with", "hold", "cut with"]
    for ours, reference in zip(default.predict(coffee, prompts), torch_grounder.predict(coffee, prompts)):
        assert ours.heatmap.shape == reference.heatmap.shape == coffee.shape[:2]
        assert np.corrcoef(ours.heatmap.ravel(), reference.heatmap.ravel())[0, 1] >= 0.99


def test_onnxruntime_fp32_heatmaps_equal_torch_through_predict(torch_grounder, coffee):
    ort_grounder = same_weights(torch_grounder, backend="onnxruntime", precision="fp32")
    assert isinstance(ort_grounder._embedder, OrtImagePath) and ort_grounder._embedder.precision == "fp32"
    prompts = ["drink with", "hold"]
    for ours, reference in zip(ort_grounder.predict(coffee, prompts), torch_grounder.predict(coffee, prompts)):
        assert ours.heatmap.shape == reference.heatmap.shape == coffee.shape[:2]
        assert np.corrcoef(ours.heatmap.ravel(), reference.heatmap.ravel())[0, 1] >= 0.99
        assert np.abs(ours.heatmap - reference.heatmap).max() < 1e-3
    # Batched scoring, one prompt per image, takes the same path.
    [a, b] = ort_grounder.heatmaps([coffee, coffee[:, ::-1].copy()], ["hold", "pour"])
    assert a.shape == b.shape == coffee.shape[:2]
    np.testing.assert_allclose(a, ort_grounder.predict(coffee, ["hold"])[0].heatmap, atol=1e-4)


def test_graph_takes_other_sizes_and_batches(torch_grounder):
    ort_grounder = same_weights(torch_grounder, backend="onnxruntime", precision="fp32", input_size=160)
    with torch.inference_mode():
        for shape in [(1, 3, 416, 416), (2, 3, 96, 256)]:
            pixels = torch.randn(shape)
            torch.testing.assert_close(ort_grounder.pixel_embeddings(pixels),
                                       torch_grounder.torch_pixel_embeddings(pixels), rtol=1e-3, atol=1e-4)


def test_engine_cache_is_keyed_by_the_weights(torch_grounder, tmp_path):
    path = ImagePath(torch_grounder.clip, torch_grounder.fpn)
    first = build_ort_image_path(path, 128, "fp32", tmp_path, cacheable=True)
    [cached] = list(tmp_path.glob("*.fp32.onnx"))
    with mock.patch.object(onnx_backend, "export_onnx", side_effect=AssertionError("re-exported")):
        again = build_ort_image_path(path, 128, "fp32", tmp_path, cacheable=True)
    pixels = torch.randn(1, 3, 128, 128)
    torch.testing.assert_close(first(pixels), again(pixels))
    other = AffordanceGrounder.from_config(GrounderConfig(**dict(TINY, backend="torch", random_seed=1)))  # others
    build_ort_image_path(ImagePath(other.clip, other.fpn), 128, "fp32", tmp_path, cacheable=True)
    assert len(list(tmp_path.glob("*.fp32.onnx"))) == 2 and cached.exists()
    build_ort_image_path(path, 128, "fp32", tmp_path / "none", cacheable=False)
    assert not (tmp_path / "none").exists(), "random weights (cacheable False) are never cached"


def test_int8_schemes_keep_the_stem_and_fpn_in_fp32_and_quantise_shortcuts_first():
    from onnx import helper

    names = ["/conv1/Conv", "/conv2/Conv", "/conv3/Conv", "/layer1/layer1.0/conv1/Conv",
             "/layer2/layer2.0/downsample/downsample.0/Conv", "/layer3/layer3.5/conv3/Conv",
             "/layer4/layer4.0/conv2/Conv", "/layer4/layer4.0/downsample/downsample.0/Conv", "/fpn/project/0/Conv"]
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name=n) for n in names]
    nodes.append(helper.make_node("Relu", ["y"], ["z"], name="/conv1/Relu"))
    shortcuts, branches = onnx_backend.INT8_SCHEMES  # tried in this order
    assert onnx_backend.excluded_convs(nodes, shortcuts.exclude) == [
        "/conv1/Conv", "/conv2/Conv", "/conv3/Conv", "/layer4/layer4.0/downsample/downsample.0/Conv",
        "/fpn/project/0/Conv"]
    assert onnx_backend.excluded_convs(nodes, branches.exclude) == [
        "/conv1/Conv", "/conv2/Conv", "/conv3/Conv", "/layer2/layer2.0/downsample/downsample.0/Conv",
        "/layer4/layer4.0/downsample/downsample.0/Conv", "/fpn/project/0/Conv"]
    assert onnx_backend.excluded_convs(nodes, exclude=()) == []


@pytest.mark.parametrize("scheme", onnx_backend.INT8_SCHEMES, ids=lambda s: s.name)
def test_int8_quantises_the_trunk_but_not_its_residual_stream(tiny_clip, scheme):
    """The residual branches' convs of layer1-4 are quantised (and, by the first scheme, the
    shortcuts of layer1-3); the residual additions and the fp32 convs read unrounded tensors (only
    a quantised conv's own output is rounded)."""
    import io

    import onnx

    from affordance_clip_ros.model import AffordanceFPN, FPNConfig

    fpn = AffordanceFPN(FPNConfig(tiny_clip.feature_channels, tiny_clip.embed_dim, width=16)).eval()
    buffer = io.BytesIO()
    onnx_backend.export_onnx(ImagePath(tiny_clip, fpn), buffer, input_size=96)
    model = onnx.load_from_string(onnx_backend.quantize_int8(buffer.getvalue(), [torch.randn(1, 3, 96, 96)],
                                                             scheme.exclude))
    producer = {out: node for node in model.graph.node for out in node.output}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    quantised = {n.name for n in convs if getattr(producer.get(n.input[1]), "op_type", "") == "DequantizeLinear"}
    assert {"/layer1/layer1.0/conv1/Conv", "/layer2/layer2.0/conv2/Conv", "/layer3/layer3.0/conv3/Conv",
            "/layer4/layer4.0/conv2/Conv"} <= quantised
    assert all(name.startswith(("/layer1/", "/layer2/", "/layer3/", "/layer4/")) for name in quantised)
    shortcuts = {n.name for n in convs if "/downsample/" in n.name and not n.name.startswith("/layer4/")}
    assert shortcuts and (shortcuts <= quantised if scheme.name == "int8-shortcuts" else not shortcuts & quantised)
    kept = {n.name for n in convs} - quantised
    assert kept == set(onnx_backend.excluded_convs(convs, scheme.exclude))
    assert {"/conv1/Conv", "/conv2/Conv", "/conv3/Conv", "/layer4/layer4.0/downsample/downsample.0/Conv"} <= kept
    assert any(name.startswith("/fpn/") for name in kept)

    def rounded_from(name: str) -> str | None:
        """The op whose output was quantised and dequantised into ``name`` (None: not a rounded copy)."""
        dequantise = producer.get(name)
        if getattr(dequantise, "op_type", "") != "DequantizeLinear" or dequantise.input[0] not in producer:
            return None  # not a rounded copy, or a constant's (weight, bias)
        return producer[producer[dequantise.input[0]].input[0]].op_type
    adds = [n for n in model.graph.node if n.op_type == "Add" and "/layer" in n.name]
    assert adds and all(rounded_from(name) in (None, "Conv") for add in adds for name in add.input)
    readers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    for node in model.graph.node:  # a rounded block output feeds only integer ops (a pooling then rounded again)
        if any(rounded_from(name) == "Relu" for name in node.input):
            assert node.name in quantised or all(r.op_type == "QuantizeLinear" for r in readers[node.output[0]]), \
                node.name
    assert all(rounded_from(n.input[0]) is None for n in convs if n.name in kept)


def test_calibration_uses_natural_photos_other_than_the_check_photos():
    """int8 ranges come from scikit-image photos, letterboxed as the model sees them; the gate
    checks on other photos, so it does not grade int8 on the images it was calibrated on."""
    assert not set(onnx_backend.CALIBRATION_PHOTOS) & set(onnx_backend.CHECK_PHOTOS)
    photos = onnx_backend.photo_pixels(onnx_backend.CALIBRATION_PHOTOS, 96)
    assert len(photos) == len(onnx_backend.CALIBRATION_PHOTOS) >= 3
    for pixels in photos:
        assert pixels.shape == (1, 3, 96, 96) and pixels.dtype == torch.float32
        assert pixels.std() > 0.3 and -3 < pixels.mean() < 3  # normalised photo content, not blank padding


def test_int8_passes_its_gate_on_tiny_random_weights_at_several_seeds():
    """The schemes, with the real threshold: no seed of RN-tiny falls back to fp32. open_clip's
    random weights zero every residual branch, so the whole signal runs through the shortcuts; the
    gate refuses them in int8 (0.956-0.980) and the second scheme, shortcuts in fp32, is used."""
    for seed in range(3):
        grounder = AffordanceGrounder.from_config(GrounderConfig(**dict(
            TINY, backend="onnxruntime", precision="int8", random_seed=seed, input_size=96)))
        assert (grounder.image_path_precision, grounder.int8_scheme) == ("int8", "int8-branches"), seed
        assert grounder.int8_gate_correlation >= onnx_backend.INT8_MIN_CORRELATION


def test_the_int8_scheme_that_passed_is_cached_and_loaded_at_the_next_start(tmp_path):
    """Random RN-tiny weights pass the gate with the second scheme only; a later start loads that
    engine, under its scheme, without exporting or quantising again."""
    grounder = AffordanceGrounder.from_config(GrounderConfig(**dict(TINY, random_seed=0)))
    path = ImagePath(grounder.clip, grounder.fpn)
    built = build_ort_image_path(path, 96, "int8", tmp_path, cacheable=True)
    assert (built.precision, built.scheme) == ("int8", "int8-branches")
    assert [p.name.split(".", 1)[1] for p in tmp_path.iterdir()] == ["int8-branches.onnx"]
    with mock.patch.object(onnx_backend, "export_onnx", side_effect=AssertionError("re-exported")), \
            mock.patch.object(onnx_backend, "quantize_int8", side_effect=AssertionError("re-quantised")):
        again = build_ort_image_path(path, 96, "int8", tmp_path, cacheable=True)
    assert (again.precision, again.scheme) == ("int8", "int8-branches")
    pixels = torch.randn(1, 3, 96, 96)
    torch.testing.assert_close(built(pixels), again(pixels))


def test_int8_is_kept_only_when_faithful(torch_grounder, caplog):
    path = ImagePath(torch_grounder.clip, torch_grounder.fpn)
    caplog.set_level(logging.INFO, logger=onnx_backend.__name__)
    with mock.patch.object(onnx_backend, "INT8_MIN_CORRELATION", -1.0):
        kept = build_ort_image_path(path, 96, "int8", None, cacheable=False)
    assert (kept.precision, kept.scheme) == ("int8", onnx_backend.INT8_SCHEMES[0].name)
    assert kept(torch.randn(1, 3, 96, 96)).shape == (1, 64, 3, 3)
    assert "random weights: at every start, not cached" in caplog.text  # never claims a cache it skips
    caplog.clear()
    with mock.patch.object(onnx_backend, "INT8_MIN_CORRELATION", 1.01):
        refused = build_ort_image_path(path, 96, "int8", None, cacheable=False)
    assert (refused.precision, refused.scheme) == ("fp32", None)
    assert all(f"int8 scheme {scheme.name}: heatmaps correlate only" in caplog.text
               for scheme in onnx_backend.INT8_SCHEMES)  # each scheme tried before giving up
    assert "using ONNX Runtime fp32 instead" in caplog.text
    assert refused.gate_correlation >= kept.gate_correlation - 1e-6  # the best refused scheme's figure
