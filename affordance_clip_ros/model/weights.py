"""Where CLIP weights come from, in a fixed and documented order.

``pretrained`` may be:

1. ``"none"``: random weights. For tests and benchmarks only; a loud warning is logged.
2. A path to a local checkpoint file (``.safetensors``, ``.bin`` or ``.pt`` state dict).
3. An open_clip pretrained tag for the model (``"openai"`` for ``RN101``). The file is taken
   from the Hugging Face cache or open_clip's URL cache when it is there; otherwise it is
   downloaded, unless the machine is offline, in which case :class:`WeightsNotFoundError` is
   raised at once with instructions instead of open_clip's minute of retries.
"""
from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

import open_clip

NO_WEIGHTS = "none"
HUB_HOST = "huggingface.co"
_HF_FILENAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")

log = logging.getLogger(__name__)


class WeightsNotFoundError(FileNotFoundError):
    """CLIP weights are needed but neither on disk nor downloadable."""


class WeightsLoadError(ValueError):
    """A CLIP weights file exists but cannot be used (unsafe, damaged, or another architecture)."""


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """True when the model hub answers a TCP connection and offline mode is not set."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    try:
        with socket.create_connection((HUB_HOST, 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def cached_weights_file(model_name: str, tag: str, cache_dir: str | None = None) -> Path | None:
    """The already downloaded file of an open_clip pretrained tag, or None."""
    cfg = open_clip.get_pretrained_cfg(model_name, tag)
    hub_id = cfg.get("hf_hub", "")
    if hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo_id, filename = os.path.split(hub_id)  # "org/name/" means the default file names
        for name in ([filename] if filename else list(_HF_FILENAMES)):
            found = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir)
            if isinstance(found, str) and Path(found).is_file():
                return Path(found)
    url = cfg.get("url", "")
    if url:
        candidate = Path(cache_dir or Path.home() / ".cache" / "clip") / os.path.basename(url)
        if candidate.is_file():
            return candidate
    return None


def _missing_message(model_name: str, tag: str) -> str:
    cfg = open_clip.get_pretrained_cfg(model_name, tag)
    hub_id = cfg.get("hf_hub", "").rstrip("/")
    return (
        f"CLIP weights for model '{model_name}' (pretrained='{tag}') are not on this machine and "
        f"the model hub cannot be reached (offline or HF_HUB_OFFLINE=1).\n"
        f"Needed file: '{_HF_FILENAMES[0]}' (or '{_HF_FILENAMES[1]}') from the Hugging Face repo "
        f"'{hub_id}'.\n"
        f"Either copy it into the Hugging Face cache on a machine with internet access "
        f"(`hf download {hub_id} {_HF_FILENAMES[0]}`, then copy ~/.cache/huggingface), "
        f"or put the file anywhere and pass its path: --clip-pretrained /path/{_HF_FILENAMES[0]} "
        f"(ROS parameter clip_pretrained)."
    )


def resolve_pretrained(model_name: str, pretrained: str, cache_dir: str | None = None) -> str | None:
    """Turn a ``pretrained`` value into what ``open_clip.create_model`` should load.

    Returns None for random weights, else a local file path or an open_clip tag to download.
    Raises ValueError for an unknown tag and WeightsNotFoundError when offline without the file.
    """
    if pretrained.lower() == NO_WEIGHTS:
        log.warning(
            "CLIP '%s' is built with RANDOM weights (pretrained='none'): heatmaps are meaningless. "
            "Use this only for tests and benchmarks.", model_name)
        return None
    path = Path(pretrained).expanduser()
    if path.is_file():
        return str(path)
    tags = open_clip.list_pretrained_tags_by_model(model_name)
    if pretrained not in tags:
        looks_like_path = os.sep in pretrained or path.suffix in (".pt", ".bin", ".safetensors", ".pth")
        if looks_like_path:
            raise WeightsNotFoundError(f"CLIP weights file '{pretrained}' does not exist.")
        raise ValueError(
            f"Unknown pretrained value '{pretrained}' for CLIP model '{model_name}'. "
            f"Valid: an existing file path, 'none', or one of {tags}.")
    cached = cached_weights_file(model_name, pretrained, cache_dir)
    if cached is not None:
        return str(cached)
    if not hub_reachable():
        raise WeightsNotFoundError(_missing_message(model_name, pretrained))
    return pretrained
