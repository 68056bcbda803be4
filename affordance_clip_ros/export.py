"""`affordance-clip export --onnx OUT`: the image path as ONNX (for TensorRT / ONNX Runtime users).

The graph maps normalised pixels (B, 3, H, W), H and W multiples of 32 (or exactly the input
size with --static), to text-aligned pixel embeddings (B, C, H/s, W/s): frozen CLIP trunk + the
trained FPN (s = 8 for three levels), or + the training-free dense head (s = 32) without a
checkpoint. Heatmap logits are then ``einsum("bchw,nc->bnhw", embeddings, text_embeddings)``.
Pre-processing (letterbox, CLIP mean/std) and the text encoder stay outside; the values needed
are stored in the model's metadata. After writing, ONNX Runtime's output is compared with
PyTorch's; the command fails (exit 1) when they differ by more than the tolerance.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from .cli_common import add_model_arguments
from .model import AffordanceGrounder, GrounderConfig
from .model.clip_backbone import CLIP_MEAN, CLIP_STD
from .model.letterbox import letterbox_batch

log = logging.getLogger(__name__)
DEFAULT_TOLERANCE = 1e-3  # max |onnxruntime - torch| / max |torch|, fp32 both


def build_fp32_grounder(args: argparse.Namespace) -> AffordanceGrounder:
    config = GrounderConfig(clip_model=args.clip_model, clip_pretrained=args.clip_pretrained,
                            fpn_checkpoint=args.fpn_checkpoint, device="cpu", precision="fp32",
                            input_size=args.input_size, backend="torch")
    return AffordanceGrounder.from_config(config)


def metadata(grounder: AffordanceGrounder, dynamic: bool) -> dict[str, str]:
    """What a consumer of the .onnx needs besides the graph (stored as ONNX metadata_props)."""
    stride = grounder.fpn.config.output_stride if grounder.fpn is not None else 32
    cfg = grounder.config
    return {"producer": "affordance_clip_ros", "clip_model": cfg.clip_model, "clip_pretrained": cfg.clip_pretrained,
            "mode": grounder.mode, "fpn_checkpoint": str(cfg.fpn_checkpoint or ""), "input_size": str(cfg.input_size),
            "dynamic_hw": str(dynamic).lower(), "output_stride": str(stride),
            "embed_dim": str(grounder.clip.embed_dim), "pixel_mean": json.dumps(CLIP_MEAN),
            "pixel_std": json.dumps(CLIP_STD),
            "preprocessing": "RGB/255, letterbox (scale longest side, centre, pad 0 after normalisation), "
                             "(x - mean) / std",
            "heatmap": "sigmoid(einsum('bchw,nc->bnhw', pixel_embeddings, text)) for the FPN; "
                       "for the training-free head, per pixel sigmoid(s * l_prompt - logsumexp(s * l_background)) "
                       "with s = min(CLIP's logit scale, 100) and l the cosine similarities with the prompt and the "
                       f"background phrases {list(cfg.background_prompts)}"}


def verification_inputs(input_size: int, dynamic: bool) -> list[torch.Tensor]:
    """A real photo at the export size, noise at the export size and, for a dynamic graph, a
    non-square input of another size."""
    import skimage.data

    photo, _ = letterbox_batch([torch.from_numpy(skimage.data.coffee())], input_size)
    generator = torch.Generator().manual_seed(0)
    inputs = [photo, torch.randn(1, 3, input_size, input_size, generator=generator)]
    if dynamic:
        inputs.append(torch.randn(2, 3, input_size - 96 if input_size > 128 else 64, input_size + 64,
                                  generator=generator))
    return inputs


def verify(onnx_path: Path, grounder: AffordanceGrounder, input_size: int, dynamic: bool,
           tolerance: float) -> tuple[bool, list[dict]]:
    """Compare ONNX Runtime (fp32, CPU) with the torch image path; one record per input."""
    from .model.onnx_backend import OrtImagePath

    session = OrtImagePath(onnx_path)
    records = []
    with torch.inference_mode():
        for pixels in verification_inputs(input_size, dynamic):
            reference = grounder.torch_pixel_embeddings(pixels).float()
            got = session(pixels)
            if got.shape != reference.shape:
                records.append({"input": list(pixels.shape), "shape": list(got.shape), "ok": False,
                                "error": f"shape {tuple(got.shape)} != torch {tuple(reference.shape)}"})
                continue
            err = float((got - reference).abs().max())
            scale = float(reference.abs().max()) or 1.0
            records.append({"input": list(pixels.shape), "output": list(got.shape), "max_abs_err": err,
                            "rel_err": err / scale, "ok": err / scale <= tolerance})
    return all(r["ok"] for r in records), records


def add_metadata(path: Path, props: dict[str, str]) -> None:
    import onnx

    model = onnx.load(str(path))
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))


def run(args: argparse.Namespace) -> int:
    from .model.onnx_backend import ImagePath, export_onnx

    out = Path(args.onnx)
    out.parent.mkdir(parents=True, exist_ok=True)
    grounder = build_fp32_grounder(args)
    dynamic = not args.static
    export_onnx(ImagePath(grounder.clip, grounder.fpn), out, args.input_size, dynamic=dynamic)
    add_metadata(out, metadata(grounder, dynamic))
    ok, records = verify(out, grounder, args.input_size, dynamic, args.tolerance)
    shape = "B x 3 x H x W (H, W multiples of 32)" if dynamic else f"1 x 3 x {args.input_size} x {args.input_size}"
    stride = metadata(grounder, dynamic)["output_stride"]
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB): {grounder.config.clip_model}, {grounder.mode} mode")
    print(f"  input  'pixels': {shape}, CLIP-normalised RGB")
    print(f"  output 'pixel_embeddings': B x {grounder.clip.embed_dim} x H/{stride} x W/{stride}")
    print(f"ONNX Runtime vs PyTorch (fp32, CPU), tolerance max|diff| / max|torch| <= {args.tolerance:g}:")
    for r in records:
        detail = (f"max abs err {r['max_abs_err']:.3g}, relative {r['rel_err']:.3g}" if "rel_err" in r
                  else r["error"])
        print(f"  input {tuple(r['input'])}: {detail}  {'OK' if r['ok'] else 'FAIL'}")
    if not ok:
        log.error("ONNX Runtime output does not match PyTorch within %g: do not use %s", args.tolerance, out)
        return 1
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "export", help="export the image path (CLIP + FPN or training-free head) to ONNX",
        description=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--onnx", required=True, metavar="OUT", help="output .onnx file")
    add_model_arguments(parser, names=("clip_model", "clip_pretrained", "fpn_checkpoint", "input_size"),
                        templates=False)
    parser.add_argument("--static", action="store_true",
                        help="fixed batch 1 x --input-size (the traced size) instead of dynamic batch, height "
                             "and width")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help=f"largest accepted max|onnxruntime - torch| / max|torch| (default {DEFAULT_TOLERANCE:g})")
    parser.set_defaults(func=run)
