"""The tool registry: look tools up by name and by route scope."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tools.ap import AP_TOOLS
from tools.contract import ToolSpec


class ToolRegistry:
    """An immutable name -> contract map."""

    def __init__(self, tools: Iterable[ToolSpec[Any, Any]]) -> None:
        """Index ``tools`` by name, refusing duplicate names."""
        self._tools: dict[str, ToolSpec[Any, Any]] = {}
        for tool in tools:
            if tool.name in self._tools:
                raise ValueError(f"duplicate tool name {tool.name!r}")
            self._tools[tool.name] = tool

    def get(self, name: str) -> ToolSpec[Any, Any] | None:
        """The contract named ``name``, or None."""
        return self._tools.get(name)

    def names(self) -> list[str]:
        """Every tool name, in declaration order."""
        return list(self._tools)

    def for_route(self, route: str) -> list[ToolSpec[Any, Any]]:
        """The tools a run on ``route`` may call."""
        return [t for t in self._tools.values() if route in t.scopes]

    def __iter__(self) -> Any:
        """Iterate over contracts."""
        return iter(self._tools.values())


DEFAULT_REGISTRY = ToolRegistry(AP_TOOLS)
