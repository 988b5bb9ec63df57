"""An export and its disk: what an engine needs, the one line said when the disk fills up (naming the output, the
space free and the space needed), and where an export that failed its checks is kept."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from ..export.config import ExportConfig
from ..export.formats import PRECISIONS
from .source import Source

# A full disk, and a full quota: the export's own writes fail with these, deep in torch, onnx or tokenizers.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def disk_full(exc: BaseException, where: Path) -> int | None:
    """The errno when `exc` or what it arose from is a full disk or quota under `where` (a failed write names
    no file; a failed open does, and one elsewhere, the latency cache's, is not the output's): an OSError, or a
    library's own error that carries the OS's message (tokenizers' Rust writer: "... (os error 28)")."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_FULL:
            name = exc.filename
            named = isinstance(name, (str, bytes, os.PathLike))
            elsewhere = named and where not in Path(os.path.abspath(os.fsdecode(name))).parents
            return None if elsewhere else exc.errno
        for code in DISK_FULL:
            if os.strerror(code) in str(exc):
                return code
        exc = exc.__cause__ or exc.__context__
    return None


def disk_full_message(code: int, target: Path, sizes: dict) -> str:
    """One line: the output, the free space where it is written, and what the engine needs where known."""
    where = next(p for p in (target.absolute().parent, *target.absolute().parents) if p.exists())
    needs = f"the engine needs at least {_size(sizes['bytes'])} ({sizes['what']})" if sizes else ""
    if code == errno.EDQUOT:  # the disk's free space says nothing of the quota's
        room, fix = needs, "free space within your quota"
    else:
        room = "; ".join(filter(None, (f"'{where}' has {_size(shutil.disk_usage(where).free)} free", needs)))
        fix = "free space there"
    kept = f"; the engine already at '{target}' is unchanged" if target.exists() else ""
    return (
        f"{os.strerror(code).lower()} writing --output '{target}'{': ' + room if room else ''}: {fix} or pass "
        f"another --output (nothing of this export was kept{kept})"
    )


def _size(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} bytes"


def engine_bytes(source: Source, config: ExportConfig) -> dict:
    """A lower bound of the disk the export takes: the fp32 graph's weights, and the reduced engine written
    beside it (the fp32 one is removed only once the reduced one is checked)."""
    weights = sum(p.numel() for p in source.model.parameters())
    precision = PRECISIONS[config.precision]
    total = weights * PRECISIONS["fp32"].bytes_per_weight
    what = f"{weights:,} weights in fp32"
    if precision.reduced:
        total += weights * precision.bytes_per_weight
        what += f", and again in {precision.name} beside them"
    return {"bytes": total, "what": what}


def keep_failed(target) -> Path | None:
    """A failed export is kept for inspection (its manifest says failed; Engine.load refuses it): in place of a
    target that did not exist, else beside it, so that a working engine is never replaced by a failed one."""
    if not target.target.exists():
        return target.commit()
    beside = target.target.with_name(target.target.name + ".failed")
    if beside.is_symlink() or (beside.exists() and not beside.is_dir()):
        target.abort()
        return None
    return target.commit(beside)
