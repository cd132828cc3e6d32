"""`Registry`: a name -> object table that things add themselves to, with errors that list the names.

The library's named parts are found through registries, so a new one is added where it is written
and nowhere else: datasets (`pddm_tf.data.DATASETS`), search backends
(`pddm_tf.evaluation.SEARCH_BACKENDS`), training methods (`pddm_tf.methods.METHODS`). Distances,
miners and reducers register their classes by a `name` attribute (`pddm_tf.distances.DISTANCES`,
`pddm_tf.miners.MINERS`, `pddm_tf.reducers.REDUCERS`, through `pddm_tf._named.Named`), Keras classes
with `keras.saving.register_keras_serializable`.

    >>> shapes = Registry("shape")
    >>> @shapes.register("square")
    ... def square(side):
    ...     return side * side
    >>> shapes.get("square")(3)
    9
    >>> shapes.get("circle")
    Traceback (most recent call last):
    ...
    ValueError: unknown shape 'circle'; known shapes: 'square'
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar, overload

T = TypeVar("T")


def check_registered(instance: object, table: Mapping[str, type]) -> None:
    """Raises ValueError unless `instance`'s class is the one `table` holds under `instance.name`: the
    check of the class registries (`DISTANCES`, `MINERS`, `REDUCERS`) that a loss's config names its parts by."""
    if table.get(getattr(instance, "name", "")) is not type(instance):
        raise ValueError(f"{instance!r} has no registered name: set the class attribute `name` so that a "
                         "loss's config can refer to it")


class Registry(Mapping[str, T], Generic[T]):
    """Names -> objects of one kind (e.g. "dataset"); read like a dict, added to with `register`."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    @overload
    def register(self, name: str) -> Callable[[T], T]: ...

    @overload
    def register(self, name: str, entry: T) -> T: ...

    def register(self, name: str, entry: T | None = None) -> Callable[[T], T] | T:
        """Adds `entry` under `name` and returns it; without `entry`, a decorator that does.

        Raises:
          ValueError: `name` is already taken by another entry (registering the same one again is allowed).
        """
        if entry is None:
            return lambda decorated: self._add(name, decorated)
        return self._add(name, entry)

    def _add(self, name: str, entry: T) -> T:
        if not name or not isinstance(name, str):
            raise ValueError(f"a {self.kind} needs a non-empty name, got {name!r}")
        if name in self._entries and self._entries[name] is not entry:
            raise ValueError(f"a {self.kind} named {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> T:
        """Removes `name` and returns its entry (KeyError if it has none)."""
        return self._entries.pop(name)

    def get(self, name: str) -> T:  # type: ignore[override]
        """The entry of `name`; ValueError naming the known ones when there is none."""
        if name not in self._entries:
            known = ", ".join(repr(known) for known in self._entries)
            raise ValueError(f"unknown {self.kind} {name!r}; known {self.kind}s: {known}")
        return self._entries[name]

    def __getitem__(self, name: str) -> T:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._entries)})"
