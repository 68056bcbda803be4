"""The node's parameters as one table: name, default, description, range, read-only flag.

Model parameters are read-only (they need a new model); thresholds, prompts and overlay
settings change at run time. rclpy itself enforces types, ranges and read-only flags from the
descriptors; :func:`validate` adds the checks a descriptor cannot express (choices, device
names, prompt templates) and is the node's one ``on_set_parameters`` callback. The defaults here
are the ones in ``config/grounding.yaml`` (a test keeps the two equal).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace
from typing import Any, Iterable, Sequence

from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType,
                                SetParametersResult)

from ..model.grounder import BACKENDS, COMPILE_MODES, PRECISIONS, GrounderConfig
from ..model.prompts import validate_templates
from .prompts import parse_prompts

IMAGE_QOS_CHOICES = ("sensor_data", "reliable", "auto")
IMAGE_TRANSPORTS = ("raw", "compressed")
_DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")

_TYPES = {bool: ParameterType.PARAMETER_BOOL, int: ParameterType.PARAMETER_INTEGER,
          float: ParameterType.PARAMETER_DOUBLE, str: ParameterType.PARAMETER_STRING,
          list: ParameterType.PARAMETER_STRING_ARRAY}


@dataclass(frozen=True)
class ParamSpec:
    name: str
    default: Any
    description: str
    read_only: bool = False
    range: tuple[float, float, float] | None = None  # (from, to, step); step 0 = continuous
    choices: tuple[str, ...] = ()

    def descriptor(self) -> ParameterDescriptor:
        d = ParameterDescriptor(name=self.name, type=_TYPES[type(self.default)], description=self.description,
                                read_only=self.read_only)
        if self.choices:
            d.additional_constraints = f"one of: {', '.join(self.choices)}"
        if self.range is not None:
            low, high, step = self.range
            if isinstance(self.default, int):
                d.integer_range = [IntegerRange(from_value=int(low), to_value=int(high), step=int(step))]
            else:
                d.floating_point_range = [FloatingPointRange(from_value=float(low), to_value=float(high),
                                                             step=float(step))]
        return d


PARAMS: tuple[ParamSpec, ...] = (
    # --- model (read-only: changing them needs a new model) ---
    ParamSpec("clip_model", "RN101", "open_clip ResNet CLIP model (RN50, RN101, ...)", read_only=True),
    ParamSpec("clip_pretrained", "openai",
              "CLIP weights: an open_clip tag (openai), a local file path, or 'none' (random: tests only)",
              read_only=True),
    ParamSpec("fpn_checkpoint", "",
              "trained FPN .safetensors file; empty = training-free dense CLIP head", read_only=True),
    ParamSpec("device", "auto", "auto (CUDA when present), cpu, cuda or cuda:N", read_only=True),
    ParamSpec("precision", "auto", "auto = on CUDA fp32, fp16 under compile; on CPU int8 when faithful to fp32, "
              "else fp32", read_only=True, choices=PRECISIONS),
    ParamSpec("backend", "auto", "image path: auto (ONNX Runtime on CPU, torch on CUDA), torch or onnxruntime",
              read_only=True, choices=BACKENDS),
    ParamSpec("compile", "off", "torch.compile of the torch image path: off, default, reduce-overhead, max-autotune "
              "(the last two with CUDA graphs on CUDA); compiled at start-up", read_only=True, choices=COMPILE_MODES),
    ParamSpec("input_size", 416, "square model input in pixels (multiple of 32)", read_only=True,
              range=(64, 1024, 32)),
    ParamSpec("text_cache_size", 256, "text embeddings kept in the LRU cache (bounds memory under prompt spam)",
              read_only=True, range=(1, 65536, 1)),
    # --- prompts and peaks (run time) ---
    ParamSpec("prompts", "", "action phrases separated by ';' (also set by /affordance/query); empty = idle"),
    ParamSpec("prompt_templates", ["{}"], "templates with one '{}' for the phrase, embeddings averaged"),
    ParamSpec("num_peaks", 5, "contact points per prompt (0 = none)", range=(0, 50, 1)),
    ParamSpec("peak_threshold", 0.3, "minimum heatmap value of a contact point", range=(0.0, 1.0, 0.0)),
    ParamSpec("peak_min_distance", 20, "minimum distance between contact points, pixels of the input image",
              range=(1, 1000, 1)),
    # --- depth ---
    ParamSpec("use_depth", False, "subscribe to depth + camera_info and publish 3D contact points",
              read_only=True),
    ParamSpec("max_depth_age", 0.1, "largest stamp difference between an image and its depth image, seconds",
              range=(0.0, 10.0, 0.0)),
    ParamSpec("depth_window", 5, "side of the square window whose median valid depth a contact point gets, "
              "pixels (odd)", range=(1, 51, 2)),
    # --- outputs and input ---
    ParamSpec("publish_overlay", True, "publish ~/overlay (bgr8 heatmap blended on the image)"),
    ParamSpec("overlay_alpha", 0.5, "heatmap weight in the overlay", range=(0.0, 1.0, 0.0)),
    ParamSpec("image_qos", "auto",
              "image, depth and camera_info subscription reliability: auto (match the publishers: reliable "
              "when they all are, else best effort), sensor_data (best effort), or reliable",
              read_only=True, choices=IMAGE_QOS_CHOICES),
    ParamSpec("image_transport", "raw", "raw: sensor_msgs/Image on image; compressed: sensor_msgs/CompressedImage "
              "(JPEG or PNG) on <image>/compressed, as image_transport's compressed plugin publishes it",
              read_only=True, choices=IMAGE_TRANSPORTS),
    ParamSpec("max_rate_hz", 0.0, "most frames processed per second; 0 = as fast as the model runs",
              range=(0.0, 1000.0, 0.0)),
)
SPECS: dict[str, ParamSpec] = {spec.name: spec for spec in PARAMS}
MODEL_PARAMS = ("clip_model", "clip_pretrained", "fpn_checkpoint", "device", "precision", "backend", "compile",
                "input_size", "text_cache_size")


def declare(node) -> None:
    """Declare every parameter of the table on ``node`` (command-line and YAML overrides apply)."""
    node.declare_parameters("", [(spec.name, spec.default, spec.descriptor()) for spec in PARAMS])


def check_value(name: str, value: Any) -> str | None:
    """Why ``value`` is refused for parameter ``name`` beyond type/range/read-only, or None."""
    spec = SPECS.get(name)
    if spec is None:
        return None
    if spec.choices and value not in spec.choices:
        return f"{name} must be one of {', '.join(spec.choices)}, got '{value}'"
    if name == "device" and not _DEVICE_PATTERN.match(str(value)):
        return f"device must be auto, cpu, cuda or cuda:N, got '{value}'"
    if name == "prompt_templates":
        try:
            validate_templates(list(value))
        except ValueError as e:
            return str(e)
    if name == "depth_window" and int(value) % 2 == 0:
        return f"depth_window must be odd, got {value}"
    return None


def validate(parameters: Sequence) -> SetParametersResult:
    """The node's ``on_set_parameters`` callback: refuse the whole change with a reason, or accept."""
    reasons = [reason for p in parameters if (reason := check_value(p.name, p.value)) is not None]
    return SetParametersResult(successful=not reasons, reason="; ".join(reasons))


@dataclass(frozen=True)
class Settings:
    """A consistent snapshot of every parameter (the worker reads one per frame)."""

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
    num_peaks: int
    peak_threshold: float
    peak_min_distance: int
    use_depth: bool
    max_depth_age: float
    depth_window: int
    publish_overlay: bool
    overlay_alpha: float
    image_qos: str
    image_transport: str
    max_rate_hz: float

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> "Settings":
        return cls(**{f.name: values[f.name] for f in fields(cls)}).updated(values)

    def updated(self, values: dict[str, Any]) -> "Settings":
        """A copy with some parameter values changed (raw parameter values, e.g. prompt text)."""
        changes = {k: v for k, v in values.items() if k in SPECS}
        if "prompts" in changes:
            changes["prompts"] = parse_prompts(changes["prompts"]).prompts
        if "prompt_templates" in changes:
            changes["prompt_templates"] = tuple(changes["prompt_templates"])
        return replace(self, **changes)

    def grounder_config(self) -> GrounderConfig:
        return GrounderConfig(
            clip_model=self.clip_model, clip_pretrained=self.clip_pretrained,
            fpn_checkpoint=self.fpn_checkpoint or None, device=self.device, precision=self.precision,
            backend=self.backend, compile=self.compile, input_size=self.input_size, prompt_templates=self.prompt_templates,
            num_peaks=self.num_peaks, peak_threshold=self.peak_threshold, peak_min_distance=self.peak_min_distance,
            text_cache_size=self.text_cache_size)

    def peak_settings(self) -> dict[str, Any]:
        """What the grounder changes at run time (``AffordanceGrounder.with_settings``)."""
        return dict(num_peaks=self.num_peaks, peak_threshold=self.peak_threshold,
                    peak_min_distance=self.peak_min_distance, prompt_templates=self.prompt_templates)


def read_settings(node, names: Iterable[str] = SPECS) -> Settings:
    """Every declared parameter of the table, as :class:`Settings`."""
    return Settings.from_values({p.name: p.value for p in node.get_parameters(list(names))})
