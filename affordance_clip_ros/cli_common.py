"""Command-line options shared by the subcommands that build a grounder."""
from __future__ import annotations

import argparse

from .model import AffordanceGrounder, GrounderConfig
from .model.grounder import BACKENDS, COMPILE_MODES, PRECISIONS


def add_model_arguments(parser: argparse.ArgumentParser, precision: str = "auto") -> None:
    """--clip-model, --clip-pretrained, --fpn-checkpoint, --device, --precision (default ``precision``),
    --backend, --compile, --input-size, --template."""
    group = parser.add_argument_group("model")
    group.add_argument("--clip-model", default="RN101", help="open_clip ResNet model name (default: RN101)")
    group.add_argument("--clip-pretrained", default="openai",
                       help="CLIP weights: an open_clip tag (openai), a local file path, or 'none' for random "
                            "weights (tests and benchmarks only)")
    group.add_argument("--fpn-checkpoint", default=None,
                       help="trained FPN (.safetensors); without it the training-free dense CLIP head is used")
    group.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    group.add_argument("--precision", default=precision, choices=PRECISIONS,
                       help="torch: autocast precision, auto = fp32 (on CUDA fp16 under --compile); onnxruntime: "
                            "auto = int8 (quantised once per weights and cached) when its heatmaps stay faithful "
                            f"to fp32 (Pearson >= 0.99), else fp32 (default: {precision})")
    group.add_argument("--backend", default="auto", choices=BACKENDS,
                       help="image path: auto = onnxruntime on CPU (about 2x faster), torch on CUDA")
    group.add_argument("--compile", default="off", choices=COMPILE_MODES,
                       help="torch.compile the torch image path (reduce-overhead and max-autotune add CUDA graphs on CUDA); compiled "
                            "once at start-up")
    group.add_argument("--input-size", type=int, default=416, help="square model input in pixels (multiple of 32)")
    group.add_argument("--template", action="append", dest="templates", default=None,
                       help="prompt template with one '{}' (repeat to average several); default: the bare phrase")


def add_peak_arguments(parser: argparse.ArgumentParser) -> None:
    """--num-peaks, --peak-threshold, --peak-min-distance and the overlay's --alpha."""
    parser.add_argument("--num-peaks", type=int, default=5, help="peaks per map (default 5)")
    parser.add_argument("--peak-threshold", type=float, default=0.3, help="minimum peak value in [0, 1]")
    parser.add_argument("--peak-min-distance", type=int, default=20, help="minimum pixels between peaks")
    parser.add_argument("--alpha", type=float, default=0.5, help="heatmap weight in the overlay")


def peak_settings(args: argparse.Namespace) -> dict:
    """The GrounderConfig fields of :func:`add_peak_arguments`."""
    return dict(num_peaks=args.num_peaks, peak_threshold=args.peak_threshold, peak_min_distance=args.peak_min_distance)


def config_from_args(args: argparse.Namespace, **overrides) -> GrounderConfig:
    kwargs = dict(clip_model=args.clip_model, clip_pretrained=args.clip_pretrained,
                  fpn_checkpoint=args.fpn_checkpoint, device=args.device, precision=args.precision,
                  input_size=args.input_size, backend=getattr(args, "backend", "auto"), compile=getattr(args, "compile", "off"))
    if args.templates:
        kwargs["prompt_templates"] = tuple(args.templates)
    kwargs.update(overrides)
    return GrounderConfig(**kwargs)


def grounder_from_args(args: argparse.Namespace, **overrides) -> AffordanceGrounder:
    return AffordanceGrounder.from_config(config_from_args(args, **overrides))
