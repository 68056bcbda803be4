"""The paper's Feature Pyramid Network (Sec. 3.2) and the pixel-text head (Sec. 3.3)."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .clip_backbone import ImageFeatures

DEFAULT_WIDTH = 72  # C'. The paper gives no value; 72 reproduces its 2.71 M parameters for RN101.
MAX_LEVELS = 3


@dataclass(frozen=True)
class FPNConfig:
    """Architecture of :class:`AffordanceFPN`: data, saved in every checkpoint."""

    in_channels: tuple[int, int, int]  # channels of (F1, F2, F3) = CLIP layer2, layer3, layer4
    embed_dim: int  # C: CLIP's joint embedding size (F_S in, F^O out)
    width: int = DEFAULT_WIDTH  # C'
    levels: int = MAX_LEVELS  # feature maps fused: 1 = F3, 2 = F3+F2, 3 = F3+F2+F1 (paper Table 3)

    def __post_init__(self):
        if not 1 <= self.levels <= MAX_LEVELS:
            raise ValueError(f"levels must be 1, 2 or 3, got {self.levels}")
        if self.width < 1:
            raise ValueError(f"width must be positive, got {self.width}")
        object.__setattr__(self, "in_channels", tuple(int(c) for c in self.in_channels))

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def output_stride(self) -> int:
        """Stride of the output map w.r.t. the input: 32, 16 or 8."""
        return 32 // 2 ** (self.levels - 1)


class ConvBNReLU(nn.Sequential):
    """Conv (no bias) + BatchNorm + ReLU, 'same' padding."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class AffordanceFPN(nn.Module):
    """Top-down fusion of CLIP's global embedding with its layer maps into text-aligned pixels.

    F'_S = P(F_S); F^O_1 = P_3(F3) + Up(F'_S); F^O_i = P_(4-i)(F_(4-i)) + Up(F^O_(i-1)); F^O = Conv1x1(last).
    Every P is Conv3x3+BN+ReLU to C'; Up is bilinear resizing to the lateral's exact size, so odd
    sizes work. Output: (B, C, H/s, W/s) with s = ``config.output_stride`` (8 for three levels).

    Example::

        fpn = AffordanceFPN(FPNConfig(in_channels=(512, 1024, 2048), embed_dim=512))
        sum(p.numel() for p in fpn.parameters())  # 2.69 M
    """

    def __init__(self, config: FPNConfig):
        super().__init__()
        self.config = config
        self.global_proj = ConvBNReLU(config.embed_dim, config.width, 3)
        coarse_to_fine = tuple(reversed(config.in_channels))[: config.levels]
        self.laterals = nn.ModuleList(ConvBNReLU(c, config.width, 3) for c in coarse_to_fine)
        self.out_proj = ConvBNReLU(config.width, config.embed_dim, 1)

    def forward(self, features: ImageFeatures) -> torch.Tensor:
        maps = (features.f3, features.f2, features.f1)[: self.config.levels]
        fused = self.global_proj(features.global_embedding[:, :, None, None])
        for lateral, feature_map in zip(self.laterals, maps):
            projected = lateral(feature_map)
            fused = projected + F.interpolate(fused, size=projected.shape[-2:], mode="bilinear", align_corners=False)
        return self.out_proj(fused)


def pixel_text_logits(pixel_embeddings: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
    """Y = F_Q . F^O per pixel (paper Eq. 6) for N texts shared by the batch.

    pixel_embeddings (B, C, h, w), text_embeddings (N, C) -> logits (B, N, h, w).
    """
    return torch.einsum("bchw,nc->bnhw", pixel_embeddings, text_embeddings.to(pixel_embeddings.dtype))


def paired_pixel_text_logits(pixel_embeddings: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
    """Eq. 6 with one text per image: (B, C, h, w) and (B, C) -> logits (B, h, w)."""
    return torch.einsum("bchw,bc->bhw", pixel_embeddings, text_embeddings.to(pixel_embeddings.dtype))


def count_trainable_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
