"""The model's options that other layers name without loading torch: the parameter table, and
through it the launch file, read them (``ros2 launch`` stays free of torch)."""
from __future__ import annotations

PRECISIONS = ("auto", "fp32", "fp16", "bf16", "int8")
BACKENDS = ("auto", "torch", "onnxruntime")
# How the torch image path runs: "auto" = "cuda-graphs" on CUDA (recorded once, replayed; no compiler),
# else "off" (eager); the rest are torch.compile modes ("reduce-overhead", "max-autotune": CUDA graphs on CUDA).
COMPILE_MODES = ("auto", "off", "cuda-graphs", "default", "reduce-overhead", "max-autotune")
# The training-free head's background: what is usually in view but affords no action a robot is asked for.
DEFAULT_BACKGROUND_PROMPTS: tuple[str, ...] = ("background", "wall", "floor", "ceiling", "sky", "ground")


def validate_background_prompts(prompts) -> tuple[str, ...]:
    """At least one non-empty phrase; returns them stripped, as a tuple."""
    phrases = tuple(str(p).strip() for p in prompts)
    if not phrases or not all(phrases):
        raise ValueError("background_prompts must hold at least one non-empty phrase such as 'wall'")
    return phrases
