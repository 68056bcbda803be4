"""`affordance-clip params`: the FPN's trainable parameter count for a CLIP model."""
from __future__ import annotations

import argparse

import open_clip

from .model import AffordanceFPN, FPNConfig, count_trainable_parameters
from .model.fpn import DEFAULT_WIDTH


def fpn_config_for(clip_model: str, width: int = DEFAULT_WIDTH, levels: int = 3) -> FPNConfig:
    """The FPN configuration for a ResNet CLIP, read from its open_clip config (no weights built)."""
    cfg = open_clip.get_model_config(clip_model)
    if cfg is None or not isinstance(cfg["vision_cfg"].get("layers"), (list, tuple)):
        raise ValueError(f"'{clip_model}' is not an open_clip ResNet CLIP model")
    stem_width = cfg["vision_cfg"].get("width", 64)
    channels = tuple(stem_width * 4 * m for m in (2, 4, 8))  # Bottleneck expansion 4 on layer2..4
    return FPNConfig(in_channels=channels, embed_dim=cfg["embed_dim"], width=width, levels=levels)


def run(args: argparse.Namespace) -> int:
    config = fpn_config_for(args.clip_model, args.width, args.levels)
    count = count_trainable_parameters(AffordanceFPN(config))
    print(f"{args.clip_model} FPN (C'={config.width}, levels={config.levels}): {count:,} trainable parameters "
          f"({count / 1e6:.2f} M)")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("params", help="print the FPN's trainable parameter count")
    parser.add_argument("--clip-model", default="RN101", help="open_clip ResNet model (default RN101)")
    parser.add_argument("--levels", type=int, default=3, choices=[1, 2, 3], help="fused feature levels")
    parser.add_argument("--width", type=int, default=DEFAULT_WIDTH, help="FPN width C'")
    parser.set_defaults(func=run)
