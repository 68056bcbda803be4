"""The CUDA-graph image path: chosen by default on CUDA only, the same heatmaps as eager where
CUDA exists, and eager with one warning when recording fails; grounder results kept on the device."""
from __future__ import annotations

import logging
import threading
from contextlib import nullcontext
from dataclasses import replace

import numpy as np
import pytest
import torch

from affordance_clip_ros.model import AffordanceGrounder, GrounderConfig, find_peaks
from affordance_clip_ros.model import cuda_graphs
from affordance_clip_ros.model.cuda_graphs import GraphedImagePath
from affordance_clip_ros.model.grounder import autocast_dtype, resolve_image_path
from affordance_clip_ros.ros.inference import predict_frames

from conftest import TINY

CUDA, CPU = torch.device("cuda"), torch.device("cpu")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA missing")


def test_auto_is_cuda_graphs_for_the_torch_path_on_cuda_only():
    assert resolve_image_path("auto", "torch", CUDA) == "cuda-graphs"
    assert resolve_image_path("auto", "torch", CPU) == "off"
    assert resolve_image_path("auto", "onnxruntime", CPU) == "off"
    assert resolve_image_path("reduce-overhead", "torch", CUDA) == "reduce-overhead"
    with pytest.raises(ValueError, match="needs a CUDA device"):
        resolve_image_path("cuda-graphs", "torch", CPU)
    assert autocast_dtype("auto", CUDA, "cuda-graphs") is torch.float16
    assert autocast_dtype("auto", CUDA, "off") is None


def test_a_cpu_grounder_runs_eagerly(tiny_grounder):
    assert tiny_grounder.config.compile == "auto" and tiny_grounder.image_path_mode == "off"
    assert not isinstance(tiny_grounder._embedder, GraphedImagePath) and tiny_grounder.dtype is None


def test_a_failed_recording_runs_eagerly_after_one_warning(monkeypatch, caplog):
    """Whatever recording raises (here: forced, since this path needs CUDA), every batch size runs
    eagerly with the same results, and the warning comes once."""
    def refuse(*args, **kwargs):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(cuda_graphs, "capture", refuse)
    weights = torch.randn(4, 3, 1, 1)
    path = GraphedImagePath(lambda x: torch.nn.functional.conv2d(x, weights), nullcontext)
    with caplog.at_level(logging.WARNING, logger=cuda_graphs.__name__):
        for batch in (1, 1, 2):
            pixels = torch.randn(batch, 3, 8, 8)
            assert torch.equal(path(pixels), torch.nn.functional.conv2d(pixels, weights))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "running it eagerly" in warnings[0].getMessage()
    assert path.failed and not path.graphs


def test_predict_tensors_are_predict_batchs_results(tiny_grounder, coffee):
    prompts = ["drink with", "hold"]
    [device] = tiny_grounder.predict_tensors([coffee], prompts)
    [host] = tiny_grounder.predict_batch([coffee], prompts)
    assert device.prompts == prompts and device.maps.shape == (2, *coffee.shape[:2])
    for i, prediction in enumerate(host):
        assert np.array_equal(device.maps[i].numpy(), prediction.heatmap)
        cfg = tiny_grounder.config
        assert device.peaks[i] == prediction.peaks == find_peaks(prediction.heatmap, cfg.num_peaks,
                                                                 cfg.peak_threshold, cfg.peak_min_distance)


@needs_cuda
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_graphs_give_the_eager_heatmaps_and_peaks(coffee, precision):
    graphed = AffordanceGrounder.from_config(GrounderConfig(**dict(TINY, device="cuda", precision=precision)))
    eager = AffordanceGrounder(graphed.clip, graphed.fpn, replace(graphed.config, compile="off")).prepare()
    assert graphed.image_path_mode == "cuda-graphs" and isinstance(graphed._embedder, GraphedImagePath)
    images, prompts = [coffee, coffee[::2, ::3].copy()], ["drink with", "hold"]
    for batch in ([coffee], images):  # batch 1 recorded at start-up, batch 2 on first use
        first = graphed.predict_tensors(batch, prompts)
        graphed.predict_tensors(images[::-1], prompts)  # a later replay must not change earlier results
        for ours, reference in zip(first, eager.predict_tensors(batch, prompts)):
            assert torch.allclose(ours.maps, reference.maps, atol=1e-5 if precision == "fp32" else 2e-3)
    assert not graphed._embedder.failed and len(graphed._embedder.graphs) == 2
    [device] = graphed.predict_tensors([coffee], prompts)
    assert device.maps.is_cuda
    assert device.peaks == [find_peaks(m, 5, 0.3, 20) for m in device.maps.cpu().numpy()]


@needs_cuda
def test_publishing_on_another_thread_while_the_next_frame_is_inferred(coffee):
    """The node's publishing stage makes a frame's published forms on its own CUDA stream while the
    worker infers the next frame: they are the frame's own, as when made one after the other."""
    grounder = AffordanceGrounder.from_config(GrounderConfig(**dict(TINY, device="cuda")))
    images, prompts = [coffee, np.ascontiguousarray(coffee[::-1])], ["hold", "cut with"]
    [alone] = predict_frames(grounder, [images[0]], prompts)
    expected_maps, _ = alone.result_maps(150, "mono8")
    expected_overlay = alone.overlay(images[0]).astype(int)
    def publish(frame, got: dict) -> None:
        got.update(maps=frame.result_maps(150, "mono8")[0], overlay=frame.overlay(images[0]))

    for _ in range(5):
        [frame] = predict_frames(grounder, [images[0]], prompts)
        got = {}
        stage = threading.Thread(target=publish, args=(frame, got))
        stage.start()
        predict_frames(grounder, [images[1]] * 4, prompts)  # the worker's next batch, meanwhile
        stage.join()
        for ours, expected in zip(got["maps"], expected_maps):
            assert np.abs(ours.astype(int) - expected.astype(int)).max() <= 1
        assert np.abs(got["overlay"].astype(int) - expected_overlay).max() <= 2
