"""Real RGB-D test data: the Middlebury 2014 "Motorcycle" frame that scikit-image ships."""
from __future__ import annotations

import numpy as np
from sensor_msgs.msg import CameraInfo

# Middlebury 2014 "Motorcycle" at the 1/4 scale of skimage.data.stereo_motorcycle(): focal length
# and principal point (px), baseline (m) and disparity offset (px).
MOTORCYCLE_F, MOTORCYCLE_CX, MOTORCYCLE_CY = 3979.911 / 4, 1244.772 / 4, 1019.507 / 4
MOTORCYCLE_BASELINE_M, MOTORCYCLE_DOFFS = 0.193001, 124.343 / 4


def motorcycle_rgbd() -> tuple[np.ndarray, np.ndarray, CameraInfo]:
    """A real RGB-D frame: the left image, float32 depth in metres (NaN where the disparity is
    unknown) from depth = baseline * f / (disparity + doffs), and its CameraInfo (K, P, R)."""
    import skimage.data

    left, _, disparity = skimage.data.stereo_motorcycle()
    f, cx, cy = MOTORCYCLE_F, MOTORCYCLE_CX, MOTORCYCLE_CY
    with np.errstate(invalid="ignore", divide="ignore"):
        depth = (MOTORCYCLE_BASELINE_M * f / (disparity + MOTORCYCLE_DOFFS)).astype(np.float32)
    depth[~np.isfinite(disparity) | ~np.isfinite(depth) | (depth <= 0)] = np.nan
    info = CameraInfo(width=left.shape[1], height=left.shape[0], distortion_model="plumb_bob")
    info.k = [f, 0.0, cx, 0.0, f, cy, 0.0, 0.0, 1.0]
    info.p = [f, 0.0, cx, 0.0, 0.0, f, cy, 0.0, 0.0, 0.0, 1.0, 0.0]
    info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    return left, depth, info


def motorcycle_point(depth_m: np.ndarray, u: float, v: float, window: int = 5) -> tuple | None:
    """An independent deprojection of pixel (u, v) of the Motorcycle frame: the median valid depth
    in the ``window`` square around it through the pinhole intrinsics; None without valid depth."""
    half, u, v = window // 2, round(u), round(v)
    patch = depth_m[max(0, v - half):v + half + 1, max(0, u - half):u + half + 1]
    patch = patch[np.isfinite(patch)]
    if not patch.size:
        return None
    z = float(np.median(patch))
    return ((u - MOTORCYCLE_CX) * z / MOTORCYCLE_F, (v - MOTORCYCLE_CY) * z / MOTORCYCLE_F, z)


def one_phrase_world_weights(path, phrase: str, seed: int = 0, spread: float = 1e-3):
    """Write RN-tiny CLIP weights (safetensors) whose training-free pixel embeddings all lie within
    a hair of the text embedding of ``phrase``, with OpenAI's logit scale (100): to this model
    every image shows ``phrase`` and nothing else, with a little variation from pixel to pixel.
    Returns the path."""
    import math

    import open_clip
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = open_clip.create_model("RN-tiny", pretrained=None, force_quick_gelu=True).eval()
    with torch.no_grad():
        text = model.encode_text(open_clip.get_tokenizer("RN-tiny")([phrase]))[0]
        pool = model.visual.attnpool
        pool.c_proj.weight.mul_(spread)
        pool.c_proj.bias.copy_(text / text.norm())
        model.logit_scale.fill_(math.log(100.0))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path
