"""ONNX Runtime backend for the image path: export, int8 quantisation, cached CPU sessions.

The image path is normalised pixels (B, 3, H, W) -> text-aligned pixel embeddings (B, C, H/s, W/s)
(frozen CLIP trunk + trained FPN, or + the training-free dense head). Text encoding and the
per-prompt head stay in torch. The exported graph takes any H, W that are multiples of 32.

Example::

    export_onnx(ImagePath(grounder.clip, grounder.fpn), "image_path.onnx", input_size=416)
    embed = OrtImagePath(Path("image_path.onnx").read_bytes())
    embed(torch.zeros(1, 3, 416, 416)).shape  # (1, 512, 52, 52)
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import re
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from ..io import written_atomically
from .fidelity import min_correlation
from .clip_backbone import FrozenCLIP
from .fpn import AffordanceFPN

log = logging.getLogger(__name__)

INPUT_NAME = "pixels"
OUTPUT_NAME = "pixel_embeddings"
OPSET = 17
INT8_MIN_CORRELATION = 0.99  # int8 is used only when its heatmaps correlate this well with fp32
# Photos shipped with scikit-image: int8 calibration, and the fidelity check int8 must pass.
CALIBRATION_PHOTOS = ("stereo_motorcycle", "immunohistochemistry", "astronaut")
CHECK_PHOTOS = ("coffee", "chelsea")


@dataclass(frozen=True)
class Int8Scheme:
    """Which convolutions int8 leaves in fp32 (regular expressions on ONNX node names, ``re.search``);
    every other conv of the CLIP trunk is quantised, and the residual stream always stays fp32.
    ``name`` also names the cached engine file."""
    name: str
    exclude: tuple[str, ...]


# Tried in order; the first whose heatmaps pass the fidelity gate is used. Always fp32: the FPN (int8
# lowered the benchmark's heatmap correlation from 0.998 to 0.988) and the stem's conv1-3 ("^/conv";
# the layers are "/layerN/..."). The shortcut ("downsample") convs carry the whole signal where a
# residual branch is zero (open_clip's random weights zero them all): quantising those of layer1-3
# is 1.3x faster on RN101 (no layout conversion between integer convs) but rounds that signal, so
# the gate refuses it for some weights (RN-tiny at seeds 0-2, 0.956-0.980), and then the second
# scheme, with every shortcut in fp32, is built. Layer4's shortcut in int8 made the gate refuse
# RN101 at seed 0 (0.967). Measured on 2 cores, docs/performance.md.
INT8_SCHEMES = (
    Int8Scheme("int8-shortcuts", (r"^/fpn/", r"^/conv", r"^/layer4/.*/downsample/")),
    Int8Scheme("int8-branches", (r"^/fpn/", r"^/conv", r"/downsample/")),
)
# Activation ranges: ONNX Runtime's percentile calibration (symmetric, this percentile of |x|);
# better than min-max here (benchmark heatmap correlation 0.9961 against 0.9955).
CALIBRATION_PERCENTILE = 99.999
CACHE_FORMAT = 5  # bump when the export or quantisation recipe changes


class ImagePath(nn.Module):
    """The exported computation: CLIP trunk, then the FPN or (without one) the training-free head.

    Same maths as :meth:`AffordanceGrounder.torch_pixel_embeddings`; ``fingerprint_modules`` are
    the parts whose weights define it (the text encoder is not among them).
    """

    def __init__(self, clip: FrozenCLIP, fpn: AffordanceFPN | None):
        super().__init__()
        self.clip = clip
        self.fpn = fpn

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        features = self.clip.image_features(pixels)
        return self.fpn(features) if self.fpn is not None else self.clip.dense_embeddings(features.f3)

    @property
    def embed_dim(self) -> int:
        return self.clip.embed_dim

    def fingerprint_modules(self) -> list[nn.Module]:
        return [self.clip.model.visual] + ([self.fpn] if self.fpn is not None else [])


def export_onnx(module: nn.Module, out: str | Path | io.BytesIO, input_size: int = 416, dynamic: bool = True) -> None:
    """Trace ``module`` in fp32 and write ONNX: dynamic batch, H and W unless ``dynamic`` is False."""
    example = torch.zeros(1, 3, input_size, input_size, device=_device_of(module))
    axes = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"},
            OUTPUT_NAME: {0: "batch", 2: "grid_height", 3: "grid_width"}} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about constant sizes that are constant by design
        torch.onnx.export(module.eval(), (example,), out, dynamo=False, input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], dynamic_axes=axes, opset_version=OPSET,
                          do_constant_folding=True)


def _device_of(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def session_options(threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or torch.get_num_threads()
    # No busy-waiting between operators: on a shared CPU (a robot's, or CI) spinning threads
    # steal the cores the next operator needs; measured 15 % faster on a loaded 2-core machine.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


class OrtImagePath:
    """The image path as an ONNX Runtime CPU session: torch pixels in, torch embeddings out.
    ``scheme``: the name of its int8 scheme (None: fp32). ``gate_correlation``: the int8 fidelity
    gate's figure when this build measured it (the best refused one for an fp32 fallback), else None."""

    def __init__(self, model: bytes | str | Path, threads: int | None = None, precision: str = "fp32",
                 scheme: str | None = None):
        import onnxruntime as ort

        source = model if isinstance(model, bytes) else str(model)
        self.session = ort.InferenceSession(source, session_options(threads), providers=["CPUExecutionProvider"])
        self.precision, self.scheme = precision, scheme
        self.gate_correlation: float | None = None

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        array = pixels.detach().float().contiguous().cpu().numpy()
        return torch.from_numpy(self.session.run([OUTPUT_NAME], {INPUT_NAME: array})[0])


def photo_pixels(names: Sequence[str], input_size: int) -> list[torch.Tensor]:
    """scikit-image photos letterboxed to (1, 3, S, S) model inputs."""
    import skimage.data

    from .letterbox import letterbox_batch

    out = []
    for name in names:
        image = getattr(skimage.data, name)()
        image = image[0] if isinstance(image, tuple) else image
        out.append(letterbox_batch([torch.from_numpy(np.ascontiguousarray(image[..., :3]))], input_size)[0])
    return out


def excluded_convs(nodes: Iterable, exclude: Sequence[str]) -> list[str]:
    """Names of the Conv nodes that one of the ``exclude`` patterns matches (``re.search``)."""
    return [n.name for n in nodes if n.op_type == "Conv" and any(re.search(p, n.name) for p in exclude)]


def quantize_int8(fp32_model: bytes, calibration: Sequence[torch.Tensor], exclude: Sequence[str]) -> bytes:
    """Static int8 quantisation of the CLIP trunk's convolutions (QDQ, per-channel int8 weights,
    uint8 activations, percentile calibration on ``calibration`` inputs); convolutions that one of the
    ``exclude`` patterns matches stay fp32, and so does the residual stream (see
    :func:`feed_fp32_to_fp32_nodes`). Runs on VNNI as u8s8 integer convolutions."""
    import onnx

    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.inputs = iter([{INPUT_NAME: p.float().cpu().numpy()} for p in calibration])

        def get_next(self):
            return next(self.inputs, None)

    with tempfile.TemporaryDirectory() as tmp:
        raw, prepared, quantised = (Path(tmp) / n for n in ("fp32.onnx", "prepared.onnx", "int8.onnx"))
        raw.write_bytes(fp32_model)
        quant_pre_process(str(raw), str(prepared), skip_symbolic_shape=True)
        kept = excluded_convs(onnx.load(str(prepared)).graph.node, exclude)
        with contextlib.redirect_stdout(io.StringIO()):  # the percentile calibrator prints its progress
            quantize_static(str(prepared), str(quantised), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            op_types_to_quantize=["Conv"], nodes_to_exclude=kept,
                            calibrate_method=CalibrationMethod.Percentile,
                            extra_options={"CalibPercentile": CALIBRATION_PERCENTILE})
        model = onnx.load(str(quantised))
    feed_fp32_to_fp32_nodes(model.graph, set(kept))
    return model.SerializeToString()


def feed_fp32_to_fp32_nodes(graph, fp32_convs: set[str]) -> int:
    """Rewire, in place, the nodes that run in fp32 to read a tensor itself rather than its
    quantised-dequantised copy, which ONNX Runtime's quantiser shares among all readers; returns
    how many inputs changed. So a block's output reaches the next residual addition and the fp32
    shortcut convolutions unrounded: only the quantised branches' outputs are rounded, instead of
    the whole residual stream once per block. Kept: the quantised convolutions' inputs, a quantised
    convolution's rounded output (ONNX Runtime then fuses it into an integer convolution), and the
    Relu / pooling between two quantisations (fused too)."""
    producer = {out: node for node in graph.node for out in node.output}
    readers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)

    def integer(node) -> bool:
        if node.op_type == "Conv":
            return node.name not in fp32_convs
        if node.op_type in ("Relu", "AveragePool", "MaxPool"):
            return all(r.op_type == "QuantizeLinear" for out in node.output for r in readers.get(out, []))
        return node.op_type in ("QuantizeLinear", "DequantizeLinear")

    changed = 0
    for node in graph.node:
        if integer(node):
            continue
        for index, name in enumerate(node.input):
            dequantise = producer.get(name)
            quantise = producer.get(dequantise.input[0]) if dequantise and dequantise.op_type == "DequantizeLinear" \
                else None
            if quantise is None or quantise.op_type != "QuantizeLinear":
                continue
            source = producer.get(quantise.input[0])
            if source is not None and source.op_type == "Conv" and integer(source):
                continue
            node.input[index] = quantise.input[0]
            changed += 1
    return changed


def heatmap_correlation(reference: Callable, candidate: Callable, inputs: Sequence[torch.Tensor],
                        heatmaps: Callable[[torch.Tensor], torch.Tensor]) -> float:
    """Smallest Pearson correlation, over inputs x maps, between the heatmaps (``heatmaps``:
    embeddings (1, C, h, w) -> maps (N, h, w)) of two image paths."""
    return min_correlation((heatmaps(reference(pixels).float()), heatmaps(candidate(pixels).float()))
                           for pixels in inputs)


def model_fingerprint(modules: Sequence[nn.Module], *extra) -> str:
    """sha256 of the modules' tensors and of ``extra`` (config, versions): the engine cache key."""
    import onnxruntime

    digest = hashlib.sha256(repr((CACHE_FORMAT, torch.__version__, onnxruntime.__version__, extra)).encode())
    for name, tensor in ((n, t) for m in modules for n, t in sorted(m.state_dict().items())):
        digest.update(name.encode())
        digest.update(repr((tuple(tensor.shape), str(tensor.dtype))).encode())
        values = tensor.detach().cpu()
        digest.update(np.ascontiguousarray((values.float() if values.dtype == torch.bfloat16 else values).numpy()))
    return digest.hexdigest()[:32]


def default_cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "affordance_clip_ros" / "onnx"


def _write_atomically(path: Path, data: bytes) -> None:
    try:
        with written_atomically(path) as tmp:
            Path(tmp).write_bytes(data)
    except OSError as e:
        log.warning("Cannot cache the ONNX model at %s (%s): it will be rebuilt at the next start.", path, e)


def build_ort_image_path(module: ImagePath, input_size: int, precision: str, cache_dir: str | Path | None,
                         cacheable: bool, heatmaps: Callable[[torch.Tensor], torch.Tensor] | None = None,
                         threads: int | None = None) -> OrtImagePath:
    """An ONNX Runtime session for ``module``'s image path, from the cache when it holds one.

    precision "fp32"; "int8" or "auto": the first of INT8_SCHEMES whose heatmaps correlate >=
    INT8_MIN_CORRELATION with fp32 on the check photos, else fp32 with a warning (``heatmaps`` maps
    embeddings to the maps the user gets; default: logits for 8 random text directions). Building
    one scheme takes 12-17 s for RN101 on a 2-core CPU (then cached). The cache
    (``cache_dir``, default ~/.cache/affordance_clip_ros/onnx) is keyed by a hash of the weights and
    of the int8 schemes, so a new checkpoint never reuses a stale engine; ``cacheable`` False
    (random weights) skips it.
    """
    want_int8 = precision in ("auto", "int8")
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    key = model_fingerprint(module.fingerprint_modules(), input_size, INT8_SCHEMES, CALIBRATION_PERCENTILE,
                            INT8_MIN_CORRELATION, CALIBRATION_PHOTOS, CHECK_PHOTOS) if cacheable else None
    if key:
        if want_int8 and (cache / f"{key}.int8-refused").is_file():
            want_int8 = False
            log.warning("int8 was refused for these weights before (fidelity): using ONNX Runtime fp32.")
        kinds = [("int8", scheme.name) for scheme in INT8_SCHEMES] if want_int8 else [("fp32", None)]
        for kind, scheme in kinds:
            path = cache / f"{key}.{scheme or kind}.onnx"
            if path.is_file():
                log.info("ONNX Runtime %s image path from the cache: %s", kind, path)
                return OrtImagePath(path, threads, kind, scheme)
    buffer = io.BytesIO()
    export_onnx(module, buffer, input_size)
    fp32 = buffer.getvalue()
    fp32_path = OrtImagePath(fp32, threads, "fp32")
    if not want_int8:
        if key:
            _write_atomically(cache / f"{key}.fp32.onnx", fp32)
        return fp32_path
    if heatmaps is None:
        probes = torch.randn(8, module.embed_dim, generator=torch.Generator().manual_seed(0))

        def heatmaps(embeddings: torch.Tensor) -> torch.Tensor:
            return torch.einsum("bchw,nc->nhw", embeddings, probes)
    calibration, check = photo_pixels(CALIBRATION_PHOTOS, input_size), photo_pixels(CHECK_PHOTOS, input_size)
    refused = []
    for scheme in INT8_SCHEMES:
        log.info("Quantising the image path to int8, scheme %s (%s)...", scheme.name,
                 "once per set of weights; cached" if key else "random weights: at every start, not cached")
        int8 = quantize_int8(fp32, calibration, scheme.exclude)
        int8_path = OrtImagePath(int8, threads, "int8", scheme.name)
        with torch.inference_mode():
            corr = heatmap_correlation(fp32_path, int8_path, check, heatmaps)
        if corr >= INT8_MIN_CORRELATION:
            int8_path.gate_correlation = corr
            log.info("int8 image path, scheme %s: heatmap correlation with fp32 %.4f on the check photos.",
                     scheme.name, corr)
            if key:
                _write_atomically(cache / f"{key}.{scheme.name}.onnx", int8)
            return int8_path
        log.info("int8 scheme %s: heatmaps correlate only %.4f with fp32 (< %.2f).", scheme.name, corr,
                 INT8_MIN_CORRELATION)
        refused.append(corr)
    fp32_path.gate_correlation = max(refused)
    log.warning("int8 heatmaps correlate at best %.4f with fp32 (< %.2f): using ONNX Runtime fp32 instead.",
                max(refused), INT8_MIN_CORRELATION)
    if key:
        _write_atomically(cache / f"{key}.int8-refused", f"{max(refused)}\n".encode())
        _write_atomically(cache / f"{key}.fp32.onnx", fp32)
    return fp32_path
