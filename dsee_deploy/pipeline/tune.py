"""`dsee_deploy.tune`: tune a pre-trained transformer with DSEE (or fine-tune it fully, the baseline), optionally
prune it and re-tune, and save the checkpoint.

Stages, each a function: read the data (`read_data`), start from a base model (`start`) or a checkpoint
(`resume_run`); then pipeline.session runs it: train, prune and re-tune, save.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..errors import DSEEError, require_extra
from ..export.pooling import pooling_of
from ..pruning.record import PruningRecord
from ..tasks import FeatureExtraction
from ..tuning.config import DSEEConfig
from ..tuning.options import TuneConfig
from .session import Data, Run, Session


def tune(
    train: str,
    output: str | Path,
    *,
    eval: str | None = None,
    test: str | None = None,
    model: str | None = None,
    resume: str | Path | None = None,
    base_model: str | None = None,
    config: TuneConfig | None = None,
    dsee: DSEEConfig | None = None,
    prune: Any = None,
    overwrite: bool = False,
):
    """Tune `model` (default: the packaged all-MiniLM-L6-v2) on `train` with DSEE, selecting on `eval` each
    epoch, and save the checkpoint to `output`; `test` is evaluated once at the end. `resume` continues from a
    dsee-tune / dsee-prune checkpoint (its model, DSEE config, task and metric, pruning). `prune` (a
    PruneConfig) prunes after tuning and re-tunes. Returns the CheckpointInfo."""
    require_extra("tune", "torch", "transformers", "datasets", "safetensors")
    from ..checkpoint import recorded_base
    from ..models import DEFAULT_MODEL
    from ..outputs import Output
    from ..pruning import PruneConfig

    started = time.perf_counter()
    config, dsee, prune = config or TuneConfig(), dsee or DSEEConfig(), prune or PruneConfig()
    if config.distill and not config.teacher and not prune.any:
        raise DSEEError(
            "--distill learns from the unpruned model after pruning: pass --target-speedup or a --prune-* ratio "
            "with it, or --teacher DIR to distil from a fine-tuned model while tuning"
        )
    if config.retune_rank and not prune.any:
        raise DSEEError(
            "--retune-rank grows the rank for re-tuning after pruning: pass --target-speedup or a --prune-* ratio "
            "with it (a fresh run takes --rank)"
        )
    if config.full_finetune and (prune.any or resume):
        raise DSEEError(
            "--full-finetune trains the dense baseline: it does not combine with pruning or --resume"
        )
    # Check everything cheap before anything slow: options, the output, the model's architecture, the data.
    target = Output(
        output,
        overwrite,
        {
            "--train": train,
            "--eval": eval,
            "--test": test,
            "--model": model,
            "--resume": resume,
            "--base-model": base_model or (recorded_base(resume) if resume else None),
            "--teacher": config.teacher,
        },
    )
    if config.teacher and not Path(config.teacher).is_dir():
        raise DSEEError(
            f"--teacher '{config.teacher}' is not a directory: pass a dsee-tune or transformers model"
        )
    from ..runtime.session import use_threads

    use_threads(config.threads)
    if resume:
        run, data = resume_run(resume, base_model, train, eval, test, config, dsee)
    else:
        run, data = start(model or DEFAULT_MODEL, train, eval, test, config, dsee)
    prune = embedding_checks(data.task, config, prune)
    session = Session(run, config, prune)
    if config.teacher:  # loaded and checked before any training
        session.teacher = load_teacher(config.teacher, run.task, run.tokenizer)
    return session.execute(data, target, started, {"train": train, "eval": eval})


def embedding_checks(task, config: TuneConfig, prune):
    """A sentence-embedding run's pruning options and its data, checked before anything slow: heads and neurons
    ranked by wabs, and single texts only with a teacher."""
    if not task.spec.pair_similarity:
        return prune
    if prune.structured:
        # Taylor scores need a loss at the dense model, and distillation from plain text has none there (the
        # student is its teacher). Fisher scores need none, but ranked MiniLM's heads and neurons worse than
        # their weights do (SICK Spearman 68.2 against 71.1 at 2x: benchmarks/embeddings/prune-plain-*.md)
        if prune.importance == "taylor":
            raise DSEEError(
                "--importance taylor needs a loss at the dense model, which sentence embeddings distilled from "
                "plain text do not have: use --importance wabs (the default for feature-extraction), fisher or abs"
            )
        prune = replace(prune, importance=prune.importance or "wabs")
    # single texts learn from a teacher: --teacher, or the unpruned model when pruning without tuning first
    if not task.text_pair_column and not (config.teacher or (prune.any and config.epochs == 0)):
        raise DSEEError(
            "single texts teach a sentence-embedding model nothing without a teacher: pass --teacher DIR (a "
            "sentence-embedding model to learn from), pairs (scored, or anchor and positive), or prune with "
            "--epochs 0 --retune-epochs N (distilled from the unpruned model)"
        )
    return prune


def read_data(train: str, eval: str | None, test: str | None, config: TuneConfig, fixed_task=None) -> Data:
    """The task (inferred from the training data, or `fixed_task` when resuming) and how to encode it."""
    from ..data import (
        Task,
        encode,
        infer_kind,
        label_names_of,
        missing_labels,
        read_table,
        resolve_columns,
    )
    from ..tasks import CausalLM, Classification, get_task

    kind = config.task
    train_raw = read_table(train, "--train", "train")
    if kind == "auto" and Path(train).suffix.lower() == ".txt" and train_raw.column_names == ["text"]:
        kind = CausalLM.kind  # plain text (a .txt with tab-separated columns reads as a table)
    eval_raw = read_table(eval, "--eval", "validation") if eval else None
    test_raw = read_table(test, "--test", "test") if test else None
    if config.max_train_samples:
        train_raw = train_raw.select(range(min(config.max_train_samples, len(train_raw))))
    if eval_raw is not None and config.max_eval_samples:
        eval_raw = eval_raw.select(range(min(config.max_eval_samples, len(eval_raw))))
    if fixed_task is not None and fixed_task.spec.labelled and fixed_task.text_column is None:
        fixed_task = columns_for(fixed_task, train_raw, train, config)  # a PEFT adapter names no columns
    if fixed_task is not None:
        task = replace(fixed_task, metric=config.metric) if config.metric else fixed_task
    elif kind == FeatureExtraction.kind:
        task = embedding_task(train_raw, train, config)
    elif kind != "auto" and get_task(kind).language_model:
        task = Task(
            kind=kind, text_column=config.text_column, max_length=config.max_length, metric=config.metric
        )
    else:
        text, pair, label = resolve_columns(
            train_raw, train, config.text_column, config.text_pair_column, config.label_column
        )
        for raw, source in ((train_raw, train), (eval_raw, eval), (test_raw, test)):
            if raw is not None and label in raw.column_names:
                missing_labels(raw, label, source)
        kind = infer_kind(train_raw, label) if kind == "auto" else kind
        names = label_names_of(train_raw, label) if kind == Classification.kind else []
        values: list[str] = []
        if config.label_names and kind == Classification.kind:
            if len(config.label_names) != len(names):
                raise DSEEError(
                    f"--label-names gives {len(config.label_names)} names, but '{train}' has {len(names)} labels "
                    f"({', '.join(names)}): name each, in this order"
                )
            values, names = names, list(config.label_names)
        task = Task(
            kind, text, pair, label, names, config.max_length, metric=config.metric, label_values=values
        )
    splits = ((train_raw, train, task), (eval_raw, eval, task), (test_raw, test, task))
    if task.spec.pair_similarity:  # plain text to learn from, scored pairs to select and test on: own columns
        splits = (
            (train_raw, train, task),
            *((raw, src, scored_pairs(raw, src, task)) for raw, src, _ in splits[1:]),
        )
    return Data(
        task,
        lambda tok: tuple(encode(raw, tok, t, src) if raw is not None else None for raw, src, t in splits),
    )


def embedding_task(train_raw, train: str, config: TuneConfig):
    """Sentence embeddings: the text column, the pair's second text where the data has one, and the score where
    the pairs have one (--text-column, --text-pair-column, --label-column, or the usual names)."""
    from ..data import Task

    text, pair, label = _embedding_columns(
        train_raw, train, config.text_column, config.text_pair_column, config.label_column
    )
    return Task(FeatureExtraction.kind, text, pair, label, [], config.max_length, metric=config.metric)


def scored_pairs(raw, source: str | None, task):
    """`task` with the columns of evaluation data `raw`: pairs with a score (what selects the checkpoint)."""
    if raw is None:
        return task
    text, pair, label = _embedding_columns(raw, source, None, None, None)
    if not (pair and label):
        raise DSEEError(
            f"'{source}' is evaluation data for sentence embeddings: pass pairs with a score (as SICK's "
            f"sentence_A, sentence_B, relatedness_score), not {', '.join(raw.column_names)}"
        )
    return replace(task, text_column=text, text_pair_column=pair, label_column=label)


def _embedding_columns(raw, source, text, pair, label) -> tuple:
    from ..data import LABEL_COLUMNS, TEXT_COLUMNS

    columns = raw.column_names
    for flag, name in (("--text-column", text), ("--text-pair-column", pair), ("--label-column", label)):
        if name is not None and name not in columns:
            raise DSEEError(f"{flag} '{name}' is not a column of '{source}' (columns: {', '.join(columns)})")
    if text is None:
        found = next(((t, p) for t, p in TEXT_COLUMNS if t in columns and (p is None or p in columns)), None)
        if found is None:
            raise DSEEError(
                f"'{source}' has no text column this tool recognises (columns: {', '.join(columns)}): pass "
                f"--text-column (and --text-pair-column for pairs)"
            )
        text, pair = found[0], pair if pair is not None else found[1]
    label = (label or next((c for c in LABEL_COLUMNS if c in columns), None)) if pair else None
    return text, pair, label


def columns_for(task, train_raw, train: str, config: TuneConfig):
    """`task` (a PEFT adapter's: labels, no columns) with the columns of the data it is tuned on, whose labels
    must be the adapter's."""
    from ..data import label_names_of, resolve_columns

    text, pair, label = resolve_columns(
        train_raw, train, config.text_column, config.text_pair_column, config.label_column
    )
    if task.label_names:
        found = label_names_of(train_raw, label)
        if found != list(task.label_names):
            raise DSEEError(
                f"the adapter predicts labels {list(task.label_names)}, but '{train}' has {found}: write the "
                f"labels as the adapter's label ids, or save a config.json with id2label beside the adapter"
            )
    return replace(task, text_column=text, text_pair_column=pair, label_column=label)


def start(model_name: str, train, eval, test, config: TuneConfig, dsee: DSEEConfig) -> tuple[Run, Data]:
    from ..architectures import get_spec
    from ..models import base_weights_sha256, load_config, load_model, load_tokenizer, resolve_model
    from ..tuning import inject_dsee, train_head

    model_path = resolve_model(model_name)
    spec = get_spec(load_config(model_path).model_type)
    dsee = dsee.for_architecture(spec)  # DSEEConfig.seed seeds A and the support (dsee-tune: its --seed)
    for target in dsee.target_modules:
        spec.site(target)  # unknown target names fail before the model loads
    data = read_data(train, eval, test, config)
    if data.task.spec.pooled:  # pooled as the model's sentence-transformers config says, as export pools it
        pooling, normalize = pooling_of(Path(model_path))
        data.task = replace(data.task, pooling=pooling, normalize=normalize)
    model_config = load_config(model_path, data.task)
    tokenizer = load_tokenizer(model_path)
    from transformers import set_seed

    # The new task head is initialised from torch's global generator: seeded, so that two runs in one process
    # (the Python API) with one --seed start alike, as two processes do.
    set_seed(config.seed)
    model, loading = load_model(model_path, model_config, data.task)
    # A local base is recorded by absolute path so that the checkpoint loads from any working directory.
    base_ref = str(Path(model_name).resolve()) if Path(model_name).exists() else model_name
    base = {"name_or_path": base_ref, "sha256": base_weights_sha256(model, loading["missing_keys"])}
    if not config.full_finetune:
        inject_dsee(model, dsee, spec)
        train_head(model, loading["missing_keys"])
    run = Run(
        model, tokenizer, data.task, None if config.full_finetune else dsee, base, None, None, model_name
    )
    return run, data


def resume_run(
    checkpoint, base_model, train, eval, test, config: TuneConfig, dsee: DSEEConfig | None = None
) -> tuple[Run, Data]:
    """Continue from a checkpoint. A PEFT LoRA adapter continues as DSEE: its updates get `dsee`'s sparse
    part (N entries each, at zero, on `dsee`'s support; --num-sparse 0 keeps it a LoRA)."""
    from ..checkpoint import MASKS_FILE, load_dsee
    from ..checkpoint.peft_config import METHOD as PEFT_METHOD
    from ..data import Task
    from ..pruning import load_masks
    from ..tuning import add_sparse

    model, tokenizer, info = load_dsee(checkpoint, base_model)
    if info.get("method") == PEFT_METHOD and dsee is not None and dsee.num_sparse:
        add_sparse(model, dsee)
        chosen = ("num_sparse", "sparse_init", "grebsmo_rank", "grebsmo_threshold")
        info["dsee"] = {**info["dsee"], **{k: getattr(dsee, k) for k in chosen}}
    trainable = set(info["trainable"])
    for name, param in model.named_parameters():
        param.requires_grad_(name in trainable)
    data = read_data(train, eval, test, config, fixed_task=Task.from_dict(info["task"]))
    masks_file = Path(checkpoint) / MASKS_FILE
    masks = load_masks(masks_file) if masks_file.is_file() else None
    dsee = DSEEConfig.from_dict(info["dsee"])
    pruning = PruningRecord.from_dict(info["pruning"]) if info["pruning"] else None
    run = Run(model, tokenizer, data.task, dsee, info["base_model"], pruning, masks, str(checkpoint))
    return run, data


def load_teacher(path: str | Path, task, tokenizer):
    """The fine-tuned model at `path` (a dsee-tune checkpoint, merged, or a transformers directory), refused in
    one line unless it reads the same tokens and predicts the same labels as this run's model."""
    from types import SimpleNamespace

    from .source import load_source

    try:
        source = load_source(Path(path), SimpleNamespace(task="auto", pooling="auto", normalize=None))
    except DSEEError as exc:
        raise DSEEError(f"--teacher: {exc}") from None
    theirs, ours = source.tokenizer.get_vocab(), tokenizer.get_vocab()
    if theirs != ours:
        differ = len(set(theirs.items()) ^ set(ours.items()))
        raise DSEEError(
            f"--teacher '{path}' has another tokenizer ({len(theirs):,} tokens against this model's {len(ours):,}, "
            f"{differ:,} entries differ): distil from a model tuned from the same base"
        )
    if source.task.kind != task.kind or list(source.task.label_names) != list(task.label_names):
        raise DSEEError(
            f"--teacher '{path}' is a {source.task.kind} model with labels {list(source.task.label_names)}, this "
            f"run's is {task.kind} with labels {list(task.label_names)}: distil from a model tuned on the same labels"
        )
    return source.model
