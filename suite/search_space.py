"""The hyper-parameter search space of ``suite tune``, declared in one place.

Each searchable setting is a ``RunConfig`` field; :data:`DEFAULT_SPACE` declares its range
or choices once. A TOML file overrides any of them, one table per setting::

    [learning_rate]
    min = 1e-4
    max = 1e-2
    sampling = "log"

    [finetune]
    values = ["head", "top:20"]

    [batch_size]
    value = 16          # fixed: every trial uses it

Values are checked for their type here and for their meaning by ``RunConfig`` when a trial
is built, so a value ``RunConfig`` rejects (a dropout of 1.5) fails that trial, recorded,
rather than the whole search.

Nothing here imports Keras; :meth:`SearchSpace.to_hyperparameters` imports Keras Tuner late.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

RANGE_KEYS = frozenset({"min", "max", "sampling", "step"})
SAMPLINGS = ("linear", "log", "reverse_log")


@dataclasses.dataclass(frozen=True)
class Param:
    """One searchable setting.

    Args:
        name: the ``RunConfig`` field it sets.
        type: ``float``, ``int`` or ``str``; every value is of this type.
        values: the choices (a choice or, with one value, a fixed setting).
        min: lower bound of a range (``values`` is then empty).
        max: upper bound of a range.
        sampling: ``linear``, ``log`` or ``reverse_log``, for a range.
        step: spacing of a range's values, or ``None`` for a continuous one.
    """

    name: str
    type: type
    values: tuple = ()
    min: float | int | None = None
    max: float | int | None = None
    sampling: str = "linear"
    step: float | int | None = None

    def __post_init__(self):
        if self.values:
            if self.min is not None or self.max is not None:
                raise ValueError(f"[{self.name}]: give either values/value or min/max, not both")
            return
        if self.type is str:
            raise ValueError(f"[{self.name}]: a text setting needs values = [...] or value = ..., not a range")
        if self.min is None or self.max is None:
            raise ValueError(f"[{self.name}]: a range needs both min and max")
        if not self.min < self.max:
            raise ValueError(f"[{self.name}]: min must be below max, got min={self.min}, max={self.max}")
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"[{self.name}]: sampling must be one of {SAMPLINGS}, got {self.sampling!r}")
        if self.sampling != "linear" and self.min <= 0:
            raise ValueError(f"[{self.name}]: {self.sampling} sampling needs min > 0, got {self.min}")

    @property
    def fixed(self) -> Any | None:
        """The value every trial uses, or ``None`` when this setting is searched."""
        return self.values[0] if len(self.values) == 1 else None

    def describe(self) -> dict:
        """A JSON-ready declaration, as a TOML table would write it."""
        if self.values:
            return {"value": self.values[0]} if len(self.values) == 1 else {"values": list(self.values)}
        out = {"min": self.min, "max": self.max, "sampling": self.sampling}
        if self.step is not None:
            out["step"] = self.step
        return out


DEFAULT_SPACE_PARAMS = (
    Param("learning_rate", float, min=1e-4, max=1e-2, sampling="log"),
    Param("dropout", float, min=0.0, max=0.6, step=0.1),
    Param("finetune", str, values=("head", "top:20", "top:50", "all")),
    Param("augment", str, values=("none", "light")),
    Param("batch_size", int, values=(16, 32, 64)),
)


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """An ordered, immutable set of :class:`Param`, one per setting."""

    params: tuple[Param, ...] = DEFAULT_SPACE_PARAMS

    def __post_init__(self):
        names = [p.name for p in self.params]
        if len(set(names)) != len(names):
            raise ValueError(f"a setting is declared twice: {names}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    def __getitem__(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(f"{name!r} is not searchable; searchable settings: {', '.join(self.names)}")

    def fixed(self, name: str) -> Any | None:
        """The value ``name`` is fixed to, or ``None`` when it is searched."""
        return self[name].fixed

    def replace(self, param: Param) -> SearchSpace:
        return SearchSpace(tuple(param if p.name == param.name else p for p in self.params))

    def fix(self, name: str, value: Any) -> SearchSpace:
        """This space with ``name`` fixed to ``value``."""
        p = self[name]
        return self.replace(Param(name, p.type, values=(_coerce(p.type, value, name),)))

    def fix_given(self, flags: Mapping[str, Any]) -> SearchSpace:
        """Fix every setting a flag gives (not ``None``): a flag wins over the space."""
        space = self
        for name in self.names:
            if flags.get(name) is not None:
                space = space.fix(name, flags[name])
        return space

    def override(self, tables: Mapping[str, Any]) -> SearchSpace:
        """This space with the TOML tables ``tables`` (``{name: {key: value}}``) applied.

        Raises:
            ValueError: an unknown setting or key, or a value of the wrong type; the
                message names the table and what it accepts.
        """
        space = self
        for name, table in tables.items():
            if name not in self.names:
                raise ValueError(f"[{name}] is not searchable; searchable settings: {', '.join(self.names)}")
            if not isinstance(table, Mapping):
                raise ValueError(f"{name} must be a table such as [{name}] values = [...]")
            space = space.replace(_param_from_table(self[name], table))
        return space

    def describe(self) -> dict:
        return {p.name: p.describe() for p in self.params}

    def to_hyperparameters(self):
        """The same space as ``keras_tuner.HyperParameters`` (imports Keras Tuner)."""
        import keras_tuner

        hp = keras_tuner.HyperParameters()
        for p in self.params:
            if p.fixed is not None:
                hp.Fixed(p.name, p.fixed)
            elif p.values:
                hp.Choice(p.name, list(p.values))
            elif p.type is int:
                hp.Int(p.name, int(p.min), int(p.max), step=p.step, sampling=p.sampling)
            else:
                hp.Float(p.name, float(p.min), float(p.max), step=p.step, sampling=p.sampling)
        return hp


DEFAULT_SPACE = SearchSpace()


def load_space(path: str | Path, base: SearchSpace = DEFAULT_SPACE) -> SearchSpace:
    """``base`` overridden by the TOML file at ``path``.

    Raises:
        ValueError: unreadable TOML or a bad table (the message says which).
    """
    path = Path(path)
    try:
        tables = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"cannot read the search space {path}: {exc}") from None
    return base.override(tables)


def _param_from_table(param: Param, table: Mapping[str, Any]) -> Param:
    keys = set(table)
    allowed = ("value", "values", *sorted(RANGE_KEYS)) if param.type is not str else ("value", "values")
    unknown = keys - set(allowed)
    if unknown:
        raise ValueError(f"[{param.name}]: unknown key(s) {sorted(unknown)}; expected one of {', '.join(allowed)}")
    if "value" in keys:
        if len(keys) > 1:
            raise ValueError(f"[{param.name}]: value fixes the setting; give it alone")
        return Param(param.name, param.type, values=(_coerce(param.type, table["value"], param.name),))
    if "values" in keys:
        values = table["values"]
        if len(keys) > 1 or not isinstance(values, list) or not values:
            raise ValueError(f"[{param.name}]: values must be a non-empty list, given alone")
        coerced = tuple(dict.fromkeys(_coerce(param.type, v, param.name) for v in values))
        return Param(param.name, param.type, values=coerced)
    if param.type is str:
        raise ValueError(f"[{param.name}]: expected value = ... or values = [...]")
    numbers = {k: _coerce(param.type, table[k], param.name) for k in ("min", "max", "step") if k in table}
    return Param(param.name, param.type, sampling=str(table.get("sampling", "linear")), **numbers)


def _coerce(kind: type, value: Any, name: str):
    """``value`` as ``kind`` (an integer is a valid float); anything else is an error."""
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is str and isinstance(value, str):
        return value
    raise ValueError(f"[{name}]: expected {kind.__name__} values, got {value!r}")
