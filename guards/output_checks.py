"""Checks on what the agent says before anyone reads it."""

from __future__ import annotations

import re

from runtime.prompts import PLANNER_REPAIR, PLANNER_SYSTEM, RESPOND_SYSTEM, ROUTER_SYSTEM

_WINDOW = 40


def _normalize(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def _fragments(prompt: str) -> set[str]:
    """Every run of `_WINDOW` characters of a prompt's fixed text (placeholders excluded)."""
    fragments: set[str] = set()
    for part in re.split(r"\{[a-z_]+\}", prompt):
        text = _normalize(part)
        fragments.update(text[i : i + _WINDOW] for i in range(0, max(len(text) - _WINDOW, 0) + 1))
    return {f for f in fragments if len(f) == _WINDOW}


_PROMPT_FRAGMENTS = frozenset().union(
    *(_fragments(p) for p in (ROUTER_SYSTEM, PLANNER_SYSTEM, PLANNER_REPAIR, RESPOND_SYSTEM))
)


def echoes_system_prompt(text: str) -> bool:
    """True when ``text`` repeats any 40-character run of an internal prompt."""
    normalized = _normalize(text)
    return any(
        normalized[i : i + _WINDOW] in _PROMPT_FRAGMENTS
        for i in range(0, max(len(normalized) - _WINDOW, 0) + 1)
    )
