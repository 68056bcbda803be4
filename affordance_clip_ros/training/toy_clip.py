"""Contrastive pre-training of a small open_clip ResNet CLIP on the toy world's image-caption pairs.

open_clip's own model classes (``CLIP`` with a ``ModifiedResNet`` image tower, built from the
``RN-toy`` config in ``model/configs/``) and its ``ClipLoss``; images and captions are drawn
afresh for every step, so the model never sees the same pair twice. The result is saved as an
open_clip state dict in safetensors, which ``--clip-pretrained PATH`` loads.

Example::

    model, log = pretrain_toy_clip(ToyClipConfig(steps=300), seed=0)
    save_clip(model, "toy_clip.safetensors")
    zero_shot_accuracy(model, "RN-toy", seed=1)  # {"verb": ..., "kind": ...}
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import open_clip
import torch
from safetensors.torch import save_file
from tqdm import tqdm

from ..io import written_atomically
from ..model.clip_backbone import CLIP_MEAN, CLIP_STD  # also registers the configs in model/configs/
from .toy_world import KINDS, VERBS, caption_batch, draw_scene

log = logging.getLogger(__name__)
TOY_CLIP_MODEL = "RN-toy"


@dataclass(frozen=True)
class ToyClipConfig:
    model: str = TOY_CLIP_MODEL
    steps: int = 600
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup_steps: int = 20
    max_objects: int = 2  # objects per pre-training image (1..max_objects)


def create_clip(model_name: str = TOY_CLIP_MODEL, seed: int = 0) -> open_clip.CLIP:
    """A randomly initialised open_clip CLIP (the same seed gives the same weights), as FrozenCLIP builds it."""
    torch.manual_seed(seed)
    return open_clip.create_model(model_name, pretrained=None, force_quick_gelu=True, output_dict=True)


def image_side(model: open_clip.CLIP) -> int:
    return int(model.visual.image_size)


def to_pixels(images: np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> CLIP-normalised float (B, 3, H, W)."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255)
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def _lr(step: int, config: ToyClipConfig) -> float:
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return 0.5 * config.lr * (1 + math.cos(math.pi * progress))


def pretrain_toy_clip(config: ToyClipConfig, seed: int = 0, progress: bool = True
                      ) -> tuple[open_clip.CLIP, list[float]]:
    """Train a CLIP from scratch on fresh toy image-caption batches; returns it (eval mode) and the loss per step."""
    model = create_clip(config.model, seed)
    tokenizer = open_clip.get_tokenizer(config.model)
    rng = np.random.default_rng(seed)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "logit_scale" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "logit_scale" in n]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=config.lr)
    loss_fn = open_clip.ClipLoss()
    side = image_side(model)
    losses = []
    model.train().to(memory_format=torch.channels_last)  # about 1.4x faster convolutions on CPU
    with tqdm(range(config.steps), desc="toy CLIP pre-training", unit="step", disable=not progress) as bar:
        for step in bar:
            for group in optimizer.param_groups:
                group["lr"] = _lr(step, config)
            images, texts = caption_batch(rng, config.batch_size, side, config.max_objects)
            pixels = to_pixels(images).contiguous(memory_format=torch.channels_last)
            out = model(pixels, tokenizer(texts))
            loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():  # as open_clip's training does: the temperature stays within 100
                model.logit_scale.clamp_(0, math.log(100))
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    return model.eval().to(memory_format=torch.contiguous_format), losses


def save_clip(model: open_clip.CLIP, path: str | os.PathLike) -> Path:
    """The model's open_clip state dict as safetensors, written atomically."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with written_atomically(path) as tmp:
        save_file(tensors, tmp)
    return Path(path)


@torch.no_grad()
def zero_shot_accuracy(model: open_clip.CLIP, model_name: str = TOY_CLIP_MODEL, images: int = 300, seed: int = 1
                       ) -> dict[str, float]:
    """Image-level zero-shot accuracy on single-object images: the bare verb ("roll") among all verbs,
    and "a <kind>" among all kinds. Chance is 1/6 for both."""
    rng = np.random.default_rng(seed)
    scenes = [draw_scene(rng, image_side(model), 1) for _ in range(images)]
    tokenizer = open_clip.get_tokenizer(model_name)
    image_features = torch.nn.functional.normalize(
        model.encode_image(to_pixels(np.stack([s.image for s in scenes]))), dim=-1)
    kinds = [s.objects[0].kind for s in scenes]
    verbs, kind_names = list(VERBS), list(KINDS)
    result = {}
    for name, prompts, truth in (("verb", verbs, [verbs.index(s.objects[0].verbs[0]) for s in scenes]),
                                 ("kind", [f"a {k}" for k in kind_names], [kind_names.index(k) for k in kinds])):
        text = torch.nn.functional.normalize(model.encode_text(tokenizer(prompts)), dim=-1)
        predicted = (image_features @ text.T).argmax(dim=1)
        result[name] = float((predicted == torch.tensor(truth)).float().mean())
    return result
