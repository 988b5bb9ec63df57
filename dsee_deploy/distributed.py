"""Running under `torchrun` or `accelerate launch`: which process is the main one, and the few collective steps
the tuning run needs besides what transformers' Trainer does (it trains data-parallel and gathers evaluation
across processes by itself).

Every process trains and evaluates; only the main one writes the checkpoint and prints the summary, and the
others wait for it, so that the run leaves one checkpoint. Pruning decisions (importance scores) are taken
from the main process, so that every process cuts the same heads and neurons.
"""

from __future__ import annotations

import os


def world_size() -> int:
    """Processes in this run, from the launcher's environment (torchrun, accelerate launch): 1 when alone."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def run_token() -> str:
    """The same string in every process of one launch (their launcher's pid) and unique to it: the name of the
    work directory they share."""
    return str(os.getppid() if world_size() > 1 else os.getpid())


def _group():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def _start_group():
    """The process group as accelerate (and so Trainer) would start it: gloo on CPU, nccl with CUDA; Trainer
    finds it started and uses it."""
    import torch
    import torch.distributed as dist

    dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return dist


def barrier() -> None:
    """Wait for every process (a no-op when alone or before the Trainer has started the process group)."""
    dist = _group()
    if dist is not None:
        dist.barrier()


def from_main(value):
    """`value` as the main process has it, in every process (pickled over the process group, started here
    when no Trainer has started it yet: pruning straight after --resume)."""
    if world_size() == 1:
        return value
    dist = _group() or _start_group()
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
