"""The one public inference entry point: image + action phrases -> heatmaps and peaks."""
from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from .calibration import background_softmax
from .checkpoint import load_fpn
from .clip_backbone import FrozenCLIP
from .cuda_graphs import GraphedImagePath
from .device_postprocess import find_peaks_torch
from .fpn import AffordanceFPN, paired_pixel_text_logits, pixel_text_logits
from .letterbox import letterbox_batch, unletterbox
from .options import BACKENDS, COMPILE_MODES, DEFAULT_BACKGROUND_PROMPTS, PRECISIONS, validate_background_prompts
from .peaks import Peak, find_peaks
from .fidelity import FIDELITY_PROMPTS
from .templates import DEFAULT_TEMPLATES, expand, validate_templates

log = logging.getLogger(__name__)

MODE_FPN = "fpn"
MODE_TRAINING_FREE = "training-free"


@dataclass(frozen=True)
class GrounderConfig:
    """Everything that defines an :class:`AffordanceGrounder`. Defaults follow the paper."""

    clip_model: str = "RN101"
    clip_pretrained: str = "openai"  # open_clip tag, local file, or "none" (random: tests only)
    fpn_checkpoint: str | None = None  # None: training-free dense CLIP head
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # torch: auto = fp16 on CUDA unless eager, else fp32; onnxruntime: int8 if faithful
    backend: str = "auto"  # image path: auto (onnxruntime on CPU, torch on CUDA) | torch | onnxruntime
    compile: str = "auto"  # auto (cuda-graphs on CUDA, else off) | off | cuda-graphs | a torch.compile mode
    input_size: int = 416  # square letterboxed model input, a multiple of 32
    prompt_templates: tuple[str, ...] = DEFAULT_TEMPLATES
    background_prompts: tuple[str, ...] = DEFAULT_BACKGROUND_PROMPTS  # training-free head: what a prompt competes with
    num_peaks: int = 5
    peak_threshold: float = 0.3
    peak_min_distance: int = 20  # pixels of the input image
    text_cache_size: int = 256
    clip_cache_dir: str | None = None
    engine_cache_dir: str | None = None  # onnxruntime models; None: ~/.cache/affordance_clip_ros/onnx
    random_seed: int = 0  # clip_pretrained "none": the random weights are drawn from this seed, the same every run

    def __post_init__(self):
        if self.input_size <= 0 or self.input_size % 32:
            raise ValueError(f"input_size must be a positive multiple of 32, got {self.input_size}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got '{self.precision}'")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got '{self.backend}'")
        if self.compile not in COMPILE_MODES:
            raise ValueError(f"compile must be one of {COMPILE_MODES}, got '{self.compile}'")
        object.__setattr__(self, "prompt_templates", validate_templates(self.prompt_templates))
        object.__setattr__(self, "background_prompts", validate_background_prompts(self.background_prompts))


@dataclass
class DeviceResult:
    """One image's maps for all prompts, still on the grounder's device, and their peaks: the
    caller copies to the host only what it publishes."""

    prompts: list[str]
    maps: torch.Tensor  # float32 (N, H, W) of the input image, values in [0, 1]
    peaks: list[list[Peak]]  # per prompt, best first


@dataclass
class AffordancePrediction:
    """One prompt's result for one image."""

    prompt: str
    heatmap: np.ndarray  # float32, H x W of the input image, values in [0, 1]
    peaks: list[Peak] = field(default_factory=list)  # best first


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device '{device}' requested but CUDA is not available; use 'auto' or 'cpu'")
    return resolved


def resolve_image_path(compile: str, backend: str, device: torch.device) -> str:
    """The ``compile`` setting as run: "auto" -> "cuda-graphs" for the torch image path on CUDA,
    else "off"; "cuda-graphs" needs CUDA."""
    if compile == "auto":
        return "cuda-graphs" if device.type == "cuda" and backend == "torch" else "off"
    if compile == "cuda-graphs" and device.type != "cuda":
        raise ValueError(f"compile 'cuda-graphs' needs a CUDA device, not '{device}'; use 'auto' or 'off'")
    return compile


def autocast_dtype(precision: str, device: torch.device, compile: str = "off") -> torch.dtype | None:
    """The torch autocast dtype for a precision setting, or None for plain fp32. "auto" on CUDA is
    fp16 only where launches are recorded (``compile`` as resolved: CUDA graphs or torch.compile):
    at batch 1 the eager forward is bound by kernel launches, and autocast's extra cast kernels
    made it slower (H200, RN101 at 416: fp16 8.2 ms, fp32 5.8 ms; compiled with CUDA graphs: fp16
    1.90 ms, fp32 2.02 ms)."""
    if precision == "auto":
        return torch.float16 if device.type == "cuda" and compile != "off" else None
    return {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16, "int8": None}[precision]


def resolve_backend(backend: str, precision: str, device: torch.device, compile: str = "off") -> str:
    """"auto" -> the fastest measured image path on the device (``affordance-clip benchmark``):
    ONNX Runtime on CPU (int8 when faithful: 1.7-2.4x a naive fp32 torch forward; fp32: 0.7-1.2x),
    torch on CUDA (cuDNN); torch wherever ``compile`` is asked for."""
    if backend == "auto":
        wants_ort = device.type == "cpu" and compile in ("auto", "off") and precision in ("auto", "fp32", "int8")
        backend = "onnxruntime" if wants_ort and onnxruntime_available() else "torch"
    if backend == "onnxruntime":
        if compile not in ("auto", "off"):
            raise ValueError(f"compile '{compile}' applies to backend 'torch', not 'onnxruntime'")
        if device.type != "cpu":
            raise ValueError(f"backend 'onnxruntime' runs on the CPU only, not '{device}'; use backend 'torch' on "
                             "CUDA, or `affordance-clip export --onnx` for TensorRT")
        if precision not in ("auto", "fp32", "int8"):
            raise ValueError(f"backend 'onnxruntime' takes precision auto, fp32 or int8, not '{precision}'")
    elif precision == "int8":
        raise ValueError("precision 'int8' needs backend 'onnxruntime' (or 'auto' on CPU)")
    return backend


def onnxruntime_available() -> bool:
    """Whether onnxruntime imports (a warning says what its absence costs)."""
    try:
        import onnxruntime  # noqa: F401 - only whether it imports
    except ImportError:
        log.warning("onnxruntime is not installed: the CPU image path falls back to torch (about 2x slower).")
        return False
    return True


def make_pixel_embedder(grounder: "AffordanceGrounder") -> Callable[[torch.Tensor], torch.Tensor]:
    """The image path (normalised pixels -> pixel embeddings) for the grounder's configured backend."""
    cfg = grounder.config
    if grounder.backend == "torch":
        mode = resolve_image_path(cfg.compile, grounder.backend, grounder.device)
        if mode == "off":
            return grounder.torch_pixel_embeddings
        return graphed_image_path(grounder) if mode == "cuda-graphs" else compiled_image_path(grounder)
    from .onnx_backend import ImagePath, build_ort_image_path

    def heatmaps(embeddings: torch.Tensor) -> torch.Tensor:  # what int8 must reproduce
        # the FPN's probability maps; the training-free head's similarity maps, from which its
        # calibrated scores follow (a map's background-phrase term would only add their noise)
        logits = pixel_text_logits(embeddings, grounder.text_embeddings(FIDELITY_PROMPTS))[0].float()
        return logits.sigmoid_() if grounder.fpn is not None else logits

    return build_ort_image_path(ImagePath(grounder.clip, grounder.fpn), cfg.input_size, cfg.precision,
                                cfg.engine_cache_dir, cacheable=cfg.clip_pretrained != "none", heatmaps=heatmaps)


def graphed_image_path(grounder: "AffordanceGrounder") -> GraphedImagePath:
    """The torch image path as CUDA graphs, the batch-1 graph recorded now on a blank frame so
    that the first camera frame does not pay for it; a new batch size records once more."""
    path = GraphedImagePath(grounder.torch_pixel_embeddings, lambda: grounder.autocast(cache=False))
    size = grounder.config.input_size
    start = time.perf_counter()
    if path.record(torch.zeros(1, 3, size, size, device=grounder.device)):
        log.info("CUDA graph of the image path at %d px recorded in %.2f s", size, time.perf_counter() - start)
    else:  # eager from now on: the precision of the eager path (fp32 for "auto")
        grounder.dtype = autocast_dtype(grounder.config.precision, grounder.device, "off")
    return path


def create_clip(config: GrounderConfig) -> FrozenCLIP:
    """The configured CLIP on the CPU; random weights (clip_pretrained "none") are drawn from
    ``config.random_seed``, the same every run, without touching the caller's generator."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.random_seed)
        return FrozenCLIP.create(config.clip_model, config.clip_pretrained, "cpu", config.clip_cache_dir,
                                 config.text_cache_size)


def compiled_image_path(grounder: "AffordanceGrounder") -> Callable[[torch.Tensor], torch.Tensor]:
    """``torch.compile`` of the torch image path, compiled now on a blank batch-1 frame (and, for
    CUDA graphs, recorded) so that the first camera frame does not pay for it. A new batch size
    compiles once more; the input size is fixed per grounder. CUDA graphs are recorded per
    thread: prepare the grounder on the thread that will run it (the ROS node does)."""
    mode = grounder.config.compile
    compiled = torch.compile(grounder.torch_pixel_embeddings, mode=None if mode == "default" else mode, dynamic=False)
    size = grounder.config.input_size
    start = time.perf_counter()
    with torch.inference_mode(), grounder.autocast():  # frames arrive as inference tensors
        blank = torch.zeros(1, 3, size, size, device=grounder.device)
        try:
            for _ in range(3):  # CUDA graph trees warm up, then record, then replay
                compiled(blank)
        except Exception as e:  # whatever the compiler stack raises, say what to do
            reason = (str(e).strip().splitlines() or [""])[0]
            raise RuntimeError(f"torch.compile (mode {mode}) of the image path failed: {type(e).__name__}: {reason}. "
                               "It needs Triton on CUDA or a C++ compiler on the CPU; set compile to 'off' to run "
                               "the image path without it.") from e
    log.info("torch.compile (mode %s) of the image path at %d px: %.1f s", mode, size, time.perf_counter() - start)
    return compiled


class AffordanceGrounder(nn.Module):
    """Frozen CLIP + (trained FPN or training-free dense head) -> affordance heatmaps.

    Example::

        grounder = AffordanceGrounder.from_config(GrounderConfig(clip_pretrained="none", clip_model="RN-tiny"))
        [pred] = grounder.predict(skimage.data.coffee(), ["drink with"])
        pred.heatmap.shape, pred.peaks[0]  # (400, 600), Peak(u=..., v=..., score=...)
    """

    def __init__(self, clip: FrozenCLIP, fpn: AffordanceFPN | None, config: GrounderConfig):
        super().__init__()
        self.clip = clip
        self.fpn = fpn.eval() if fpn is not None else None
        self.config = config
        self.device = clip.device
        self.backend = resolve_backend(config.backend, config.precision, self.device, config.compile)
        self._embedder: Callable[[torch.Tensor], torch.Tensor] | None = None  # built by prepare()
        self.dtype = autocast_dtype(config.precision, self.device, self.image_path_mode)
        self.to(memory_format=torch.channels_last)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input size: autotuned kernels pay off from frame 2

    @classmethod
    def from_config(cls, config: GrounderConfig) -> "AffordanceGrounder":
        """Build CLIP, load weights and the FPN checkpoint (if any) on the configured device."""
        device = resolve_device(config.device)
        clip = create_clip(config).to(device)
        fpn = None
        if config.fpn_checkpoint:
            fpn, meta = load_fpn(config.fpn_checkpoint, config.clip_model, clip.feature_channels, clip.embed_dim,
                                 map_location=device)
            fpn.to(device)
            if meta.get("input_size") != config.input_size:
                log.warning("FPN checkpoint was trained at %s px, running at %d px: expect a small accuracy change.",
                            meta.get("input_size"), config.input_size)
        else:
            log.info("No FPN checkpoint: using the training-free dense CLIP head.")
        grounder = cls(clip, fpn, config)
        grounder.prepare()
        return grounder

    @property
    def mode(self) -> str:
        return MODE_FPN if self.fpn is not None else MODE_TRAINING_FREE

    @property
    def image_path_precision(self) -> str:
        """The precision the image path really runs at: fp32, fp16, bf16 or int8 (the configured
        "auto" resolved; on ONNX Runtime, int8 only where it passed the fidelity check). On ONNX
        Runtime it builds the image path first if :meth:`prepare` has not (export, quantisation)."""
        if self.backend == "onnxruntime":
            if self._embedder is None:
                self.prepare()
            return self._embedder.precision
        return {None: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[self.dtype]

    @property
    def image_path_mode(self) -> str:
        """How the torch image path runs: off (eager), cuda-graphs or a torch.compile mode
        (``compile`` resolved; "off" where the CUDA graph could not be recorded)."""
        if isinstance(self._embedder, GraphedImagePath) and self._embedder.failed:
            return "off"
        return resolve_image_path(self.config.compile, self.backend, self.device)

    @property
    def int8_scheme(self) -> str | None:
        """The name of the ONNX Runtime int8 scheme the image path runs (``onnx_backend.INT8_SCHEMES``;
        None: not int8)."""
        return getattr(self._embedder, "scheme", None)

    @property
    def int8_gate_correlation(self) -> float | None:
        """The int8 fidelity gate's heatmap correlation with fp32, when this grounder's image path
        build measured it (None: torch backend, fp32 asked for, or the engine came from the cache)."""
        return getattr(self._embedder, "gate_correlation", None)

    @property
    def prepared(self) -> bool:
        """Whether the image path is built (by :meth:`prepare` or the first image)."""
        return self._embedder is not None

    def update_settings(self, **changes) -> None:
        """Change run-time settings (peaks, templates) of this grounder in place, without
        reloading the model."""
        forbidden = {"clip_model", "clip_pretrained", "fpn_checkpoint", "device", "clip_cache_dir", "backend",
                     "compile", "engine_cache_dir"} & changes.keys()
        if forbidden:
            raise ValueError(f"{sorted(forbidden)} need a new grounder")
        config = replace(self.config, **changes)
        resolve_backend(config.backend, config.precision, self.device, config.compile)
        if (config.precision, config.input_size) != (self.config.precision, self.config.input_size):
            self._embedder = None  # rebuilt (re-exported) on the next image
        self.config = config
        self.dtype = autocast_dtype(self.config.precision, self.device, self.image_path_mode)

    # ------------------------------------------------------------------ text
    def text_embeddings(self, prompts: Sequence[str]) -> torch.Tensor:
        """(N, C) unit-norm embeddings, each the mean over the prompt templates."""
        templates = self.config.prompt_templates
        texts = [t for p in prompts for t in expand(p, templates)]
        embeddings = self.clip.encode_text(texts).view(len(prompts), len(templates), -1).mean(dim=1)
        return torch.nn.functional.normalize(embeddings, dim=-1)

    # ------------------------------------------------------------------ image
    def autocast(self, cache: bool = True):
        """The autocast context of the configured precision (a no-op for fp32); ``cache``: whether
        casts are cached (not while a CUDA graph records)."""
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype, cache_enabled=cache)

    def prepare(self) -> "AffordanceGrounder":
        """Build the image path now (ONNX export / int8 quantisation, or a cache hit) rather than on
        the first image. Call it again after changing the weights in place."""
        self._embedder = make_pixel_embedder(self)
        return self

    def pixel_embeddings(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalised model input (B, 3, S, S) -> text-aligned pixel embeddings (B, C, h, w), by the
        configured backend."""
        if self._embedder is None:
            self.prepare()
        return self._embedder(pixels)

    def torch_pixel_embeddings(self, pixels: torch.Tensor) -> torch.Tensor:
        """The torch image path: channels_last, BatchNorm folded, autocast by the caller."""
        features = self.clip.image_features(pixels.contiguous(memory_format=torch.channels_last))
        if self.fpn is not None:
            return self.fpn(features)
        return self.clip.dense_embeddings(features.f3)

    @property
    def logit_scale(self) -> float:
        """CLIP's learned temperature (100 for OpenAI's weights)."""
        return float(self.clip.model.logit_scale.exp())

    def calibrate(self, dense: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Pixel embeddings (B, C, h, w) and their logits (B, N, h, w) -> float32 (B, N, h, w) at the
        coarse grid: the FPN's logits, or, for the training-free head, each prompt's probability
        against ``background_prompts`` (:func:`background_softmax`), which does not depend on the
        rest of the frame."""
        if self.fpn is not None:
            return logits.float()
        background = pixel_text_logits(dense, self.text_embeddings(self.config.background_prompts))
        return background_softmax(logits, background, self.logit_scale)

    def probabilities(self, maps: torch.Tensor) -> torch.Tensor:
        """float32 maps from :meth:`calibrate` (resampled to the image), overwritten -> values in
        [0, 1]: the sigmoid for the trained FPN (as trained); the training-free head's are
        probabilities already (clamped against resampling round-off)."""
        if self.fpn is not None:
            return maps.sigmoid_()
        return maps.clamp_(0.0, 1.0)

    def _embed_images(self, images: Sequence[np.ndarray]) -> tuple[torch.Tensor, list]:
        tensors = [torch.from_numpy(_check_image(image)).to(self.device, non_blocking=True) for image in images]
        pixels, boxes = letterbox_batch(tensors, self.config.input_size)
        return self.pixel_embeddings(pixels), boxes

    @torch.inference_mode()
    def heatmap_tensors(self, images: Sequence[np.ndarray], prompts: Sequence[str]) -> list[torch.Tensor]:
        """For each image, (N, H, W) probabilities for all N prompts, on the device. CLIP and the
        FPN run once per image whatever N is; per prompt, only a dot product at the coarse grid and
        one resampling to the image size are added."""
        with self.autocast():
            dense, boxes = self._embed_images(images)
            maps = self.calibrate(dense, pixel_text_logits(dense, self.text_embeddings(prompts)))
        return [self.probabilities(unletterbox(m, box)) for m, box in zip(maps, boxes)]

    def predict(self, image: np.ndarray, prompts: Sequence[str]) -> list[AffordancePrediction]:
        """uint8 RGB H x W x 3 image and prompts -> one :class:`AffordancePrediction` per prompt."""
        return self.predict_batch([image], prompts)[0]

    def predict_batch(self, images: Sequence[np.ndarray], prompts: Sequence[str]) -> list[list[AffordancePrediction]]:
        """Several images (any sizes) in one forward pass -> for each image, one
        :class:`AffordancePrediction` per prompt (all prompts on every image)."""
        prompts = [p for p in prompts]
        if not prompts:
            return [[] for _ in images]
        return [[AffordancePrediction(p, h, peaks) for p, h, peaks in zip(prompts, r.maps.cpu().numpy(), r.peaks)]
                for r in self.predict_tensors(images, prompts)]

    def predict_tensors(self, images: Sequence[np.ndarray], prompts: Sequence[str]) -> list[DeviceResult]:
        """As :meth:`predict_batch`, but each image's maps stay on the device (see :meth:`peaks`)."""
        return [DeviceResult(list(prompts), maps, self.peaks(maps)) for maps in self.heatmap_tensors(images, prompts)]

    def peaks(self, maps: torch.Tensor) -> list[list[Peak]]:
        """Each map's peaks (N, H, W) with the configured settings: on CUDA found on the device
        (only the candidates cross to the host), on the CPU by OpenCV's dilation (faster there)."""
        cfg = self.config
        if maps.device.type == "cuda":
            return find_peaks_torch(maps, cfg.num_peaks, cfg.peak_threshold, cfg.peak_min_distance)
        return [find_peaks(m, cfg.num_peaks, cfg.peak_threshold, cfg.peak_min_distance) for m in maps.numpy()]

    @torch.inference_mode()
    def heatmaps(self, images: Sequence[np.ndarray], prompts: Sequence[str]) -> list[np.ndarray]:
        """Batched scoring: one prompt per image -> one float32 H x W map per image (no peaks).
        Only each image's own map is computed."""
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts: give one prompt per image")
        unique = list(dict.fromkeys(prompts))
        text = self.text_embeddings(unique)[[unique.index(p) for p in prompts]]
        with self.autocast():
            dense, boxes = self._embed_images(images)
            maps = self.calibrate(dense, paired_pixel_text_logits(dense, text)[:, None])
        return [self.probabilities(unletterbox(m, box))[0].cpu().numpy() for m, box in zip(maps, boxes)]


def _check_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError("image must be a uint8 numpy array of shape H x W x 3 (RGB), got "
                         f"{getattr(image, 'dtype', type(image))} {getattr(image, 'shape', '')}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image has zero size {image.shape}")
    return np.ascontiguousarray(image)
