"""The base of the `register` objects that the `register_*` hooks receive."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .hub import Hub


class Registrar:
    """Knows the plugin it registers for, and the hub (the hook's `hub` argument)."""

    def __init__(self, plugin: str, hub: Hub | None = None) -> None:
        self.plugin = plugin
        self._hub = hub

    @property
    def hub(self) -> Hub:
        """The hub being started; the same object as the hook's `hub` argument."""
        if self._hub is None:
            raise RuntimeError(f"this registrar of plugin {self.plugin!r} belongs to no hub")
        return self._hub

    def __repr__(self) -> str:
        return f"<{type(self).__name__} of plugin {self.plugin!r}>"
