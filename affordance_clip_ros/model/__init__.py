"""Pure torch model code (no ROS): frozen CLIP, FPN, training-free head, grounder, checkpoints."""
from .checkpoint import CheckpointError, load_fpn, read_metadata, save_fpn
from .clip_backbone import FrozenCLIP, ImageFeatures
from .fpn import AffordanceFPN, FPNConfig, count_trainable_parameters, paired_pixel_text_logits, pixel_text_logits
from .grounder import AffordanceGrounder, AffordancePrediction, DeviceResult, GrounderConfig
from .peaks import Peak, find_peaks
from .weights import WeightsLoadError, WeightsNotFoundError

__all__ = [
    "AffordanceFPN", "AffordanceGrounder", "AffordancePrediction", "CheckpointError", "DeviceResult", "FPNConfig",
    "FrozenCLIP",
    "GrounderConfig", "ImageFeatures", "Peak", "WeightsLoadError", "WeightsNotFoundError", "count_trainable_parameters",
    "find_peaks",
    "load_fpn", "paired_pixel_text_logits", "pixel_text_logits", "read_metadata", "save_fpn",
]
