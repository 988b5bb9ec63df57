"""Command-line entry points: argument parsing and a printed summary over the library's verbs.

Each prints a DSEEError (bad input, a failed check) as one line on stderr and exits with its exit code (2 for
bad input; 1 for an engine that failed its checks). Anything else is a bug: a traceback and exit status 1.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from ..errors import DSEEError


def run_cli(fn: Callable[[], int | None]) -> int:
    try:
        return fn() or 0
    except DSEEError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
