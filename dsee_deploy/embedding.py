"""Tuning sentence embeddings (the feature-extraction task) with transformers' Trainer, for the three shapes of
data users have:

- pairs with a similarity score (STS, SICK): CoSENT, which ranks the pairs' cosines as their scores rank (so any
  score scale works, 1-5 as 0-1);
- (anchor, positive) pairs: multiple-negatives ranking, every other positive in the batch a negative;
- plain text, with a teacher: the teacher's sentence embeddings (MSE), and layer by layer its hidden states.

The losses are sentence-transformers' own (CoSENTLoss, MultipleNegativesRankingLoss), called on the embeddings
this module pools (compute_loss_from_embeddings): their forward wants a SentenceTransformer, and the model tuned
here is a transformers encoder with DSEE updates, pooled as its sentence-transformers config says (Task.pooling,
Task.normalize). Evaluation scores the cosines of scored pairs (Spearman, Pearson) as export and bench do."""

from __future__ import annotations

from .data import PAIR
from .errors import DSEEError, require_extra


def pooled(
    encoder, inputs: dict, pooling: str, normalize: bool, prefix: str = "", hidden_states: bool = False
):
    """(sentence embeddings, hidden states or None) of the texts in `inputs` under `prefix`."""
    import torch

    feeds = {k[len(prefix) :]: v for k, v in inputs.items() if k.startswith(prefix) and k != "labels"}
    if not prefix:
        feeds = {k: v for k, v in feeds.items() if not k.startswith(PAIR)}
    out = encoder(**feeds, output_hidden_states=hidden_states)
    states, mask = out.last_hidden_state, feeds["attention_mask"]
    if pooling == "cls":
        embedding = states[:, 0]
    else:
        weights = mask.unsqueeze(-1).to(states.dtype)
        embedding = (states * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
    if normalize:
        embedding = torch.nn.functional.normalize(embedding, dim=-1)
    return embedding, (out.hidden_states if hidden_states else None)


def collator(tokenizer):
    """Pads each side of a pair on its own (a pair is two texts, not one input) and keeps float scores."""
    import torch
    from transformers import DataCollatorWithPadding

    pad = DataCollatorWithPadding(tokenizer)

    def collate(rows: list[dict]) -> dict:
        first = pad([{k: v for k, v in r.items() if k != "labels" and not k.startswith(PAIR)} for r in rows])
        batch = dict(first)
        if PAIR + "input_ids" in rows[0]:
            second = pad([{k[len(PAIR) :]: v for k, v in r.items() if k.startswith(PAIR)} for r in rows])
            batch.update({PAIR + k: v for k, v in second.items()})
        if "labels" in rows[0]:
            batch["labels"] = torch.tensor([float(r["labels"]) for r in rows])
        return batch

    return collate


def losses():
    """sentence-transformers' CoSENT and multiple-negatives ranking losses, used on embeddings."""
    require_extra("embeddings", "sentence_transformers")
    from sentence_transformers.sentence_transformer.losses import CoSENTLoss, MultipleNegativesRankingLoss

    # model=None: only compute_loss_from_embeddings is called, which never touches the model
    return CoSENTLoss(None), MultipleNegativesRankingLoss(None)


def embedding_trainer_class():
    """A Trainer that tunes sentence embeddings (module notes) and evaluates the cosines of scored pairs."""
    import torch
    from torch.nn import functional as F
    from transformers import Trainer

    class EmbeddingTrainer(Trainer):
        def __init__(self, *args, task, distill=None, **kwargs):
            super().__init__(*args, **kwargs)
            self.task, self.distill = task, distill
            self.cosent, self.ranking = losses()
            self.teacher = None
            if distill is not None:  # a SentenceEncoder (--teacher) or the unpruned encoder: its base model
                self.teacher = distill.teacher.base_model.eval().to(self.args.device)
                for p in self.teacher.parameters():
                    p.requires_grad_(False)

        def _embed(self, model, inputs, prefix: str = "", hidden: bool = False):
            return pooled(model, inputs, self.task.pooling, self.task.normalize, prefix, hidden)

        def task_loss(self, a, b, inputs):
            if b is None:
                return None
            if "labels" in inputs:
                return self.cosent.compute_loss_from_embeddings([a, b], inputs["labels"])
            return self.ranking.compute_loss_from_embeddings([a, b], None)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            d = self.distill
            hidden = d is not None and d.hidden > 0 and bool(d.layer_map) and model.training
            a, states = self._embed(model, inputs, "", hidden)
            b = self._embed(model, inputs, PAIR)[0] if PAIR + "input_ids" in inputs else None
            loss = self.task_loss(a, b, inputs)
            if d is not None and model.training:
                with torch.no_grad():
                    taught, taught_states = self._embed(self.teacher, inputs, "", hidden)
                soft = F.mse_loss(a, taught)
                loss = soft if loss is None else (1 - d.alpha) * loss + d.alpha * soft
                if hidden:
                    mask = inputs["attention_mask"][..., None].to(a.dtype)
                    tokens = mask.sum() * states[0].shape[-1]
                    layers = [
                        ((states[s] - taught_states[t]) ** 2 * mask).sum() / tokens for s, t in d.layer_map
                    ]
                    loss = loss + d.hidden * torch.stack(layers).mean()
            if loss is None:
                raise DSEEError(
                    "single texts teach a sentence-embedding model nothing without a teacher: pass --teacher (or "
                    "prune, which distils from the unpruned model), or pairs"
                )
            return (loss, {"embeddings": a}) if return_outputs else loss

        def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
            inputs = self._prepare_inputs(inputs)
            with torch.no_grad():
                a = self._embed(model, inputs)[0]
                b = self._embed(model, inputs, PAIR)[0] if PAIR + "input_ids" in inputs else None
                loss = self.task_loss(a, b, inputs)
            if b is None:
                return loss, None, None
            cosines = F.cosine_similarity(a, b, dim=-1)
            return loss, cosines, inputs.get("labels")

    return EmbeddingTrainer
