"""`Named`: the base of the plain objects a loss's config names (distances, miners, reducers).

Each kind keeps a name -> class table (`DISTANCES`, `MINERS`, `REDUCERS`) that a subclass joins by
setting `name`, so a loss's config can hold its parts as names or {"name", "config"} dicts and a
user's subclass is found like a built-in one. `get_named` turns either back into an object and
refuses an unknown name with the list of the known ones. No TensorFlow import.
"""

from __future__ import annotations

from typing import Any, ClassVar, TypeVar

from pddm_tf.registry import check_registered

N = TypeVar("N", bound="Named")


class Named:
    """Base of one kind of named object, declared as `class Distance(Named, table=DISTANCES,
    kind="distance")`.

    A subclass that sets `name` itself joins the kind's table (one that inherits its parent's name
    does not take it over); another class under a taken name is refused. `get_config` returns the
    constructor arguments, which make `from_config`, equality, hashing and `repr`.
    """

    name: ClassVar[str] = ""
    _table: ClassVar[dict[str, type[Any]]]
    _kind: ClassVar[str]

    def __init_subclass__(cls, table: dict[str, type[Any]] | None = None, kind: str = "", **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if table is not None:  # the base class of a kind
            cls._table, cls._kind = table, kind
        elif "name" in cls.__dict__ and cls.name:
            registered = cls._table.get(cls.name)
            if registered is not None and registered is not cls:
                raise ValueError(f"a {cls._kind} named {cls.name!r} is already registered ({registered})")
            cls._table[cls.name] = cls

    def get_config(self) -> dict[str, Any]:
        """The constructor arguments: `type(self)(**self.get_config())` is an equal object."""
        return {}

    @classmethod
    def from_config(cls: type[N], config: dict[str, Any]) -> N:
        return cls(**config)

    def __repr__(self) -> str:
        arguments = ", ".join(f"{key}={value!r}" for key, value in self.get_config().items())
        return f"{type(self).__name__}({arguments})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.get_config() == self.get_config()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self), tuple(sorted(self.get_config().items()))))


def get_named(identifier: Any, base: type[N]) -> N:
    """An object of `base`'s kind from its registered name (default arguments), a {"name", "config"}
    dict, or itself.

    Raises:
      ValueError: an unknown name, listing the known ones, or an object whose class has no name.
    """
    if isinstance(identifier, base):
        check_registered(identifier, base._table)
        return identifier
    name, config = ((identifier.get("name"), identifier.get("config", {})) if isinstance(identifier, dict)
                    else (identifier, {}))
    if not isinstance(name, str) or name not in base._table:
        raise ValueError(f"unknown {base._kind} {name!r}; expected one of {sorted(base._table)} or a "
                         f"{base.__name__}")
    return base._table[name].from_config(config)


def serialize_named(instance: N, base: type[N]) -> dict[str, Any]:
    """{"name": registered name, "config": constructor arguments}, as a loss's config holds it."""
    return {"name": get_named(instance, base).name, "config": instance.get_config()}
