"""Prompt strings from /affordance/query and the ``prompts`` parameter: ``"cut with; pour"``.

Parsing is forgiving but bounded: prompts are split on ``;``, whitespace is collapsed, empty
pieces and repeats are dropped, each prompt is cut to :data:`MAX_PROMPT_CHARS` characters (CLIP
reads at most 75 tokens anyway; the model warns when it truncates further) and at most
:data:`MAX_PROMPTS` prompts are kept. Any Unicode text is allowed (CLIP's tokenizer handles it).
"""
from __future__ import annotations

from typing import NamedTuple

SEPARATOR = ";"
MAX_PROMPTS = 16
MAX_PROMPT_CHARS = 300  # well above CLIP's 75-token context for ordinary text


class ParsedPrompts(NamedTuple):
    prompts: tuple[str, ...]
    notes: tuple[str, ...]  # what was changed, for a warning; empty when the text was clean


def parse_prompts(text: str) -> ParsedPrompts:
    """``"cut with ; pour;;"`` -> (("cut with", "pour"), ()). Never raises."""
    notes: list[str] = []
    prompts: list[str] = []
    for piece in str(text).split(SEPARATOR):
        prompt = " ".join(piece.split())
        if not prompt:
            continue
        if len(prompt) > MAX_PROMPT_CHARS:
            notes.append(f"a prompt of {len(prompt)} characters was cut to {MAX_PROMPT_CHARS}")
            prompt = prompt[:MAX_PROMPT_CHARS].rstrip()
        if prompt not in prompts:
            prompts.append(prompt)
    if len(prompts) > MAX_PROMPTS:
        notes.append(f"{len(prompts)} prompts given, only the first {MAX_PROMPTS} are used")
        prompts = prompts[:MAX_PROMPTS]
    return ParsedPrompts(tuple(prompts), tuple(notes))


def join_prompts(prompts: tuple[str, ...] | list[str]) -> str:
    """The canonical text of a prompt list (what the ``prompts`` parameter holds)."""
    return f"{SEPARATOR} ".join(prompts)


class NewestQueries:
    """Which query messages to take when each may arrive through two subscriptions (latched and
    live), in any interleaving: only one newer than the last taken from its publisher, so a
    message counts once and the newest prompt wins. ``info`` is rclpy's MessageInfo. Without
    publisher ids (rclpy before 2025) all publishers count as one, ordered by the time they sent."""

    def __init__(self):
        self._newest: dict[str, tuple[int, int]] = {}  # publisher -> (sequence, source stamp) taken last

    def take(self, info: dict) -> bool:
        gid = info.get("publisher_gid")
        publisher = str(gid["data"] if isinstance(gid, dict) and "data" in gid else gid)
        order = ((info.get("publication_sequence_number") or 0) if gid else 0, info["source_timestamp"])
        if order <= self._newest.get(publisher, (-1, -1)):
            return False
        self._newest[publisher] = order
        return True
