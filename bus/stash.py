"""A typed stash for a plugin's per-hub objects (pytest's `config.stash`).

A plugin keeps what belongs to one hub in `hub.stash` under a module-level key, never in a
module global keyed by the hub::

    RUNNER = StashKey[Runner]()

    runner = hub.stash.get(RUNNER, None)
    if runner is None:
        runner = hub.stash[RUNNER] = Runner(hub)

The key's type parameter types the value, so no casts are needed.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

T = TypeVar("T")
D = TypeVar("D")


class StashKey(Generic[T]):
    """A key into a `Stash`; make one per kind of value, at module level."""

    __slots__ = ()


class Stash:
    """Objects stored by `StashKey`, each typed by its key; it lives as long as its hub."""

    __slots__ = ("_data",)

    def __init__(self) -> None:
        self._data: dict[StashKey[Any], object] = {}

    def __setitem__(self, key: StashKey[T], value: T) -> None:
        self._data[key] = value

    def __getitem__(self, key: StashKey[T]) -> T:
        """The value under `key`; KeyError if none was stored."""
        return self._data[key]  # type: ignore[return-value]

    def get(self, key: StashKey[T], default: D) -> T | D:
        """The value under `key`, else `default`."""
        try:
            return self[key]
        except KeyError:
            return default

    def setdefault(self, key: StashKey[T], default: T) -> T:
        """The value under `key`; store and return `default` when there is none."""
        try:
            return self[key]
        except KeyError:
            self[key] = default
            return default

    def pop(self, key: StashKey[T], default: D) -> T | D:
        """Remove the value under `key` and return it, else return `default`."""
        return self._data.pop(key, default)  # type: ignore[return-value]

    def __delitem__(self, key: StashKey[T]) -> None:
        del self._data[key]

    def __contains__(self, key: StashKey[T]) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)
