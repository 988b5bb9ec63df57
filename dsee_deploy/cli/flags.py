"""Flags made from config dataclasses: flag, field, default and help text are one thing.

A field becomes `--field-name` (or its metadata's "flag"), typed from its annotation (bool: --x/--no-x;
tuple[str, ...]: comma-separated; list[int]: comma-separated integers), with its default, its metadata's
"help" and "choices", in its metadata's "group" (an argument group of that title) where it names one.
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, fields

_SCALARS = {"int": int, "float": float, "str": str}


def flag_of(f) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def add_fields(
    parser: argparse.ArgumentParser,
    cls,
    skip: tuple[str, ...] = (),
    title: str | None = None,
    unset: bool = False,
) -> None:
    """One flag per field of `cls` (those not in `skip`); defaults are the dataclass's own. With `unset`, a
    flag not given is absent from the parsed namespace (its default is named in the help), so that values from
    elsewhere (a suite file) hold where the command line says nothing."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in fields(cls):
        if f.name in skip:
            continue
        group_name = f.metadata.get("group", title)
        target = parser
        if group_name:
            if group_name not in groups:
                groups[group_name] = parser.add_argument_group(group_name)
            target = groups[group_name]
        default = f.default if f.default is not MISSING else f.default_factory()
        kwargs: dict = {"dest": f.name, "default": default, "help": f.metadata.get("help", "")}
        kind = str(f.type).replace(" | None", "")
        if kind == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        elif kind == "tuple[str, ...]":
            kwargs["type"] = _strings
            kwargs["default"] = ",".join(default)
        elif kind == "list[int]":
            kwargs["type"] = _ints(flag_of(f))
            kwargs["default"] = ",".join(map(str, default))
        if kind != "bool" and "choices" not in f.metadata:
            kwargs["metavar"] = flag_of(f)[2:].upper().replace("-", "_")
        if kind in _SCALARS:
            kwargs["type"] = _SCALARS[kind]
            if "choices" in f.metadata:
                kwargs["choices"] = f.metadata["choices"]
        if unset:
            shown = kwargs["default"]
            kwargs["default"] = argparse.SUPPRESS
            kwargs["help"] += f" (default: {shown})"
        target.add_argument(flag_of(f), **kwargs)


def from_args(cls, args: argparse.Namespace, skip: tuple[str, ...] = (), **values):
    """`cls` from the parsed flags of its fields (string defaults of list fields parsed back), plus `values`."""
    kwargs = {}
    for f in fields(cls):
        if f.name in skip or not hasattr(args, f.name):
            continue
        value = getattr(args, f.name)
        kind = str(f.type).replace(" | None", "")
        if isinstance(value, str) and kind == "tuple[str, ...]":
            value = _strings(value)
        elif isinstance(value, str) and kind == "list[int]":
            value = _ints(flag_of(f))(value)
        kwargs[f.name] = value
    return cls(**{**kwargs, **values})


def _strings(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def _ints(flag: str):
    def parse(text: str) -> list[int]:
        try:
            return [int(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} takes comma-separated integers, e.g. 1,8,32") from None

    return parse
