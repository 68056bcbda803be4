"""Prompt templates, averaged in CLIP's embedding space."""
from __future__ import annotations

from typing import Sequence

# The bare phrase. The FPN is trained on raw referring expressions (no template) and the paper
# queries AGD20K with the bare affordance label ("cut with"), so wrapping the phrase in a
# template shifts it away from what the FPN learned. Templates remain available for the
# training-free head, where ensembles such as ("{}", "an object to {}") can help.
DEFAULT_TEMPLATES: tuple[str, ...] = ("{}",)


def validate_templates(templates: Sequence[str]) -> tuple[str, ...]:
    """Each template must contain exactly one ``{}``; returns them as a tuple."""
    templates = tuple(templates)
    if not templates:
        raise ValueError("prompt_templates must hold at least one template such as '{}'")
    for template in templates:
        if template.count("{}") != 1:
            raise ValueError(f"prompt template '{template}' must contain exactly one '{{}}' for the phrase")
    return templates


def expand(prompt: str, templates: Sequence[str]) -> list[str]:
    """All template instances of one prompt."""
    return [template.replace("{}", prompt) for template in templates]
