"""Frozen open_clip ResNet CLIP: multi-scale image features and cached text embeddings."""
from __future__ import annotations

import logging
import math
import pickle
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import open_clip
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .weights import WeightsLoadError, resolve_pretrained

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).parent / "configs"
open_clip.add_model_config(CONFIG_DIR)  # registers "RN-tiny" (random weights, tests) and "RN-toy" (toy world)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class ImageFeatures:
    """CLIP visual features of a batch. Shapes for an input of H x W."""

    f1: torch.Tensor  # layer2, (B, C1, H/8, W/8)
    f2: torch.Tensor  # layer3, (B, C2, H/16, W/16)
    f3: torch.Tensor  # layer4, (B, C3, H/32, W/32)
    global_embedding: torch.Tensor  # attention-pool output F_S, (B, C)


class FrozenCLIP(nn.Module):
    """An open_clip ResNet CLIP with every parameter frozen and BatchNorm in eval mode.

    Example::

        clip = FrozenCLIP.create("RN-tiny", "none")
        feats = clip.image_features(torch.zeros(1, 3, 416, 416))  # f1: (1, 128, 52, 52)
        text = clip.encode_text(["cut with"])  # (1, 64), unit norm
    """

    def __init__(self, model: open_clip.CLIP, tokenizer, model_name: str, text_cache_size: int = 256):
        super().__init__()
        if not isinstance(getattr(model, "visual", None), open_clip.modified_resnet.ModifiedResNet):
            raise TypeError(f"CLIP model '{model_name}' is not a ResNet CLIP; use an RN* model such as RN101.")
        self.model = model
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.text_cache_size = text_cache_size
        self._text_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._pos_embed_cache: dict[tuple[int, int], torch.Tensor] = {}
        self.requires_grad_(False)
        self.eval()
        fold_batchnorm(model.visual)
        drop_unit_pools(model.visual)

    @classmethod
    def create(cls, model_name: str = "RN101", pretrained: str = "openai", device: str | torch.device = "cpu",
               cache_dir: str | None = None, text_cache_size: int = 256) -> "FrozenCLIP":
        """Build the model and load its weights (see :func:`resolve_pretrained` for the order)."""
        if model_name not in open_clip.list_models():
            raise ValueError(f"Unknown CLIP model '{model_name}'. ResNet models: "
                             f"{[m for m in open_clip.list_models() if m.startswith('RN')]}")
        source = resolve_pretrained(model_name, pretrained, cache_dir)
        try:
            model = open_clip.create_model(model_name, pretrained=source, device=device, cache_dir=cache_dir,
                                           force_quick_gelu=True, weights_only=True)
        except pickle.UnpicklingError as e:
            raise WeightsLoadError(
                f"CLIP weights '{source}' were refused: the file holds Python objects besides tensors, and "
                f"loading it could run code. Use a .safetensors file or a plain tensor state dict.") from e
        except (RuntimeError, AssertionError, KeyError, SafetensorError) as e:  # open_clip asserts on shapes
            raise WeightsLoadError(f"CLIP weights '{source}' do not fit model '{model_name}' (wrong architecture, "
                                   f"or a damaged file): {str(e).splitlines()[0]}") from e
        return cls(model, open_clip.get_tokenizer(model_name), model_name, text_cache_size).to(device)

    def train(self, mode: bool = True) -> "FrozenCLIP":
        """CLIP stays in eval mode whatever the caller asks (frozen BatchNorm statistics)."""
        return super().train(False)

    @property
    def embed_dim(self) -> int:
        return self.model.visual.output_dim

    @property
    def feature_channels(self) -> tuple[int, int, int]:
        """Channels of (f1, f2, f3)."""
        visual = self.model.visual
        return tuple(layer[-1].conv3.out_channels for layer in (visual.layer2, visual.layer3, visual.layer4))

    @property
    def device(self) -> torch.device:
        return self.model.logit_scale.device

    # ------------------------------------------------------------------ image
    def image_features(self, pixels: torch.Tensor) -> ImageFeatures:
        """Normalised pixels (B, 3, H, W) with H, W multiples of 32 -> :class:`ImageFeatures`."""
        out = self.model.visual.forward_intermediates(pixels, indices=[2, 3, 4], intermediates_only=True)
        f1, f2, f3 = out["image_intermediates"]
        return ImageFeatures(f1, f2, f3, self.attention_pool(f3))

    def _positional_embedding(self, height: int, width: int) -> torch.Tensor:
        """The attention pool's positional embedding, bicubically resized to a height x width grid."""
        if torch.jit.is_tracing() or torch.compiler.is_compiling():
            # ONNX export (sizes are graph values) and torch.compile (a cache filled inside a CUDA
            # graph would live in its memory pool): resize inside the graph
            return self._resize_positional_embedding(height, width)
        key = (int(height), int(width))
        if key not in self._pos_embed_cache:
            self._pos_embed_cache[key] = self._resize_positional_embedding(*key)
        return self._pos_embed_cache[key]

    def _resize_positional_embedding(self, height, width) -> torch.Tensor:
        pos = self.model.visual.attnpool.positional_embedding
        side = math.isqrt(int(pos.shape[0]) - 1)
        grid = pos[1:]  # (side * side, C), row-major over the side x side grid
        if torch.jit.is_tracing() or (side, side) != (height, width):
            # bicubic resizing is separable: two small matrix products, the same values as resizing the
            # C planes at once, which ONNX Runtime's Resize took 35 ms for (RN101, 2048 planes, 7 -> 13)
            channels = grid.shape[1]
            grid = (bicubic_matrix(side, height, grid.device) @ grid.float().reshape(side, side * channels))
            grid = (bicubic_matrix(side, width, grid.device) @ grid.reshape(height, side, channels))
            grid = grid.reshape(-1, channels).to(pos.dtype)
        return torch.cat([pos[:1], grid], dim=0)

    def attention_pool(self, f3: torch.Tensor) -> torch.Tensor:
        """CLIP's attention pooling of layer4 (B, C3, h, w) -> global embedding (B, C), any grid size.

        Only the mean token queries, so the key and value projections are moved to that one query:
        a key's bias adds the same to all of a head's logits (softmax ignores it), and the attention
        weights sum to 1 (the value projection of the weighted mean of tokens is the weighted mean of
        their projections). Same result as ``nn.MultiheadAttention``, without projecting every token.
        """
        pool = self.model.visual.attnpool
        b, c, h, w = f3.shape
        heads = pool.num_heads
        x = f3.flatten(2).transpose(1, 2)  # (B, hw, C3)
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)
        x = (x + self._positional_embedding(h, w).to(x.dtype))[:, None]  # (B, 1, 1 + hw, C3)
        query = F.linear(x[:, 0, 0], pool.q_proj.weight, pool.q_proj.bias) * (c // heads) ** -0.5
        keys = query.reshape(b, heads, 1, -1) @ pool.k_proj.weight.reshape(heads, -1, c)  # (B, heads, 1, C3)
        weights = torch.softmax(keys @ x.transpose(-1, -2), dim=-1)  # (B, heads, 1, 1 + hw)
        values = (weights @ x) @ pool.v_proj.weight.reshape(heads, -1, c).transpose(-1, -2)  # (B, heads, 1, C3 / heads)
        values = values.reshape(b, c) + pool.v_proj.bias
        return F.linear(values, pool.c_proj.weight, pool.c_proj.bias)

    def dense_embeddings(self, f3: torch.Tensor) -> torch.Tensor:
        """Training-free dense features (MaskCLIP): the pool's value and output projections at
        every layer4 location. (B, C3, h, w) -> (B, C, h, w), L2-normalised over channels."""
        pool = self.model.visual.attnpool
        x = f3.permute(0, 2, 3, 1)
        x = F.linear(F.linear(x, pool.v_proj.weight, pool.v_proj.bias), pool.c_proj.weight, pool.c_proj.bias)
        return F.normalize(x.permute(0, 3, 1, 2), dim=1)

    # ------------------------------------------------------------------ text
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit-norm text embeddings (N, C) for N strings; repeated strings come from a bounded LRU cache."""
        missing = list(dict.fromkeys(t for t in texts if t not in self._text_cache))
        if missing:
            self._warn_truncated(missing)
            tokens = self.tokenizer(missing).to(self.device)
            # fp32 whatever autocast the caller runs under: the cache holds one embedding per text
            with torch.inference_mode(), torch.autocast(self.device.type, enabled=False):
                embeddings = F.normalize(self.model.encode_text(tokens).float(), dim=-1)
            for text, emb in zip(missing, embeddings):
                self._text_cache[text] = emb
        for text in texts:
            self._text_cache.move_to_end(text)
        result = torch.stack([self._text_cache[t] for t in texts])
        while len(self._text_cache) > self.text_cache_size:
            self._text_cache.popitem(last=False)
        return result

    def _warn_truncated(self, texts: Sequence[str]) -> None:
        limit = self.tokenizer.context_length - 2  # start and end tokens
        for text in texts:
            n = len(self.tokenizer.encode(text)) if hasattr(self.tokenizer, "encode") else 0
            if n > limit:
                log.warning("Prompt of %d tokens truncated to CLIP's context of %d: '%s...'", n, limit, text[:60])

    @property
    def text_cache_len(self) -> int:
        return len(self._text_cache)


def _fold_pair(owner: nn.Module, conv_name: str, bn_name: str) -> None:
    conv, bn = getattr(owner, conv_name), getattr(owner, bn_name)
    if isinstance(bn, nn.BatchNorm2d):
        setattr(owner, conv_name, fuse_conv_bn_eval(conv, bn))
        setattr(owner, bn_name, nn.Identity())


def bicubic_matrix(size_in: int, size_out, device: torch.device) -> torch.Tensor:
    """(size_out, size_in) matrix of 1-D bicubic resizing as ``F.interpolate`` does it
    (align_corners False); ``size_out`` may be a traced size."""
    identity = torch.eye(size_in, device=device)[None, :, :, None]  # one plane per input position
    return F.interpolate(identity, size=(size_out, 1), mode="bicubic", align_corners=False)[0, :, :, 0].T


def drop_unit_pools(visual: nn.Module) -> None:
    """Replace the 1x1 average pools (layer1's shortcut pools with stride 1) by identities: exact,
    and ONNX Runtime does not remove them itself (2 ms of RN101's int8 path at 416)."""
    for layer in (visual.layer1, visual.layer2, visual.layer3, visual.layer4):
        for block in layer:
            for parent in (block, block.downsample):
                for name, child in list((parent or nn.Module()).named_children()):
                    if isinstance(child, nn.AvgPool2d) and child.kernel_size in (1, (1, 1)):
                        setattr(parent, name, nn.Identity())


def fold_batchnorm(visual: nn.Module) -> None:
    """Fold every frozen BatchNorm of the ResNet trunk into the convolution before it.

    Exact up to float rounding (the statistics never change) and about 10 % faster on CPU.
    """
    for index in ("1", "2", "3"):
        _fold_pair(visual, f"conv{index}", f"bn{index}")
    for layer in (visual.layer1, visual.layer2, visual.layer3, visual.layer4):
        for block in layer:
            for index in ("1", "2", "3"):
                _fold_pair(block, f"conv{index}", f"bn{index}")
            if block.downsample is not None:  # Sequential(avgpool "-1", conv "0", bn "1")
                _fold_pair(block.downsample, "0", "1")
