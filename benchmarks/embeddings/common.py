"""What the embedding benchmark scripts share: where SICK is, and running a command with it echoed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SICK = ROOT.parent / "shared" / "data" / "sick"
BIN = Path(sys.executable).parent  # dsee-tune, dsee-export of the interpreter running the script


def run(argv: list[str], check: bool = True) -> int:
    print("$", " ".join(argv), flush=True)
    return subprocess.run(argv, check=check).returncode
