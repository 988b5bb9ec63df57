"""`dsee_deploy.tune`: tune a pre-trained transformer with DSEE (or fine-tune it fully, the baseline), optionally
prune it and re-tune, and save the checkpoint.

Stages, each a function: read the data (`read_data`), start from a base model (`start`) or a checkpoint
(`resume`), train (`Session.train`), prune (`Session.prune`), save (`Session.save`).
"""

from __future__ import annotations

import copy
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..errors import DSEEError, require_extra
from .config import DSEEConfig
from .options import TuneConfig


@dataclass
class Data:
    """A run's task and a function from a tokenizer to its (train, eval, test) datasets."""

    task: Any  # data.Task
    encode_all: Callable


@dataclass
class Run:
    """What a tuning run carries from stage to stage."""

    model: Any
    tokenizer: Any
    task: Any  # data.Task
    dsee: DSEEConfig | None  # None: full fine-tuning
    base: dict  # base model reference and sha256
    pruning: dict | None  # pruning.json record, when pruned
    masks: dict | None  # unstructured masks, when pruned that way
    source: str  # where the model came from, for the summary line


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
    session = Session(run, config, prune)
    if config.teacher:  # loaded and checked before any training
        session.teacher = load_teacher(config.teacher, run.task, run.tokenizer)
    return session.execute(data, target, started, {"train": train, "eval": eval})


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
    splits = ((train_raw, train), (eval_raw, eval), (test_raw, test))
    return Data(
        task,
        lambda tok: tuple(encode(raw, tok, task, src) if raw is not None else None for raw, src in splits),
    )


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
    from . import inject_dsee, train_head

    model_path = resolve_model(model_name)
    spec = get_spec(load_config(model_path).model_type)
    dsee = dsee.for_architecture(spec)  # DSEEConfig.seed seeds A and the support (dsee-tune: its --seed)
    for target in dsee.target_modules:
        spec.site(target)  # unknown target names fail before the model loads
    data = read_data(train, eval, test, config)
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
    from ..data import Task
    from ..interop.peft import METHOD as PEFT_METHOD
    from ..pruning import load_masks
    from . import add_sparse

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
    run = Run(model, tokenizer, data.task, dsee, info["base_model"], info["pruning"], masks, str(checkpoint))
    return run, data


def load_teacher(path: str | Path, task, tokenizer):
    """The fine-tuned model at `path` (a dsee-tune checkpoint, merged, or a transformers directory), refused in
    one line unless it reads the same tokens and predicts the same labels as this run's model."""
    from types import SimpleNamespace

    from ..export.source import load_source

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


class Session:
    """One tuning run: train, prune and re-tune, evaluate, save. Holds the last Trainer, which also evaluates."""

    def __init__(self, run: Run, config: TuneConfig, prune):
        self.run, self.config, self.prune_config = run, config, prune
        self.teacher = None  # --teacher, once loaded
        self.trainer = None
        self.steps = self.wall = self.epochs_run = 0.0

    def execute(self, data: Data, target, started: float, sources: dict):
        """Train, prune and re-tune, evaluate, and save into `target` (an outputs.Output), moved into place only
        when complete: an interrupted run leaves the previous output as it was."""
        from ..distributed import barrier, is_main

        main = is_main()  # under torchrun / accelerate launch every process trains; the main one writes
        try:
            out = self._execute(data, target.start(create=main), started, sources)
        except BaseException:
            if main:
                target.abort()
            raise
        if main:
            target.commit()
        barrier()  # the others return once the checkpoint is in place
        out.path = target.target
        return out

    def _execute(self, data: Data, out: Path, started: float, sources: dict):
        from ..tuning import count_parameters

        run, config = self.run, self.config
        trainable, total = count_parameters(run.model)
        _log(
            f"{'full fine-tuning' if run.dsee is None else 'DSEE'}: {run.model.config.model_type} from "
            f"{run.source}, {run.task.kind}{f' with labels {run.task.label_names}' if run.task.label_names else ''}; "
            f"trainable {trainable:,} of {total:,} parameters ({100 * trainable / total:.2f} %)"
        )
        _log(self.choices())
        if run.dsee is not None:
            _log(describe_dsee(run.dsee))
        self.train_ds, self.eval_ds, self.test_ds = data.encode_all(run.tokenizer)
        self.work = out / "trainer"
        metrics: dict = {"method": "full" if run.dsee is None else "dsee"}
        if config.epochs > 0:  # --epochs 0: straight to pruning (e.g. with --resume of a tuned checkpoint)
            # With --teacher the tuning epochs learn from it too (every layer from its own: nothing is pruned yet).
            self.train(
                config.epochs, self.distillation(self.teacher) if config.distill is not False else None
            )
            if self.teacher is not None:
                metrics["distilled_from"] = str(config.teacher)
        if self.prune_config.any:
            metrics.update(self.prune_and_retune())
        metrics.update(self.summary())
        from ..distributed import barrier, is_main
        from ..training import finish

        barrier()  # every process is done with the Trainer's work directory
        run.model.eval()
        metrics["total_wall_time_s"] = time.perf_counter() - started
        if not is_main():
            return self.info(out, metrics)
        finish(self.work)
        return self.save(out, metrics, sources)

    def train(
        self, epochs: float, distill=None, evaluate: bool = True, callbacks=None, max_steps: int | None = None
    ) -> None:
        from ..training import build_trainer

        c = self.config if max_steps is None else replace(self.config, max_steps=max_steps)
        trainer = build_trainer(
            self.run.model,
            self.run.tokenizer,
            self.train_ds,
            self.eval_ds if evaluate else None,
            self.run.task,
            replace(c, epochs=epochs),
            self.work,
            distill,
            callbacks,
        )
        result = trainer.train()
        self.steps += result.global_step
        self.wall += result.metrics["train_runtime"]
        self.epochs_run += float(trainer.state.epoch or 0)
        self.trainer = trainer

    def evaluate(self, prefix: str, ds) -> dict:
        from ..training import add_perplexity, build_trainer

        run = self.run
        if self.trainer is None:  # nothing trained (e.g. --epochs 0 and no re-tuning): evaluate as it is
            self.trainer = build_trainer(
                run.model, run.tokenizer, self.train_ds, self.eval_ds, run.task, self.config, self.work
            )
        scores = self.trainer.evaluate(ds, metric_key_prefix=prefix)
        return add_perplexity(scores) if run.task.spec.language_model else scores

    def prune_and_retune(self) -> dict:
        """Prune (taylor scores on the training data where asked), then re-tune; what it records in metrics."""
        from ..pruning import choose_layout, format_report, prune_model
        from ..training import importance_batches
        from ..tuning import count_parameters

        run, config, prune = self.run, self.config, self.prune_config
        metrics: dict = {}
        if self.eval_ds is not None:
            before = {k: v for k, v in self.evaluate("eval", self.eval_ds).items() if k.startswith("eval_")}
            if self.test_ds is not None:
                before.update(self.evaluate("test", self.test_ds))
            metrics["before_pruning"] = before
        distilling = (
            config.distill if config.distill is not None else bool(config.teacher or prune.target_speedup)
        )
        teacher = (self.teacher or copy.deepcopy(run.model)) if distilling else None
        batches = None
        if prune.structured and prune.structured_importance() == "taylor":
            batches = importance_batches(
                self.train_ds, run.tokenizer, run.task, prune.taylor_samples, config.batch_size
            )
        retune = config.retune_epochs if config.retune_epochs is not None else config.epochs
        if config.retune_rank and retune > 0:
            from ..tuning import grow_rank

            before = run.dsee.rank
            run.dsee = grow_rank(run.model, run.dsee, config.retune_rank, config.seed)
            metrics["retune_rank"] = {"from": before, "to": run.dsee.rank}
            _log(f"re-tuning at rank {run.dsee.rank} (from {before}): the new directions start at zero")
        gradual = config.prune_schedule == "gradual" and prune.structured and retune > 0
        if prune.structured and run.pruning and run.pruning["structured"]:
            gradual = False  # prune_model refuses it, with the reason
        layout = planned = None
        fade = 0.0
        # A step budget (--max-steps) is shared the same way as epochs: the fade takes its --prune-warmup part.
        fade_steps = max(1, round(config.max_steps * config.prune_warmup)) if config.max_steps > 0 else None
        final_steps = max(1, config.max_steps - (fade_steps or 0)) if config.max_steps > 0 else None
        if gradual:
            layout, planned = choose_layout(run.model, prune, batches, log=_log)
            fade = retune * config.prune_warmup
            self.fade_out(layout, fade, self.distillation(teacher, layout), fade_steps)
        run.pruning, new_masks = prune_model(
            run.model,
            prune,
            batches,
            run.pruning,
            seq_len=prune.flops_seq_len,
            layout=layout,
            planned=planned,
        )
        run.masks = {**(run.masks or {}), **new_masks} or None
        _log(format_report(run.pruning))
        trainable, total = count_parameters(run.model)
        _log(
            f"after pruning: trainable {trainable:,} of {total:,} parameters ({100 * trainable / total:.2f} %)"
        )
        if self.test_ds is not None:  # what re-tuning has to recover
            metrics["after_pruning"] = {
                k: v for k, v in self.evaluate("test", self.test_ds).items() if k.startswith("test_")
            }
        if retune - fade > 0:
            distill = self.distillation(teacher, run.pruning["layers"])
            self.train(retune - fade, distill, max_steps=final_steps if gradual else None)
        metrics["pruning"] = {
            "flops_ratio": run.pruning["flops"]["encoder_ratio"],
            **run.pruning["parameters"],
            "schedule": "gradual" if gradual else "oneshot",
            "distilled_from": str(config.teacher)
            if config.teacher
            else ("the unpruned model" if teacher else None),
        }
        if run.pruning.get("target"):
            target = run.pruning["target"]
            metrics["pruning"].update(
                target_speedup=target["speedup"], predicted_speedup=target["predicted_speedup"]
            )
        return metrics

    def choices(self) -> str:
        """The run's settings that no flag named, in one line, so that none is made in silence."""
        import torch

        run, c = self.run, self.config
        default = "the default for full fine-tuning" if c.full_finetune else "the default for DSEE"
        lr = f"lr {c.learning_rate:g} ({'--lr' if c.lr else default})"
        tuned = _recorded_lr(run.source) if c.lr is None and run.source else None
        if tuned is not None and tuned != c.learning_rate:
            lr += f"; '{run.source}' was tuned at {tuned:g}: pass --lr {tuned:g} to keep it"
        threads = c.threads or torch.get_num_threads()
        return (
            f"training: {lr}, {_count(c.epochs, 'epoch')}, batch {c.batch_size}, max length "
            f"{run.task.max_length}, seed {c.seed}, {_count(threads, 'thread')}"
        )

    def distillation(self, teacher, layers: list[dict] | None = None):
        """How the student learns from `teacher` (None: it does not), its layers mapped by the final layout
        (`layers`, pruning's record; None: every layer kept)."""
        from ..architectures import get_spec
        from ..training import Distillation, layer_map

        if teacher is None:
            return None
        c, spec = self.config, get_spec(self.run.model.config.model_type)
        same_width = spec.hidden_size(teacher.config) == spec.hidden_size(self.run.model.config)
        kept = (
            [True] * spec.num_layers(self.run.model.config)
            if layers is None
            else [bool(e["kept_heads"] or e["kept_ffn"]) for e in layers]
        )
        mapping = layer_map(kept, spec.num_layers(teacher.config)) if same_width else []
        distill = Distillation(teacher, c.distill_alpha, c.distill_temperature, c.distill_hidden, mapping)
        _log(
            describe_distillation(distill, str(c.teacher) if teacher is self.teacher else None, self.run.task)
        )
        return distill

    def fade_out(self, layout: list[dict], epochs: float, distill, max_steps: int | None = None) -> None:
        """Gradual pruning: train for `epochs` while the heads and FFN neurons `layout` drops are scaled by a
        factor that falls from 1 to exactly 0 on a cubic schedule (most of the removal early, while the learning
        rate is high: Zhu & Gupta 2017, as movement pruning and CoFi schedule sparsity). Ends with the model equal
        to the pruned one, which prune_model then checks as it cuts."""
        import torch
        from transformers import TrainerCallback

        from ..architectures import get_spec
        from ..pruning.gates import gated, gates_for, structure_sizes

        model = self.run.model
        spec = get_spec(model.config.model_type)
        _, n_heads, width = structure_sizes(model, spec)
        device = next(model.parameters()).device
        keep_heads, keep_ffn = (g.to(device) for g in gates_for(layout, n_heads, width))
        heads, ffn = torch.ones_like(keep_heads), torch.ones_like(keep_ffn)

        def at(progress: float) -> None:
            factor = (1 - min(max(progress, 0.0), 1.0)) ** 3
            heads.copy_(keep_heads + (1 - keep_heads) * factor)
            ffn.copy_(keep_ffn + (1 - keep_ffn) * factor)

        class Schedule(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                at(state.global_step / max(state.max_steps, 1))

            def on_train_end(self, args, state, control, **kwargs):
                at(1.0)

        removed = (
            sum(n_heads - len(e["kept_heads"]) for e in layout),
            sum(width - len(e["kept_ffn"]) for e in layout),
        )
        _log(
            f"gradual pruning: {removed[0]} heads and {removed[1]:,} FFN neurons fade out over {_count(epochs, 'epoch')}, "
            "then are cut"
        )
        with gated(model, heads, ffn, spec):
            # No evaluation here: a checkpoint from the middle of the schedule is not one of the final layout.
            self.train(epochs, distill, evaluate=False, callbacks=[Schedule()], max_steps=max_steps)
        at(1.0)

    def summary(self) -> dict:
        from ..tuning import count_parameters

        run, c = self.run, self.config
        trainable, total = count_parameters(run.model)
        metrics = {
            "trainable_parameters": trainable,
            "total_parameters": total,
            "trainable_percent": 100 * trainable / total,
            "train_examples": len(self.train_ds),
            "train_steps": int(self.steps),
            "train_wall_time_s": self.wall,
            "train_step_time_s": self.wall / max(self.steps, 1),
            "learning_rate": c.learning_rate,
            "epochs": self.epochs_run,  # tuning, fading out and re-tuning, as they ran
            "tune_epochs": c.epochs,
            "batch_size": c.batch_size,
            "max_length": run.task.max_length,
            "metric": run.task.metric,
        }
        for prefix, ds in (("eval", self.eval_ds), ("test", self.test_ds)):
            if ds is not None:
                metrics.update(self.evaluate(prefix, ds))
                metrics.update(self.majority(prefix, ds))
        return metrics

    def majority(self, prefix: str, ds) -> dict:
        """The metrics of always answering the training data's most frequent class: what a model that learnt
        nothing scores on imbalanced data (F1 and accuracy can look fine for it)."""
        import numpy as np

        from ..runtime.evaluate import constant_scores

        task = self.run.task
        if not task.spec.labelled or task.spec.continuous_labels or len(ds) == 0:
            return {}
        common = int(np.bincount(np.asarray(self.train_ds["labels"])).argmax())
        scores = constant_scores(task, np.asarray(ds["labels"]), common)
        return {f"{prefix}_majority_{m}": value / 100 for m, value in scores.items()}

    def save(self, out: Path, metrics: dict, sources: dict):
        from ..checkpoint import METRICS_FILE, save_checkpoint

        run = self.run
        if run.dsee is None:  # full fine-tuning: a plain transformers model
            run.model.save_pretrained(out)
            run.tokenizer.save_pretrained(out)
            (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
        else:  # save_checkpoint writes metrics.json with the rest
            data = {k: str(Path(v).resolve()) for k, v in sources.items() if v and Path(v).exists()}
            save_checkpoint(
                out,
                run.model,
                run.tokenizer,
                run.dsee,
                run.task,
                run.base,
                metrics,
                pruning=run.pruning,
                masks=run.masks,
                extra={"data": data},
            )
        return self.info(out, metrics)

    def info(self, out: Path, metrics: dict):
        from ..checkpoint import CheckpointInfo

        run = self.run
        return CheckpointInfo(out, run.task, metrics, run.dsee, run.pruning, int(self.steps), self.wall)


def describe_dsee(dsee) -> str:
    """The DSEE update a run trains, as the flags that give it (the defaults are the measured-best recipe)."""
    flags = (
        f"--rank {dsee.rank} --alpha {dsee.alpha:g} --num-sparse {dsee.num_sparse} --sparse-init "
        f"{dsee.sparse_init} --target-modules {','.join(dsee.target_modules)}"
    )
    return f"update: low-rank r {dsee.rank} (scale alpha/r {dsee.scaling:g}) + {dsee.num_sparse} sparse per matrix: {flags}"


def describe_distillation(d, teacher: str | None, task) -> str:
    """What a student learns from its teacher, in one line: the loss and each weight."""
    soft = (
        "MSE to its outputs"
        if task.kind == "regression"
        else f"KL to its softened logits (T {d.temperature:g})"
    )
    who = f"'{teacher}'" if teacher else "the unpruned model (a copy taken before pruning)"
    line = f"distilling from {who}: loss = {1 - d.alpha:g} x task + {d.alpha:g} x {soft}"
    if d.hidden > 0 and d.layer_map:
        pairs = ", ".join(f"{s}<-{t}" for s, t in d.layer_map)
        line += f" + {d.hidden:g} x hidden-state MSE over {_count(len(d.layer_map), 'layer')} (student<-teacher: {pairs})"
    elif d.hidden > 0:
        line += " (no hidden-state loss: the teacher's width differs)"
    return line


def _count(n: float, noun: str) -> str:
    """'1 epoch', '2 epochs', '0.5 epochs'."""
    return f"{n:g} {noun}{'' if n == 1 else 's'}"


def _recorded_lr(checkpoint) -> float | None:
    """The learning rate a checkpoint was tuned at, from its metrics.json (None where it does not say)."""
    import json

    path = Path(checkpoint) / "metrics.json"
    try:
        value = json.loads(path.read_text()).get("learning_rate")
    except (OSError, ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, int | float) else None


def _log(message: str) -> None:
    from ..distributed import is_main

    if is_main():  # one report of a distributed run
        print(message, file=sys.stderr, flush=True)
