"""The grounding node's parameters as one table: name, default, description, range, choices and
whether they are read-only (no ROS imports).

Everything else follows from it: the node declares its parameters from it (``ros/node_parameters``),
the shared model options of ``affordance-clip`` are generated from it (``cli_common``), the launch
file takes the descriptions and types of its parameter arguments from it, and tests check
``config/grounding.yaml`` and ``GrounderConfig``'s defaults against it, naming any difference.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .model.options import (BACKENDS, COMPILE_MODES, DEFAULT_BACKGROUND_PROMPTS, PRECISIONS,
                            validate_background_prompts)
from .model.templates import validate_templates

IMAGE_QOS_CHOICES = ("sensor_data", "reliable", "auto")
IMAGE_TRANSPORTS = ("raw", "compressed")
RESULT_ENCODINGS = ("32FC1", "mono8")
PIPELINE_CHOICES = ("auto", "on", "off")
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
CAMERA_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")  # one token of a ROS name


@dataclass(frozen=True)
class ParamSpec:
    """One parameter. ``model``: it defines the model (and is read-only: a new value needs a new
    grounder). ``range``: (from, to, step), step 0 = continuous."""

    name: str
    default: Any
    description: str
    read_only: bool = False
    range: tuple[float, float, float] | None = None
    choices: tuple[str, ...] = ()
    model: bool = False

    @property
    def flag(self) -> str:
        """The command-line option of the parameter (``--clip-model``)."""
        return "--" + self.name.replace("_", "-")


PARAMS: tuple[ParamSpec, ...] = (
    # --- model (read-only: changing them needs a new model) ---
    ParamSpec("clip_model", "RN101", "open_clip ResNet CLIP model (RN50, RN101, ...)", read_only=True, model=True),
    ParamSpec("clip_pretrained", "openai",
              "CLIP weights: an open_clip tag (openai), a local file path, or 'none' (random weights, the same in "
              "every run: tests and benchmarks only)", read_only=True, model=True),
    ParamSpec("fpn_checkpoint", "",
              "trained FPN .safetensors file; empty = the training-free dense CLIP head", read_only=True, model=True),
    ParamSpec("device", "auto", "auto (CUDA when present), cpu, cuda or cuda:N", read_only=True, model=True),
    ParamSpec("precision", "auto", "auto = on CUDA fp16 (CUDA graphs or compile; fp32 when eager); on CPU (ONNX "
              "Runtime) int8, quantised "
              "once per weights and cached, when its heatmaps stay faithful to fp32 (Pearson >= 0.99), else fp32",
              read_only=True, choices=PRECISIONS, model=True),
    ParamSpec("backend", "auto", "image path: auto (ONNX Runtime on CPU, about 2x faster; torch on CUDA), torch or "
              "onnxruntime", read_only=True, choices=BACKENDS, model=True),
    ParamSpec("compile", "auto", "how the torch image path runs: auto (cuda-graphs on CUDA, else off), off (eager), "
              "cuda-graphs (recorded once at start-up and replayed, no compiler; eager with a warning if recording "
              "fails), or torch.compile: default, reduce-overhead, max-autotune (the last two with CUDA graphs on "
              "CUDA; they need Triton or a C++ compiler)", read_only=True, choices=COMPILE_MODES, model=True),
    ParamSpec("input_size", 416, "square model input in pixels (multiple of 32)", read_only=True,
              range=(64, 1024, 32), model=True),
    ParamSpec("text_cache_size", 256, "text embeddings kept in the LRU cache (bounds memory under prompt spam)",
              read_only=True, range=(1, 65536, 1), model=True),
    # --- prompts and peaks (run time) ---
    ParamSpec("prompts", "", "action phrases separated by ';' (also set by /affordance/query); empty = idle"),
    ParamSpec("prompt_templates", ["{}"], "prompt templates with one '{}' for the phrase, embeddings averaged; "
              "default: the bare phrase"),
    ParamSpec("background_prompts", list(DEFAULT_BACKGROUND_PROMPTS),
              "training-free head: phrases each prompt competes with per pixel (softmax at CLIP's logit scale); "
              "a score is the prompt's probability against them, whatever else is in the frame"),
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
    ParamSpec("normal_window", 15, "side of the square window whose valid depths a plane is fitted to for a "
              "contact point's surface normal, pixels (odd)", range=(3, 101, 2)),
    # --- outputs and input ---
    ParamSpec("publish_overlay", True, "publish ~/overlay (bgr8 heatmap blended on the image)"),
    ParamSpec("overlay_alpha", 0.5, "heatmap weight in the overlay", range=(0.0, 1.0, 0.0)),
    ParamSpec("result_max_side", 0, "longest side of the maps in ~/result, pixels (smaller maps are not "
              "enlarged); 0 = the input image's resolution. Peaks are found on the full-resolution map",
              range=(0, 8192, 1)),
    ParamSpec("result_encoding", "32FC1", "encoding of the maps in ~/result: 32FC1 (float) or mono8 "
              "(round(255 * score), a quarter of the size)", choices=RESULT_ENCODINGS),
    ParamSpec("cameras", [], "camera names served by one model: camera N subscribes N/image (N/depth, "
              "N/camera_info) and publishes under ~/N/; empty = one camera on image, outputs under ~/",
              read_only=True),
    ParamSpec("image_qos", "auto",
              "image, depth and camera_info subscription reliability: auto (match the publishers: reliable "
              "when they all are, else best effort), sensor_data (best effort), or reliable",
              read_only=True, choices=IMAGE_QOS_CHOICES),
    ParamSpec("image_transport", "raw", "raw: sensor_msgs/Image on image; compressed: sensor_msgs/CompressedImage "
              "(JPEG or PNG) on <image>/compressed, as image_transport's compressed plugin publishes it",
              read_only=True, choices=IMAGE_TRANSPORTS),
    ParamSpec("pipeline", "auto", "publish on a second thread while the next frames are inferred: auto (on when "
              "the model runs on CUDA; on a CPU the model keeps every core busy and a second thread only competes), "
              "on, off (one thread infers and publishes in turn)", read_only=True, choices=PIPELINE_CHOICES),
    ParamSpec("max_rate_hz", 0.0, "most frames processed per second; 0 = as fast as the model runs",
              range=(0.0, 1000.0, 0.0)),
    ParamSpec("ground_timeout_s", 5.0, "~/ground requests with timeout_s 0: seconds to wait for the answer "
              "(a camera frame and the inference)", range=(0.0, 3600.0, 0.0)),
)
SPECS: dict[str, ParamSpec] = {spec.name: spec for spec in PARAMS}
MODEL_PARAMS = tuple(spec.name for spec in PARAMS if spec.model)


def check_value(name: str, value: Any) -> str | None:
    """Why ``value`` is refused for parameter ``name`` beyond type/range/read-only, or None."""
    spec = SPECS.get(name)
    if spec is None:
        return None
    if spec.choices and value not in spec.choices:
        return f"{name} must be one of {', '.join(spec.choices)}, got '{value}'"
    if name == "device" and not DEVICE_PATTERN.match(str(value)):
        return f"device must be auto, cpu, cuda or cuda:N, got '{value}'"
    if name == "prompt_templates":
        try:
            validate_templates(list(value))
        except ValueError as e:
            return str(e)
    if name == "background_prompts":
        try:
            validate_background_prompts(list(value))
        except ValueError as e:
            return str(e)
    if name == "cameras":
        return check_cameras(list(value))
    if name in ("depth_window", "normal_window") and int(value) % 2 == 0:
        return f"{name} must be odd, got {value}"
    return None


def check_cameras(names: list[str]) -> str | None:
    """Why a ``cameras`` list is refused (a name that is no ROS name token, a repeat), or None."""
    if bad := [n for n in names if not CAMERA_NAME.match(n)]:
        return (f"cameras: '{bad[0]}' is not a camera name; use letters, digits and '_', starting with a letter "
                "(it becomes part of topic names: head, wrist_left)")
    if len(set(names)) != len(names):
        return f"cameras: '{next(n for n in names if names.count(n) > 1)}' is given twice"
    return None
