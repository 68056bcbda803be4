"""The training configuration: one flat block of defaults (the paper's recipe, Sec. 4.3).

Every field is also a ``affordance-clip train --field-name`` option. The whole configuration is
saved in every checkpoint (``trainer_state.pt`` and the FPN's safetensors metadata) and
``--resume`` rebuilds the run from it; only :data:`RESUME_OVERRIDABLE` fields may change then.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


def _f(default: Any, help: str):  # the argparse word
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class TrainConfig:
    # ---- model: frozen CLIP + the trained FPN (paper Sec. 3.2)
    clip_model: str = _f("RN101", "open_clip ResNet CLIP (paper: RN101)")
    clip_pretrained: str = _f("openai", "CLIP weights: open_clip tag, local file, or 'none' (random: tests only)")
    width: int = _f(72, "FPN width C' (72 gives the paper's 2.71 M parameters on RN101)")
    levels: int = _f(3, "CLIP feature maps fused by the FPN: 1, 2 or 3 (paper Table 3)")
    input_size: int = _f(416, "square letterboxed input in pixels, a multiple of 32 (paper: 416)")
    # ---- data (paper Sec. 4.1: RefCOCO + RefCOCO+ + RefCOCOg train splits)
    data_root: str = _f("data/refer", "refer-toolkit data folder holding refcoco/, refcoco+/, refcocog/")
    coco_images: str = _f("", "folder of COCO_train2014_*.jpg; empty = <data_root>/images/mscoco/images/train2014")
    train_data: str = _f("refcoco:unc,refcoco+:unc,refcocog:umd",
                         "comma-separated sources: dataset:splitBy under data_root, or a .jsonl file")
    train_split: str = _f("train", "split of the refer sources used for training")
    val_data: str = _f("refcoco:unc", "validation sources (same syntax as train_data); empty = no validation")
    val_split: str = _f("val", "split of the refer sources used for validation")
    val_samples: int = _f(0, "validate on this many evenly spaced samples; 0 = the whole split")
    sample_unit: str = _f("object", "what one epoch passes over: object = each referred object once, with one of "
                                    "its sentences drawn at random each epoch (CRIS, whose recipe the paper "
                                    "follows); sentence = every sentence once. Validation scores every sentence")
    # ---- optimisation (paper Sec. 4.3: 1 epoch, batch 32, Adam, lr 1e-4)
    epochs: int = _f(1, "passes over the training set")
    max_steps: int = _f(0, "optimizer steps to run; 0 = epochs x steps per epoch")
    batch_size: int = _f(32, "images per optimizer step over all processes (the effective batch)")
    micro_batch_size: int = _f(0, "images per forward pass per process; 0 = batch_size / processes. "
                                  "Smaller values use gradient accumulation. Must be >= 2 (BatchNorm)")
    lr: float = _f(1e-4, "Adam learning rate")
    beta1: float = _f(0.9, "Adam beta1")
    beta2: float = _f(0.999, "Adam beta2")
    weight_decay: float = _f(0.0, "Adam L2 weight decay")
    lr_schedule: str = _f("constant", "constant (paper) or cosine")
    warmup_steps: int = _f(0, "linear warm-up steps before the schedule")
    min_lr: float = _f(0.0, "final learning rate of the cosine schedule")
    grad_clip: float = _f(0.0, "clip the gradient norm to this value; 0 = off")
    # ---- system
    device: str = _f("auto", "auto (CUDA when present), cpu, cuda or cuda:N; torchrun picks cuda:LOCAL_RANK")
    precision: str = _f("auto", "autocast: auto (bf16 on CUDA when supported, else fp16; fp32 on CPU), "
                                "fp32, bf16 or fp16 (with gradient scaling)")
    num_workers: int = _f(4, "DataLoader worker processes per training process (decoding and letterboxing)")
    seed: int = _f(0, "seed of the data order and initialisation; process r adds r to it")
    deterministic: bool = _f(False, "deterministic kernels where torch has them (slower); resume is exact "
                                        "without it on CPU; on CUDA the FPN's bilinear upsampling has no "
                                        "deterministic backward, so a resumed run matches to float tolerance")
    channels_last: bool = _f(True, "channels-last memory format (faster convolutions)")
    # ---- outputs
    out_dir: str = _f("runs/affordance_fpn", "run folder: fpn.safetensors, trainer_state.pt, CSV logs, PNG grids")
    log_every: int = _f(10, "optimizer steps between CSV log rows")
    save_every: int = _f(1000, "optimizer steps between checkpoints (one is always written at the end)")
    val_every: int = _f(0, "optimizer steps between validations, plus one before training (the untrained "
                           "baseline); 0 = only at the end")
    iou_threshold: float = _f(0.5, "a pixel is predicted when sigmoid(logit) > this (0.5: logit > 0)")
    grid_samples: int = _f(8, "validation samples drawn in the prediction grid PNG")

    def __post_init__(self):
        problems = []
        if not 1 <= self.levels <= 3:
            problems.append(f"levels must be 1, 2 or 3, got {self.levels}")
        if self.input_size <= 0 or self.input_size % 32:
            problems.append(f"input_size must be a positive multiple of 32, got {self.input_size}")
        for name in ("width", "batch_size", "epochs", "log_every", "save_every"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_steps", "micro_batch_size", "num_workers", "val_samples", "warmup_steps", "val_every",
                     "grid_samples"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.seed < 0:
            problems.append(f"seed must be >= 0, got {self.seed}")
        if self.micro_batch_size == 1:
            problems.append("micro_batch_size must be >= 2: the FPN's BatchNorm on the 1x1 global map cannot "
                            "train on one image per forward pass")
        if self.lr <= 0 or self.min_lr < 0 or self.grad_clip < 0 or self.weight_decay < 0:
            problems.append("lr must be > 0 and min_lr, grad_clip, weight_decay >= 0")
        if self.lr_schedule not in ("constant", "cosine"):
            problems.append(f"lr_schedule must be 'constant' or 'cosine', got '{self.lr_schedule}'")
        if self.sample_unit not in ("object", "sentence"):
            problems.append(f"sample_unit must be 'object' or 'sentence', got '{self.sample_unit}'")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            problems.append(f"precision must be auto, fp32, bf16 or fp16, got '{self.precision}'")
        if not 0.0 < self.iou_threshold < 1.0:
            problems.append(f"iou_threshold must be in (0, 1), got {self.iou_threshold}")
        if not self.train_data.strip():
            problems.append("train_data must name at least one source")
        if problems:
            raise ValueError("invalid training configuration: " + "; ".join(problems))

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        """Build from a dict (e.g. a checkpoint's); unknown keys and wrong types are errors."""
        return cls().replace(**values)

    def replace(self, **overrides) -> "TrainConfig":
        """A copy with type-checked overrides; unknown keys raise ValueError naming the valid ones."""
        fields = {f.name: f for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - set(fields))
        if unknown:
            raise ValueError(f"unknown training option(s) {unknown}; valid options: {sorted(fields)}")
        checked = {name: _check_type(name, value, type(getattr(self, name))) for name, value in overrides.items()}
        return dataclasses.replace(self, **checked)


# Fields that may differ when resuming; everything else must match the checkpoint's config,
# because it would change the model, the data order or the optimisation.
RESUME_OVERRIDABLE = frozenset({"device", "num_workers", "log_every", "save_every", "val_every", "val_samples",
                                "grid_samples", "max_steps", "epochs", "out_dir", "data_root", "coco_images"})


def _check_type(name: str, value: Any, expected: type) -> Any:
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if (expected is int and isinstance(value, bool)) or not isinstance(value, expected):
        raise ValueError(f"training option '{name}' must be {expected.__name__}, got {value!r}")
    return value


def field_help() -> dict[str, tuple[type, Any, str]]:
    """name -> (type, default, help) for every option, in declaration order (for the CLI)."""
    return {f.name: (type(f.default), f.default, f.metadata["help"]) for f in dataclasses.fields(TrainConfig)}
