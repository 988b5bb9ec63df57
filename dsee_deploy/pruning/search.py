"""Layout search under a latency budget: how many heads and FFN neurons each layer keeps, chosen together across
layers, to keep the most importance for the predicted latency (a layer may lose everything).

Each layer's attention and FFN is one choice of how many units to keep; within it the highest-scoring units
are the ones kept, so its value is a prefix sum of its sorted scores and its cost the latency model's. That is
a multiple-choice knapsack; a Lagrangian relaxation solves it (for a price per millisecond, every choice is
made alone; the price is bisected until the layout fits), then the time left under the budget is spent greedily
on the additions worth the most importance per millisecond."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import DSEEError
from ..latency import LatencyModel


@dataclass
class Choice:
    """One layer's attention or FFN: keep k of its units, k in `ks`, for value[k] at cost[k] (ms, a saving)."""

    order: np.ndarray  # unit indices, best first
    value: np.ndarray  # importance kept with the k best units, k = 0..N
    cost: np.ndarray  # latency against dense with k units kept
    low: int  # the fewest it may keep

    def best(self, price: float) -> int:
        gain = self.value[self.low :] - price * self.cost[self.low :]
        return self.low + int(np.argmax(gain))


def search_layout(
    head_scores,
    ffn_scores,
    model: LatencyModel,
    target: float,
    min_heads: int = 0,
    min_ffn: int = 0,
) -> tuple[list[dict], float]:
    """The layout ({"kept_heads", "kept_ffn"} per layer) predicted to run at least `target` times faster than
    dense that keeps the most importance, and its predicted speed-up. Scores are (layers, units) arrays, higher
    is more important. An unreachable target is refused with the best reachable speed-up."""
    heads, ffn = np.asarray(head_scores, dtype=float), np.asarray(ffn_scores, dtype=float)
    budget = model.dense_ms / target  # ms
    floor = model.floor_ms(min_heads, min_ffn)
    if floor > budget:
        raise DSEEError(
            f"--target-speedup {target:g} cannot be reached: even keeping "
            f"{'nothing' if not (min_heads or min_ffn) else 'only --min-heads / --min-ffn'} in every layer, the "
            f"engine is predicted {model.dense_ms / floor:.2f}x faster than dense ({model.summary()}): ask for at "
            f"most {model.dense_ms / floor:.2f}"
        )
    choices = []
    for layer in range(heads.shape[0]):
        for scores, cost, low in (
            (heads[layer], model.head_cost, min_heads),
            (ffn[layer], model.ffn_cost, min_ffn),
        ):
            order = np.argsort(-scores, kind="stable")
            value = np.concatenate([[0.0], np.cumsum(np.clip(scores[order], 0, None))])
            choices.append(Choice(order, value, cost(np.arange(len(scores) + 1)), min(low, len(scores))))

    def latency(ks: list[int]) -> float:
        return model.dense_ms + sum(c.cost[k] for c, k in zip(choices, ks, strict=True))

    # The price of a millisecond: 0 keeps everything; a price above `high` keeps only the minimum.
    low_price, high_price = 0.0, 1.0
    while latency([c.best(high_price) for c in choices]) > budget:
        high_price *= 4
        if high_price > 1e30:
            break
    for _ in range(100):
        mid = (low_price + high_price) / 2
        if latency([c.best(mid) for c in choices]) > budget:
            low_price = mid
        else:
            high_price = mid
    ks = [c.best(high_price) for c in choices]
    if latency(ks) > budget:  # the minimum itself (checked above against the floor, so this cannot happen)
        ks = [c.low for c in choices]
    ks = _fill(choices, ks, budget - latency(ks))
    layout = [
        {
            "kept_heads": sorted(int(i) for i in choices[2 * layer].order[: ks[2 * layer]]),
            "kept_ffn": sorted(int(i) for i in choices[2 * layer + 1].order[: ks[2 * layer + 1]]),
        }
        for layer in range(heads.shape[0])
    ]
    kept = [[len(e["kept_heads"]) for e in layout], [len(e["kept_ffn"]) for e in layout]]
    return layout, model.speedup(*kept)


def _fill(choices: list[Choice], ks: list[int], left: float) -> list[int]:
    """Spend the `left` ms under the budget on one more unit at a time, the most importance per ms first."""
    ks = list(ks)
    while True:
        best, best_ratio = None, -1.0
        for i, (c, k) in enumerate(zip(choices, ks, strict=True)):
            if k + 1 >= len(c.value):
                continue
            extra = c.cost[k + 1] - c.cost[k]
            if extra <= left + 1e-12:
                ratio = (c.value[k + 1] - c.value[k]) / max(extra, 1e-12)
                if ratio > best_ratio:
                    best, best_ratio = i, ratio
        if best is None:
            return ks
        left -= choices[best].cost[ks[best] + 1] - choices[best].cost[ks[best]]
        ks[best] += 1
