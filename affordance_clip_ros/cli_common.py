"""Command-line options shared by the subcommands that build a grounder, generated from the
node's parameter table (``parameter_table``): same names, defaults, choices and descriptions."""
from __future__ import annotations

import argparse

from .model import AffordanceGrounder, GrounderConfig
from .parameter_table import SPECS

MODEL_OPTIONS = ("clip_model", "clip_pretrained", "fpn_checkpoint", "device", "precision", "backend", "compile",
                 "input_size")


def add_parameter_arguments(parser, names: tuple[str, ...], defaults: dict | None = None) -> None:
    """One option per parameter in ``names`` (``--clip-model`` for clip_model, ...) with the table's
    type, choices, description and default (or the one in ``defaults``; "" becomes None)."""
    for name in names:
        spec = SPECS[name]
        default = (defaults or {}).get(name, spec.default)
        kwargs = dict(default=default if default != "" else None, type=type(spec.default),
                      help=f"{spec.description} (default: {default if default != '' else 'none'})")
        if spec.choices:
            kwargs["choices"] = spec.choices
        parser.add_argument(spec.flag, **kwargs)


def add_model_arguments(parser: argparse.ArgumentParser, precision: str = "auto",
                        names: tuple[str, ...] = MODEL_OPTIONS, templates: bool = True) -> None:
    """The model options in ``names`` (``precision``: the default of --precision) and ``--template``."""
    group = parser.add_argument_group("model")
    add_parameter_arguments(group, names, {"precision": precision})
    if templates:
        group.add_argument("--template", action="append", dest="templates", default=None,
                           help=f"{SPECS['prompt_templates'].description} (repeat to average several)")


PEAK_OPTIONS = ("num_peaks", "peak_threshold", "peak_min_distance")


def add_peak_arguments(parser: argparse.ArgumentParser) -> None:
    """--num-peaks, --peak-threshold, --peak-min-distance and the overlay's --alpha, from the table."""
    add_parameter_arguments(parser, PEAK_OPTIONS)
    parser.add_argument("--alpha", type=float, default=SPECS["overlay_alpha"].default,
                        help=f"{SPECS['overlay_alpha'].description} (default: {SPECS['overlay_alpha'].default})")


def peak_settings(args: argparse.Namespace) -> dict:
    """The GrounderConfig fields of :func:`add_peak_arguments`."""
    return {name: getattr(args, name) for name in PEAK_OPTIONS}


def config_from_args(args: argparse.Namespace, **overrides) -> GrounderConfig:
    kwargs = dict(clip_model=args.clip_model, clip_pretrained=args.clip_pretrained,
                  fpn_checkpoint=args.fpn_checkpoint, device=args.device, precision=args.precision,
                  input_size=args.input_size, backend=getattr(args, "backend", "auto"),
                  compile=getattr(args, "compile", "auto"))
    if args.templates:
        kwargs["prompt_templates"] = tuple(args.templates)
    kwargs.update(overrides)
    return GrounderConfig(**kwargs)


def grounder_from_args(args: argparse.Namespace, **overrides) -> AffordanceGrounder:
    return AffordanceGrounder.from_config(config_from_args(args, **overrides))
