"""Training the FPN (no ROS): RefCOCO-family and JSONL data, the pixel-text loss, the train loop."""
from .config import TrainConfig
from .data import ReferringDataset, ResumableSampler, build_dataset
from .jsonl import load_jsonl
from .loss import iou_counts, pixel_text_loss
from .refcoco import load_refer
from .synthetic import write_synthetic_refcoco
from .train import resume_config, train, validate

__all__ = ["ReferringDataset", "ResumableSampler", "TrainConfig", "build_dataset", "iou_counts", "load_jsonl",
           "load_refer", "pixel_text_loss", "resume_config", "train", "validate", "write_synthetic_refcoco"]
