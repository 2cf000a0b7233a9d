"""How a :class:`gtaseg.config.TrainConfig` field is spelled on the command line: one object per kind of option.

Each kind knows its click option (``gtaseg train``'s, built in :mod:`gtaseg.cli.train`), its argv form (the
``gtaseg train`` line a sweep prints, :func:`gtaseg.config.train_argv`) and how the value click hands back
becomes the field's value, so the two directions cannot drift apart. A field names its kind in
:func:`gtaseg.config.option`.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import MISSING, Field
from typing import Any

import click


def field_default(f: Field) -> Any:
    """A dataclass field's default (a fresh copy for mutable ones)."""
    return f.default_factory() if f.default_factory is not MISSING else f.default


def parse_blocks(value: str) -> list[int] | None:
    """'all' → None (every block); '9,10,11' or '-1' → those indices."""
    if value.strip().lower() == "all":
        return None
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{value!r}: use 'all' or comma-separated block indices like 9,10,11 or -1") from None


def parse_pairs(pairs: tuple[str, ...] | list[str]) -> dict:
    """``KEY=VALUE`` strings as a dict; values become int or float where they read as one."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"{pair!r}: expected KEY=VALUE")
        for cast in (int, float):
            try:
                value = cast(value)
                break
            except ValueError:
                continue
        out[key.strip().replace("-", "_")] = value
    return out


class OptionKind:
    """What every kind shares: the flag is the field's first listed spelling, else ``--`` + its name with dashes,
    and the click parameter is the field's name. A kind says what click is told (:meth:`click_settings`), how a
    value is written back as arguments (:meth:`argv`) and how click's value becomes the field's (:meth:`parse`,
    which raises ValueError for a malformed one)."""

    def flag(self, name: str, flags: tuple[str, ...]) -> str:
        return flags[0] if flags else "--" + name.replace("_", "-")

    def param(self, name: str) -> str:
        return name

    def click_option(self, name: str, f: Field, help: str) -> Callable:
        """The click option of field ``f`` (named ``name``) with ``help``."""
        flags = f.metadata["flags"]
        return click.option(*(flags or (self.flag(name, flags),)), self.param(name), help=help, **self.click_settings(f))

    def click_settings(self, f: Field) -> dict[str, Any]:
        raise NotImplementedError

    def argv(self, flag: str, value: Any) -> list[str]:
        raise NotImplementedError

    def parse(self, value: Any) -> Any:
        return value


class Value(OptionKind):
    """``--flag VALUE``, typed by the field: its choices, a directory, a range, or its annotation's int/float/str."""

    def click_settings(self, f: Field) -> dict[str, Any]:
        meta, annotation = f.metadata, str(f.type)
        value_type: Any = int if annotation.startswith("int") else float if annotation.startswith("float") else str
        if meta["choices"]:
            value_type = click.Choice(list(meta["choices"]))
        elif meta["directory"]:
            value_type = click.Path(file_okay=False)
        elif meta["minimum"] is not None:
            ranged = click.IntRange if value_type is int else click.FloatRange
            value_type = ranged(meta["minimum"], meta["maximum"], min_open=meta["min_open"], max_open=meta["max_open"])
        return {"type": value_type, "default": field_default(f)}

    def argv(self, flag: str, value: Any) -> list[str]:
        return [flag, repr(value) if isinstance(value, float) else str(value)]


class Flag(OptionKind):
    """A boolean switch: ``--flag`` turns it on."""

    def click_settings(self, f: Field) -> dict[str, Any]:
        return {"is_flag": True}

    def argv(self, flag: str, value: Any) -> list[str]:
        return [flag] if value else []


class Negated(OptionKind):
    """``--no-<name>`` turns a default-true boolean off (the click parameter is ``no_<name>``)."""

    def flag(self, name: str, flags: tuple[str, ...]) -> str:
        return "--no-" + name.replace("_", "-")

    def param(self, name: str) -> str:
        return "no_" + name

    def click_settings(self, f: Field) -> dict[str, Any]:
        return {"is_flag": True}

    def argv(self, flag: str, value: Any) -> list[str]:
        return [] if value else [flag]

    def parse(self, value: Any) -> Any:
        return not value


class Blocks(OptionKind):
    """``all`` (the field's None) or block indices like ``9,10,11``."""

    def click_settings(self, f: Field) -> dict[str, Any]:
        return {"default": "all"}

    def argv(self, flag: str, value: Any) -> list[str]:
        return [flag, ",".join(str(b) for b in value) if isinstance(value, (list, tuple)) else str(value)]

    def parse(self, value: Any) -> Any:
        return parse_blocks(value)


class Pairs(OptionKind):
    """A dict given as repeated ``--flag KEY=VALUE`` (the click parameter is ``<name>_opts``)."""

    def param(self, name: str) -> str:
        return name + "_opts"

    def click_settings(self, f: Field) -> dict[str, Any]:
        return {"multiple": True, "metavar": "KEY=VALUE"}

    def argv(self, flag: str, value: Any) -> list[str]:
        return [arg for k, v in (value or {}).items() for arg in (flag, f"{k}={v}")]

    def parse(self, value: Any) -> Any:
        return parse_pairs(value)


VALUE, FLAG, NEGATED, BLOCKS, PAIRS = Value(), Flag(), Negated(), Blocks(), Pairs()
