"""An engine's text generation (causal-LM engines with a KV cache): prompts to tokens, greedy or sampled, whole or
streamed, as the Engine's methods (Engine mixes this class in; it holds the session, the decoder and the prompt
tokenizer)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace

import numpy as np

from ..errors import DSEEError
from ..runtime.generate import GenerationConfig, TextStream
from .inputs import check_text, describe_input


class Generation:
    """Engine's generation methods: generate, stream, decode, prompt_ids."""

    def generate(
        self,
        prompts: Sequence[str],
        max_new_tokens: int = 32,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: Sequence[str] | str | None = None,
        batch_size: int = 16,
    ) -> list[dict]:
        """Continue each prompt: per prompt {"text", "token_ids", "finish_reason"} ("stop": an EOS token or a
        `stop` string ended it, neither included; "length": `max_new_tokens` did). Greedy by default;
        `do_sample` draws after `temperature`, `top_k` (0: off) and `top_p` (1: off), the same tokens for the
        same `seed`. Prompts decode together, left padded, `batch_size` at a time, with the KV cache."""
        results: list[dict] = [{} for _ in prompts] if not isinstance(prompts, str) else []
        for event in self.stream(
            prompts, max_new_tokens, do_sample, temperature, top_k, top_p, seed, stop, batch_size
        ):
            if "finish_reason" in event:
                index = event.pop("index")
                results[index] = event
        return results

    def stream(
        self,
        prompts: Sequence[str],
        max_new_tokens: int = 32,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: Sequence[str] | str | None = None,
        batch_size: int = 16,
    ) -> Iterator[dict]:
        """generate() as it happens: {"index", "token_id", "text"} for each new token of prompt `index` (`text`:
        what it adds, maybe empty while a character is incomplete), then {"index", "text", "token_ids",
        "finish_reason"} once that prompt is done. Parameters are checked before anything runs."""
        config = GenerationConfig(max_new_tokens, do_sample, temperature, top_k, top_p, seed, stop or ())
        config.check()
        ids = self.prompt_ids(prompts, config)
        if batch_size < 1:
            raise DSEEError(f"batch_size={batch_size} is not a batch size: pass 1 or more")
        for start in range(0, len(ids), batch_size):
            rows = ids[start : start + batch_size]
            for event in self.decode(
                rows, config, [config.max_new_tokens] * len(rows), [config.stop] * len(rows)
            ):
                yield {**event, "index": start + event["index"]}

    def decode(
        self,
        prompts: list[list[int]],
        config: GenerationConfig,
        limits: list[int],
        stops: list[tuple[str, ...]],
        cancelled: Callable[[int], bool] | None = None,
    ) -> Iterator[dict]:
        """stream() for checked prompt token ids in one batch, each row with its own token limit and stop
        strings (several clients' requests decoding together); `config` gives the sampling and the steps.
        A row for which `cancelled(row)` turns true (its client went away) ends at the next step with
        finish_reason "cancelled", and the batch goes on for the others."""
        texts = [TextStream(self._prompts, stop) for stop in stops]
        done = np.zeros(len(prompts), bool)  # rows the decoder may stop feeding: each step reads it
        steps = self._decoder.steps(prompts, replace(config, max_new_tokens=max(limits)), done)
        try:
            for tokens in steps:
                for row, token in enumerate(tokens.tolist()):
                    if done[row]:
                        continue
                    if cancelled is not None and cancelled(row):
                        done[row] = True
                        yield self._finished(row, texts[row], "cancelled")
                        continue
                    reason = None
                    if token in self._decoder.eos:
                        reason = "stop"
                    else:
                        delta = texts[row].add(token)
                        yield {"index": row, "token_id": token, "text": delta}
                        if texts[row].stopped:
                            reason = "stop"
                        elif len(texts[row].ids) >= limits[row]:
                            reason = "length"
                    if reason:
                        done[row] = True
                        yield self._finished(row, texts[row], reason)
                if done.all():
                    break
        finally:
            steps.close()

    @staticmethod
    def _finished(index: int, text: TextStream, reason: str) -> dict:
        return {"index": index, "text": text.text, "token_ids": list(text.ids), "finish_reason": reason}

    def prompt_ids(self, prompts, config: GenerationConfig) -> list[list[int]]:
        """The token ids of each prompt, refused in one line where they cannot be generated from."""
        if self._decoder is None:
            raise DSEEError(
                f"engine '{self.path}' is a {self.task} engine without a KV cache: generate() serves causal-LM "
                f"engines exported with one (dsee-export CKPT --output DIR, without --no-kv-cache)"
            )
        if isinstance(prompts, str | bytes) or not isinstance(prompts, Sequence):
            raise DSEEError(
                f"prompts is a {type(prompts).__name__}: pass a list of texts, e.g. generate(['The restaurant'])"
            )
        ids = []
        limit = self._decoder.positions
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt, str):
                raise DSEEError(f"prompts[{i}] is {describe_input(prompt)}: pass a text")
            check_text(prompt, f"prompts[{i}]")
            tokens = self._prompts.encode(prompt, add_special_tokens=False).ids
            if not tokens:
                if self._bos is None:
                    raise DSEEError(f"prompts[{i}] is empty and the model has no BOS token to start from")
                tokens = [self._bos]
            if limit and len(tokens) + config.max_new_tokens > limit:
                room = limit - len(tokens)
                fix = f"pass max_new_tokens={room} or less" if room > 0 else "shorten the prompt"
                raise DSEEError(
                    f"prompts[{i}] has {len(tokens)} tokens, and with max_new_tokens={config.max_new_tokens} it "
                    f"goes beyond the model's {limit} positions: {fix}"
                )
            ids.append(tokens)
        return ids
