"""The node's side of the parameter table (``parameter_table``): ROS descriptors, declaration,
the one validation callback, and a typed snapshot of the values.

Model parameters are read-only (they need a new model); thresholds, prompts and overlay
settings change at run time. rclpy itself enforces types, ranges and read-only flags from the
descriptors; :func:`validate` adds the checks a descriptor cannot express (choices, device
names, prompt templates) and is the node's one ``on_set_parameters`` callback.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Iterable, Sequence

from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType,
                                SetParametersResult)

from rclpy.parameter import Parameter

from ..model.grounder import GrounderConfig
from ..parameter_table import MODEL_PARAMS, PARAMS, SPECS, ParamSpec, check_value
from .queries import parse_prompts

__all__ = ["MODEL_PARAMS", "PARAMS", "SPECS", "Settings", "check_value", "declare", "descriptor", "read_settings",
           "validate", "values"]

_TYPES = {bool: ParameterType.PARAMETER_BOOL, int: ParameterType.PARAMETER_INTEGER,
          float: ParameterType.PARAMETER_DOUBLE, str: ParameterType.PARAMETER_STRING,
          list: ParameterType.PARAMETER_STRING_ARRAY}


def descriptor(spec: ParamSpec) -> ParameterDescriptor:
    """The rclpy descriptor of a table entry: type, description, read-only flag, range, choices."""
    d = ParameterDescriptor(name=spec.name, type=_TYPES[type(spec.default)], description=spec.description,
                            read_only=spec.read_only)
    if spec.choices:
        d.additional_constraints = f"one of: {', '.join(spec.choices)}"
    if spec.range is not None:
        low, high, step = spec.range
        if isinstance(spec.default, int):
            d.integer_range = [IntegerRange(from_value=int(low), to_value=int(high), step=int(step))]
        else:
            d.floating_point_range = [FloatingPointRange(from_value=float(low), to_value=float(high),
                                                         step=float(step))]
    return d


def declare(node) -> None:
    """Declare every parameter of the table on ``node`` (command-line and YAML overrides apply).
    An empty list default is declared by its type (rclpy would read ``[]`` as a byte array); it
    stays unset until given, and :func:`values` reads it as the table's default."""
    node.declare_parameters("", [(spec.name, Parameter.Type.STRING_ARRAY if spec.default == [] else spec.default,
                                  descriptor(spec)) for spec in PARAMS])


def values(node, names: Iterable[str] = SPECS) -> dict[str, Any]:
    """The declared values of ``names``; the table's default for one left unset."""
    read = {name: node.get_parameter_or(name, None) for name in names}
    return {name: SPECS[name].default if p is None or p.type_ == Parameter.Type.NOT_SET else p.value
            for name, p in read.items()}


def validate(parameters: Sequence) -> SetParametersResult:
    """The node's ``on_set_parameters`` callback: refuse the whole change with a reason, or accept."""
    reasons = [reason for p in parameters if (reason := check_value(p.name, p.value)) is not None]
    return SetParametersResult(successful=not reasons, reason="; ".join(reasons))


@dataclass(frozen=True)
class Settings:
    """A consistent snapshot of every parameter (the worker reads one per frame); one field per
    entry of the table, in its order (a test keeps them equal)."""

    clip_model: str
    clip_pretrained: str
    fpn_checkpoint: str
    device: str
    precision: str
    backend: str
    compile: str
    input_size: int
    text_cache_size: int
    prompts: tuple[str, ...]
    prompt_templates: tuple[str, ...]
    background_prompts: tuple[str, ...]
    num_peaks: int
    peak_threshold: float
    peak_min_distance: int
    use_depth: bool
    max_depth_age: float
    depth_window: int
    normal_window: int
    publish_overlay: bool
    overlay_alpha: float
    result_max_side: int
    result_encoding: str
    cameras: tuple[str, ...]
    image_qos: str
    image_transport: str
    pipeline: str
    max_rate_hz: float
    ground_timeout_s: float

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> "Settings":
        return cls(**{f.name: values[f.name] for f in fields(cls)}).updated(values)

    def updated(self, values: dict[str, Any]) -> "Settings":
        """A copy with some parameter values changed (raw parameter values, e.g. prompt text)."""
        changes = {k: v for k, v in values.items() if k in SPECS}
        if "prompts" in changes:
            changes["prompts"] = parse_prompts(changes["prompts"]).prompts
        for name in ("prompt_templates", "background_prompts", "cameras"):
            if name in changes:
                changes[name] = tuple(changes[name])
        return replace(self, **changes)

    def grounder_config(self) -> GrounderConfig:
        return GrounderConfig(
            clip_model=self.clip_model, clip_pretrained=self.clip_pretrained,
            fpn_checkpoint=self.fpn_checkpoint or None, device=self.device, precision=self.precision,
            backend=self.backend, compile=self.compile, input_size=self.input_size,
            prompt_templates=self.prompt_templates, background_prompts=self.background_prompts,
            num_peaks=self.num_peaks, peak_threshold=self.peak_threshold, peak_min_distance=self.peak_min_distance,
            text_cache_size=self.text_cache_size)

    def peak_settings(self) -> dict[str, Any]:
        """What the grounder changes at run time (``AffordanceGrounder.update_settings``)."""
        return dict(num_peaks=self.num_peaks, peak_threshold=self.peak_threshold,
                    peak_min_distance=self.peak_min_distance, prompt_templates=self.prompt_templates,
                    background_prompts=self.background_prompts)


def read_settings(node) -> Settings:
    """Every declared parameter of the table, as :class:`Settings`."""
    return Settings.from_values(values(node))
