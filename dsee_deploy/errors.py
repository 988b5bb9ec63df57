"""Errors users see: one line that names the bad input, what was expected, and the fix."""

from __future__ import annotations

import importlib


class DSEEError(Exception):
    """A user-facing error. The CLIs print its message on one line and exit non-zero."""


def require_extra(extra: str, *modules: str) -> None:
    """Fail with the pip command to run when a module of an optional extra is not installed."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise DSEEError(
                f"this needs the '{extra}' extra ({name} is not installed): "
                f"pip install 'dsee-deploy[{extra}]'"
            ) from exc


class ConfigError(DSEEError, ValueError):
    """A config dataclass field out of range: a ValueError (as options checks are) that the CLIs show as a
    user error, in one line."""


def versioned_fields(cls, data: dict, version: int, what: str, fix: str) -> dict:
    """The fields of a saved config `data` for dataclass `cls`, refused in one line where its format version is
    not `version` or it holds fields `cls` does not have (written by a newer dsee-deploy)."""
    from dataclasses import fields

    data = dict(data)
    found = data.pop("format_version", None)
    if found != version:
        raise DSEEError(
            f"{what} format version {found} is not supported by this dsee-deploy (it reads version {version}): "
            f"upgrade dsee-deploy or {fix}"
        )
    unknown = sorted(set(data) - {f.name for f in fields(cls)})
    if unknown:
        raise DSEEError(f"{what} has unknown fields {unknown}: was it written by a newer dsee-deploy?")
    return data


class NonFiniteUpdate(DSEEError, ValueError):
    """A DSEE update with NaN or inf values, refused before it is merged into the weights."""
