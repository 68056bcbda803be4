"""`affordance-clip benchmark`: model speed and memory figures, printed and written as JSON.

Timings use random CLIP weights (speed does not depend on weight values). Ratios are measured
in one run, so they are comparable even on a noisy machine.
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import logging
import os
import platform
import resource
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import skimage.data
import torch

from .cli_common import add_model_arguments
from .model import AffordanceFPN, AffordanceGrounder, FPNConfig, GrounderConfig, find_peaks, pixel_text_logits
from .model.device_postprocess import blend_heatmap_torch, find_peaks_torch
from .model.fidelity import FIDELITY_PROMPTS, min_correlation
from .model.grounder import create_clip, onnxruntime_available, resolve_device
from .model.letterbox import letterbox_batch, unletterbox
from .visualization import draw_overlay

log = logging.getLogger(__name__)
PHOTOS = ("coffee", "astronaut", "chelsea", "rocket")
# Figures every run writes (docs/performance.md documents them). At 416, plus "<name>_<size>" for each size
# of PER_SIZE_KEYS; CPU runs add CPU_KEYS; CUDA runs add peak_gpu_mb, the same fast-path figures
# with cuda_ in place of cpu_ (the default path, CUDA graphs fp16, against naive fp32; torch_fp32_*:
# CUDA graphs fp32, torch_eager_fp32_*: no graphs, torch_compiled_* / torch_compiled_fp32_*:
# torch.compile reduce-overhead) and "<name>_fp32" for each figure of the sizes loop.
PER_SIZE_KEYS = ("backbone_ms", "head_ms", "image_path_ms", "full_ms_1_prompt", "full_ms_16_prompts",
                 "predict_ms_1_prompt", "predict_ms_16_prompts")
POSTPROCESS_KEYS = ("peaks_host_ms_16_prompts", "peaks_device_ms_16_prompts", "overlay_host_ms", "overlay_device_ms")
DOCUMENTED_KEYS = ("clip_model", "device", "torch", "machine", "threads", "backend", "image_path_mode",
                   "image_path_build_s", *PER_SIZE_KEYS, "fps_model", "head_overhead_ratio", "prompt_scaling_16_vs_1",
                   "predict_scaling_16_vs_1", *POSTPROCESS_KEYS, "peak_rss_mb")
CPU_KEYS = ("default_backend", "naive_fp32_ms", "fast_path_ms", "cpu_speedup_vs_naive_fp32", "cpu_fast_path_corr",
            "torch_fp32_ms", "torch_fp32_speedup_vs_naive_fp32", "torch_fp32_corr",
            "ort_fp32_ms", "ort_fp32_speedup_vs_naive_fp32", "ort_fp32_corr")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn: Callable[[], object], repeats: int, warmup: int, device: torch.device) -> float:
    """Median wall time of ``fn`` in milliseconds, synchronising CUDA around each call."""
    return interleaved_medians({"fn": fn}, repeats, warmup, device)["fn"]


def interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int, warmup: int,
                        device: torch.device) -> dict[str, float]:
    """Median ms of each function, timed round-robin (one call of each per round), so that a
    burst of load on a shared machine slows every candidate alike and ratios stay comparable."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: float(np.median(t)) for name, t in times.items()}


def build_grounder(clip_model: str, device: str, precision: str, input_size: int, levels: int = 3,
                   backend: str = "auto") -> AffordanceGrounder:
    """A grounder in FPN mode with random CLIP and FPN weights. Its image path is built on first
    use (or by ``prepare()``), so weights loaded before that are the ones exported."""
    config = GrounderConfig(clip_model=clip_model, clip_pretrained="none", device=device, precision=precision,
                            input_size=input_size, backend=backend)
    clip = create_clip(config).to(resolve_device(device))  # text weights from config.random_seed: same every run
    torch.manual_seed(0)
    fpn = AffordanceFPN(FPNConfig(clip.feature_channels, clip.embed_dim, levels=levels)).to(clip.device)
    return AffordanceGrounder(clip, fpn, config)


def naive_forward(clip_model: str, grounder: AffordanceGrounder
                  ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The same model run the plain way: unfolded BatchNorm, contiguous tensors, fp32, no autocast."""
    import open_clip

    raw = open_clip.create_model(clip_model, force_quick_gelu=True).to(grounder.device).eval()
    raw.visual.load_state_dict(_unfolded_state(grounder, raw), strict=True)
    clip = grounder.clip
    fpn = copy.deepcopy(grounder.fpn).to(memory_format=torch.contiguous_format).float()

    @torch.inference_mode()
    def forward(pixels: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        out = raw.visual.forward_intermediates(pixels.contiguous(), indices=[2, 3, 4], intermediates_only=True)
        f1, f2, f3 = out["image_intermediates"]
        from .model.clip_backbone import ImageFeatures
        feats = ImageFeatures(f1, f2, f3, clip.attention_pool(f3))
        return pixel_text_logits(fpn(feats), text)
    return forward


def _unfolded_state(grounder: AffordanceGrounder, raw) -> dict:
    """Random weights with the structure of the raw model; the folded grounder copies them so
    both compute the same function (folding is exact)."""
    from .model.clip_backbone import fold_batchnorm

    torch.manual_seed(1)
    state = {k: (torch.randn_like(v) * 0.02 if v.dtype.is_floating_point and "running_var" not in k else v)
             for k, v in raw.visual.state_dict().items()}
    for k in state:
        if k.endswith("running_var"):
            state[k] = torch.rand_like(state[k]) + 0.5
        elif k.endswith(".weight") and state[k].dim() == 1:
            state[k] = torch.rand_like(state[k]) + 0.5
    raw.visual.load_state_dict(state)
    folded = copy.deepcopy(raw.visual)
    fold_batchnorm(folded)
    grounder.clip.model.visual.load_state_dict(folded.state_dict())
    grounder.clip.model.visual.to(memory_format=torch.channels_last)
    return state


def describe_cpu() -> str:
    """'AMD EPYC, 2 cores, avx512_vnni': the CPU model, the cores this process may use, int8 dot-product support."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                 platform.processor() or platform.machine())
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    vnni = [f for f in ("avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    return ", ".join([model, f"{len(os.sched_getaffinity(0))} cores", *vnni])


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_benchmark(clip_model: str, device: str, sizes: tuple[int, ...], repeats: int, warmup: int,
                  backend: str = "auto", extra_paths: bool = True) -> dict:
    """All figures of the benchmark as a flat dict."""
    dev = resolve_device(device)
    image = skimage.data.coffee()
    prompts16 = [f"action {i}" for i in range(16)]
    results: dict = {"clip_model": clip_model, "device": str(dev), "torch": torch.__version__,
                     "machine": torch.cuda.get_device_name(dev) if dev.type == "cuda" else describe_cpu(),
                     "threads": torch.get_num_threads(), "repeats": repeats,
                     "load_avg_start": os.getloadavg()[0]}
    if dev.type == "cuda":
        results["peak_gpu_mb"] = default_path_gpu_mb(clip_model, device, backend, image, prompts16)
    fast, grounder416 = fast_paths(clip_model, device, repeats, warmup, backend, extra_paths)
    results.update(fast)
    results.update(postprocess_figures(grounder416, image, prompts16, repeats, warmup))
    reused = {416: grounder416}
    precisions = ("auto", "fp32") if dev.type == "cuda" else ("auto",)  # auto: fp16 on CUDA (CUDA graphs)
    for precision in precisions:
        suffix = "" if precision == "auto" else f"_{precision}"
        for size in sizes:
            grounder = reused.pop(size, None) or build_grounder(clip_model, device, precision, size, backend=backend)
            start = time.perf_counter()
            if not grounder.prepared:
                grounder.prepare()
            build_s = time.perf_counter() - start
            figures = time_grounder(grounder, image, prompts16, repeats, warmup)
            results[f"backend{suffix}"] = describe_backend(grounder)
            results[f"image_path_mode{suffix}"] = grounder.image_path_mode
            for name, value in figures.items():
                results[f"{name}{suffix}_{size}"] = value
            if size == 416:
                for name in PER_SIZE_KEYS:
                    results[f"{name}{suffix}"] = figures[name]
                results[f"fps_model{suffix}"] = 1e3 / figures["image_path_ms"]
                results.setdefault(f"image_path_build_s{suffix}", build_s)
                if not suffix:
                    results["head_overhead_ratio"] = figures["head_ms"] / figures["backbone_ms"]
                    results["prompt_scaling_16_vs_1"] = figures["full_ms_16_prompts"] / figures["full_ms_1_prompt"]
                    results["predict_scaling_16_vs_1"] = (figures["predict_ms_16_prompts"]
                                                          / figures["predict_ms_1_prompt"])
            del grounder
            free_memory(dev)
    results["peak_rss_mb"] = peak_rss_mb()
    results["load_avg_end"] = os.getloadavg()[0]  # 1-minute load average: other work on a shared machine
    return results


def postprocess_figures(grounder: AffordanceGrounder, image: np.ndarray, prompts: list[str], repeats: int,
                        warmup: int) -> dict:
    """Post-processing of 16 maps at image size, on the host as before (copy every map, OpenCV
    peaks; OpenCV blend) against on the maps' device (torch peaks, only candidates copied; blend
    there, the bgr8 overlay copied): median ms, round-robin. On the CPU both run on the CPU."""
    cfg = grounder.config
    [maps] = grounder.heatmap_tensors([image], prompts)
    pixels = torch.from_numpy(image).to(grounder.device)

    def host_peaks():
        return [find_peaks(m, cfg.num_peaks, cfg.peak_threshold, cfg.peak_min_distance) for m in maps.cpu().numpy()]

    return interleaved_medians({
        "peaks_host_ms_16_prompts": host_peaks,
        "peaks_device_ms_16_prompts": lambda: find_peaks_torch(maps, cfg.num_peaks, cfg.peak_threshold,
                                                               cfg.peak_min_distance),
        "overlay_host_ms": lambda: draw_overlay(image, maps[0].cpu().numpy()),
        "overlay_device_ms": lambda: blend_heatmap_torch(pixels, maps[0]).cpu().numpy(),
    }, repeats, warmup, grounder.device)


def default_path_gpu_mb(clip_model: str, device: str, backend: str, image: np.ndarray, prompts: list[str]) -> float:
    """Peak CUDA memory (MiB) that PyTorch allocates for the default path alone, in steady state:
    weights, 16 prompts, maps and peaks at 416 (the CUDA context itself is not counted). The first
    frame is left out: cudnn.benchmark's one-time trials allocate extra workspace."""
    dev = resolve_device(device)
    free_memory(dev)
    grounder = build_grounder(clip_model, device, "auto", 416, backend=backend).prepare()
    grounder.predict(image, prompts)
    torch.cuda.synchronize(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    grounder.predict(image, prompts)
    peak = torch.cuda.max_memory_allocated(dev) / 2**20
    del grounder
    free_memory(dev)
    return peak


def free_memory(device: torch.device) -> None:
    """Free dropped grounders now (a grounder's image path refers back to it, so only the cycle
    collector frees it), so that the next figure starts from the same memory."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def time_grounder(grounder: AffordanceGrounder, image: np.ndarray, prompts16: list[str], repeats: int,
                  warmup: int) -> dict:
    """backbone_ms / head_ms: the torch trunk and torch FPN + dot-product head, apart (what the
    head costs next to the trunk); image_path_ms: trunk + FPN + head by the configured backend;
    full_ms_*: image to probability maps on the device; predict_ms_*: plus host copy and peaks."""
    size = grounder.config.input_size
    pixels = torch.randn(1, 3, size, size, device=grounder.device).contiguous(memory_format=torch.channels_last)
    text1 = grounder.text_embeddings(["cut with"])
    grounder.text_embeddings(prompts16)  # cached, as in the node
    with torch.inference_mode(), grounder.autocast():
        features = grounder.clip.image_features(pixels)
        model = interleaved_medians({
            "backbone_ms": lambda: grounder.clip.image_features(pixels),
            "head_ms": lambda: pixel_text_logits(grounder.fpn(features), text1),
            "image_path_ms": lambda: pixel_text_logits(grounder.pixel_embeddings(pixels), text1),
        }, repeats, warmup, grounder.device)
    full = interleaved_medians({
        "full_ms_1_prompt": lambda: grounder.heatmap_tensors([image], ["cut with"]),
        "full_ms_16_prompts": lambda: grounder.heatmap_tensors([image], prompts16),
        "predict_ms_1_prompt": lambda: grounder.predict(image, ["cut with"]),
        "predict_ms_16_prompts": lambda: grounder.predict(image, prompts16),
    }, repeats, warmup, grounder.device)
    return {**model, **full}


def describe_backend(grounder: AffordanceGrounder) -> str:
    """'torch-fp32', 'torch-fp16', 'onnxruntime-int8', ... : what actually runs the image path."""
    return f"{grounder.backend}-{grounder.image_path_precision}"


def fast_paths(clip_model: str, device: str, repeats: int, warmup: int, backend: str = "auto",
               extra_paths: bool = True) -> tuple[dict, AffordanceGrounder]:
    """The default image path, and the alternatives on the device, vs the naive fp32 contiguous
    torch forward of the same weights at 416: speed (timed round-robin in one run) and heatmap
    fidelity (min Pearson over photos x prompts of the probability maps). Also returns the default
    grounder. ``extra_paths``: also the slow-to-build ones (int8 quantisation, torch.compile)."""
    grounder = build_grounder(clip_model, device, "auto", 416, backend=backend)
    naive = naive_forward(clip_model, grounder)  # also loads its weights into the grounder
    on_cpu = grounder.device.type == "cpu"
    # torch fp32 (CPU: eager, where the default is ONNX Runtime; CUDA: CUDA graphs, where the default is fp16)
    alternatives = {"torch_fp32": dict(backend="torch", precision="fp32")}
    if not on_cpu:  # the eager path without graphs, the default before them
        alternatives["torch_eager_fp32"] = dict(backend="torch", precision="fp32", compile="off")
    if on_cpu and onnxruntime_available():
        alternatives["ort_fp32"] = dict(backend="onnxruntime", precision="fp32")
        if extra_paths:  # int8 with the grounder's own fidelity gate
            alternatives["ort_int8"] = dict(backend="onnxruntime", precision="int8")
    if extra_paths:
        alternatives["torch_compiled"] = dict(backend="torch", precision="fp32" if on_cpu else "fp16",
                                              compile="default" if on_cpu else "reduce-overhead")
        if not on_cpu:  # does fp16 still pay once CUDA graphs have removed the launch overhead?
            alternatives["torch_compiled_fp32"] = dict(backend="torch", precision="fp32", compile="reduce-overhead")
    variants = {"default": grounder}
    variants.update({name: AffordanceGrounder(grounder.clip, grounder.fpn, replace(grounder.config, **changes))
                     for name, changes in alternatives.items()})
    build_s = {}
    for name, variant in variants.items():
        start = time.perf_counter()
        variant.prepare()
        build_s[name] = time.perf_counter() - start
    text = grounder.text_embeddings(["cut with"])
    pixels = torch.randn(1, 3, 416, 416, device=grounder.device)
    fns = {"naive_fp32": lambda: naive(pixels, text)}
    for name, variant in variants.items():
        fns[name] = lambda variant=variant: pixel_text_logits(autocast_image_path(variant)(pixels), text)
    with torch.inference_mode():
        times = interleaved_medians(fns, repeats, warmup, grounder.device)
    kind = grounder.device.type
    results = {"default_backend": describe_backend(grounder), "image_path_build_s": build_s["default"],
               "naive_fp32_ms": times["naive_fp32"], "fast_path_ms": times["default"],
               f"{kind}_speedup_vs_naive_fp32": times["naive_fp32"] / times["default"],
               f"{kind}_fast_path_corr": fidelity(grounder, naive, autocast_image_path(grounder))}
    for name, variant in variants.items():
        if name == "default":
            continue
        results[f"{name}_ms"] = times[name]
        results[f"{name}_speedup_vs_naive_fp32"] = times["naive_fp32"] / times[name]
        results[f"{name}_corr"] = fidelity(grounder, naive, autocast_image_path(variant))
        results[f"{name}_build_s"] = build_s[name]
    results["int8_gate_corr"] = grounder.int8_gate_correlation  # the default path's gate (None: not int8 tried)
    results["int8_scheme"] = grounder.int8_scheme
    if "ort_int8" in variants:
        results["ort_int8_kept"] = variants["ort_int8"].image_path_precision == "int8"  # False: refused by its gate
        results["ort_int8_gate_corr"] = variants["ort_int8"].int8_gate_correlation
        results["ort_int8_scheme"] = variants["ort_int8"].int8_scheme
    return results, grounder


def autocast_image_path(grounder: AffordanceGrounder) -> Callable[[torch.Tensor], torch.Tensor]:
    """The grounder's image path under its own autocast, as heatmap_tensors runs it."""
    def embed(pixels: torch.Tensor) -> torch.Tensor:
        with grounder.autocast():
            return grounder.pixel_embeddings(pixels)
    return embed


@torch.inference_mode()
def fidelity(grounder: AffordanceGrounder, naive: Callable, embed: Callable) -> float:
    """Min Pearson correlation, over the scikit-image photos and a few prompts, between the
    probability maps (image resolution) of ``embed`` and of the naive fp32 forward."""
    text = grounder.text_embeddings(FIDELITY_PROMPTS)

    def maps(name: str) -> tuple[torch.Tensor, torch.Tensor]:
        photo = torch.from_numpy(getattr(skimage.data, name)()).to(grounder.device)
        pixels, [box] = letterbox_batch([photo], 416)
        reference = grounder.probabilities(unletterbox(naive(pixels, text)[0].float(), box))
        candidate = grounder.probabilities(unletterbox(pixel_text_logits(embed(pixels), text)[0].float(), box))
        return reference, candidate
    return min_correlation(maps(name) for name in PHOTOS)


def print_table(results: dict) -> None:
    width = max(len(k) for k in results)
    for key, value in results.items():
        shown = f"{value:.3f}" if isinstance(value, float) else str(value)
        print(f"{key:<{width}}  {shown}")


def run(args: argparse.Namespace) -> int:
    sizes = (416,) if args.short else tuple(args.sizes)
    clip_model = "RN-tiny" if args.short and args.clip_model == "RN101" else args.clip_model
    results = run_benchmark(clip_model, args.device, sizes, args.repeats, args.warmup, args.backend,
                            extra_paths=not args.short)
    print_table(results)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "benchmark", help="model speed and memory figures",
        description="Time the image path, the head, whole-image inference for 1 and 16 prompts and, on CPU, the "
                    "default path against a naive fp32 torch forward (speed and heatmap correlation). Random "
                    "weights; ratios come from one run, timed round-robin.")
    add_model_arguments(parser, names=("clip_model", "device", "backend"), templates=False)
    parser.add_argument("--sizes", type=int, nargs="+", default=[320, 416, 640], help="model input sizes")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per figure (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs first")
    parser.add_argument("--short", action="store_true",
                        help="CI mode: RN-tiny at 416 only, the documented keys (no int8 or torch.compile figures)")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    parser.set_defaults(func=run)
