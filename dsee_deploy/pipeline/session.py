"""What a tuning run carries (Data, Run), and its stages once the data and the model are in hand (pipeline.tune
starts it): train, prune and re-tune with the fade-out and distillation, evaluate, save; and the lines that say
each choice it makes."""

from __future__ import annotations

import copy
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..export.pooling import copy_sentence_config
from ..models import resolve_model
from ..pruning.record import PruningRecord
from ..tuning.config import DSEEConfig
from ..tuning.options import TuneConfig
from .describe import _count, _recorded_lr, describe_distillation, describe_dsee


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
    pruning: PruningRecord | None  # pruning.json, when pruned
    masks: dict | None  # unstructured masks, when pruned that way
    source: str  # where the model came from, for the summary line


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
        from ..pruning.importance import GRADIENT
        from ..training import importance_batches
        from ..tuning import count_parameters

        run, config, prune = self.run, self.config, self.prune_config
        metrics: dict = {}
        if self.eval_ds is not None:
            before = {k: v for k, v in self.evaluate("eval", self.eval_ds).items() if k.startswith("eval_")}
            if self.test_ds is not None:
                before.update(self.evaluate("test", self.test_ds))
            metrics["before_pruning"] = before
        distilling = self.distilling()
        teacher = (self.teacher or copy.deepcopy(run.model)) if distilling else None
        batches = None
        if prune.structured and prune.structured_importance() in GRADIENT:
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
        if prune.structured and run.pruning and run.pruning.structured:
            gradual = False  # prune_model refuses it, with the reason
        layout = planned = None
        fade = 0.0
        # A step budget (--max-steps) is shared the same way as epochs: the fade takes its --prune-warmup part.
        fade_steps = max(1, round(config.max_steps * config.prune_warmup)) if config.max_steps > 0 else None
        final_steps = max(1, config.max_steps - (fade_steps or 0)) if config.max_steps > 0 else None
        if gradual:
            layout, planned = choose_layout(run.model, prune, batches, log=_log, output=self.scored_output())
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
            distill = self.distillation(teacher, run.pruning.layers)
            self.train(retune - fade, distill, max_steps=final_steps if gradual else None)
        metrics["pruning"] = {
            "flops_ratio": run.pruning.flops["encoder_ratio"],
            **run.pruning.parameters,
            "schedule": "gradual" if gradual else "oneshot",
            "distilled_from": str(config.teacher)
            if config.teacher
            else ("the unpruned model" if teacher else None),
        }
        if run.pruning.target:
            target = run.pruning.target
            metrics["pruning"].update(
                target_speedup=target.target_speedup, predicted_speedup=target.predicted_speedup
            )
        return metrics

    def scored_output(self):
        """What fisher importance sees of the model: a sentence-embedding model's pooled embeddings (None:
        its own output)."""
        task = self.run.task
        if not task.spec.pair_similarity:
            return None
        from ..embedding import pooled

        return lambda model, batch: pooled(model, batch, task.pooling, task.normalize)[0]

    def distilling(self) -> bool:
        """Whether re-tuning after pruning learns from a teacher: --distill, else with --teacher, a speed target,
        or single texts (a sentence-embedding model learns from nothing else)."""
        config, task = self.config, self.run.task
        if config.distill is not None:
            return config.distill
        single_texts = task.spec.pair_similarity and not task.text_pair_column
        return bool(config.teacher or self.prune_config.target_speedup or single_texts)

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
            # The length it was tuned with, where transformers keeps a model's limit: export, serving and
            # evaluation truncate there (architectures.longest_input reads it back)
            run.tokenizer.model_max_length = run.task.max_length
            run.tokenizer.save_pretrained(out)
            if run.task.spec.pooled:  # pooled as its base: what export pools with
                copy_sentence_config(Path(resolve_model(run.base["name_or_path"])), out)
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


def _log(message: str) -> None:
    from ..distributed import is_main

    if is_main():  # one report of a distributed run
        print(message, file=sys.stderr, flush=True)
