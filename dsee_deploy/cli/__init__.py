"""Command-line entry points. Each prints a DSEEError as one line on stderr and exits with status 2."""

from __future__ import annotations

import sys
from collections.abc import Callable

from ..errors import DSEEError


def run_cli(fn: Callable[[], int | None]) -> int:
    try:
        return fn() or 0
    except DSEEError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # option checks in the dataclasses' __post_init__
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
