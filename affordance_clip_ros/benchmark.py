"""`affordance-clip benchmark`: model speed and memory figures, printed and written as JSON.

Timings use random CLIP weights (speed does not depend on weight values). Ratios are measured
in one run, so they are comparable even on a noisy machine.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import platform
import resource
import time
from pathlib import Path
from typing import Callable

import numpy as np
import skimage.data
import torch

from .model import AffordanceFPN, AffordanceGrounder, FPNConfig, FrozenCLIP, GrounderConfig, pixel_text_logits
from .model.grounder import resolve_device

log = logging.getLogger(__name__)
PHOTOS = ("coffee", "astronaut", "chelsea", "rocket")


def median_ms(fn: Callable[[], object], repeats: int, warmup: int, device: torch.device) -> float:
    """Median wall time of ``fn`` in milliseconds, synchronising CUDA around each call."""
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times))


def build_grounder(clip_model: str, device: str, precision: str, input_size: int, levels: int = 3) -> AffordanceGrounder:
    """A grounder in FPN mode with random CLIP and FPN weights."""
    config = GrounderConfig(clip_model=clip_model, clip_pretrained="none", device=device, precision=precision,
                            input_size=input_size)
    clip = FrozenCLIP.create(clip_model, "none", resolve_device(device))
    torch.manual_seed(0)
    fpn = AffordanceFPN(FPNConfig(clip.feature_channels, clip.embed_dim, levels=levels)).to(clip.device)
    return AffordanceGrounder(clip, fpn, config)


def naive_forward(clip_model: str, grounder: AffordanceGrounder) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
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


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_benchmark(clip_model: str, device: str, sizes: tuple[int, ...], repeats: int, warmup: int) -> dict:
    """All figures of the benchmark as a flat dict."""
    dev = resolve_device(device)
    image = skimage.data.coffee()
    prompts16 = [f"action {i}" for i in range(16)]
    results: dict = {"clip_model": clip_model, "device": str(dev), "torch": torch.__version__,
                     "machine": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor()
                     or platform.machine(), "threads": torch.get_num_threads(), "repeats": repeats}
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.cuda.reset_peak_memory_stats(dev)
    precisions = ("fp32", "fp16") if dev.type == "cuda" else ("auto",)
    for precision in precisions:
        suffix = "" if precision in ("auto", "fp16") else f"_{precision}"
        for size in sizes:
            grounder = build_grounder(clip_model, device, precision, size)
            pixels = torch.randn(1, 3, size, size, device=dev).contiguous(memory_format=torch.channels_last)
            text1 = grounder.text_embeddings(["cut with"])
            grounder.text_embeddings(prompts16)  # cache the text
            with torch.inference_mode(), grounder._autocast():
                features = grounder.clip.image_features(pixels)
                backbone = median_ms(lambda: grounder.clip.image_features(pixels), repeats, warmup, dev)
                head = median_ms(lambda: pixel_text_logits(grounder.fpn(features), text1), repeats, warmup, dev)
            full1 = median_ms(lambda: grounder.heatmap_tensors([image], ["cut with"]), repeats, warmup, dev)
            full16 = median_ms(lambda: grounder.heatmap_tensors([image], prompts16), repeats, warmup, dev)
            results[f"backbone_ms{suffix}_{size}"] = backbone
            results[f"head_ms{suffix}_{size}"] = head
            results[f"full_ms_1_prompt{suffix}_{size}"] = full1
            results[f"full_ms_16_prompts{suffix}_{size}"] = full16
            if size == 416:
                results[f"backbone_ms{suffix}"] = backbone
                results[f"full_ms_1_prompt{suffix}"] = full1
                results[f"full_ms_16_prompts{suffix}"] = full16
                results[f"fps_model{suffix}"] = 1e3 / (backbone + head)
                if not suffix:
                    results["head_overhead_ratio"] = head / backbone
                    results["prompt_scaling_16_vs_1"] = full16 / full1
    if dev.type == "cpu":
        results.update(cpu_fast_path(clip_model, device, repeats, warmup))
    results["peak_rss_mb"] = peak_rss_mb()
    if dev.type == "cuda":
        results["peak_gpu_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
    return results


def cpu_fast_path(clip_model: str, device: str, repeats: int, warmup: int) -> dict:
    """Default CPU path vs the naive fp32 contiguous forward of the same weights: speed and fidelity."""
    grounder = build_grounder(clip_model, device, "auto", 416)
    naive = naive_forward(clip_model, grounder)
    text = grounder.text_embeddings(["cut with"])
    pixels = torch.randn(1, 3, 416, 416)

    @torch.inference_mode()
    def fast():
        with grounder._autocast():
            return pixel_text_logits(grounder.pixel_embeddings(pixels), text)
    naive_ms = median_ms(lambda: naive(pixels, text), repeats, warmup, grounder.device)
    fast_ms = median_ms(fast, repeats, warmup, grounder.device)
    correlations = []
    from .model.letterbox import letterbox_batch
    for name in PHOTOS:
        photo_pixels, _ = letterbox_batch([torch.from_numpy(getattr(skimage.data, name)())], 416)
        with torch.inference_mode():
            a = naive(photo_pixels, text).float().flatten().numpy()
            with grounder._autocast():
                b = pixel_text_logits(grounder.pixel_embeddings(photo_pixels), text).float().flatten().numpy()
        correlations.append(float(np.corrcoef(a, b)[0, 1]))
    return {"naive_fp32_ms": naive_ms, "fast_path_ms": fast_ms, "cpu_speedup_vs_naive_fp32": naive_ms / fast_ms,
            "cpu_fast_path_corr": min(correlations)}


def print_table(results: dict) -> None:
    width = max(len(k) for k in results)
    for key, value in results.items():
        shown = f"{value:.3f}" if isinstance(value, float) else str(value)
        print(f"{key:<{width}}  {shown}")


def run(args: argparse.Namespace) -> int:
    sizes = (416,) if args.short else tuple(args.sizes)
    clip_model = "RN-tiny" if args.short and args.clip_model == "RN101" else args.clip_model
    results = run_benchmark(clip_model, args.device, sizes, args.repeats, args.warmup)
    print_table(results)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("benchmark", help="model speed and memory figures")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--clip-model", default="RN101", help="open_clip ResNet model (default RN101)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[320, 416, 640], help="model input sizes")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per figure (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs first")
    parser.add_argument("--short", action="store_true", help="CI mode: RN-tiny at 416 only, same keys")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    parser.set_defaults(func=run)
