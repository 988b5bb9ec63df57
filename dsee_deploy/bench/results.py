"""results.json as a typed, versioned record (its fields are described in bench/report.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..errors import DSEEError

SCHEMA = "dsee-bench/2"
# dsee-bench/1 named a variant's speed target and prediction `target` and `predicted`
READS = ("dsee-bench/1", SCHEMA)


@dataclass
class BenchResults:
    """A dsee-bench run: the machine, the method, the variants, their timings and speed-ups at every shape, and
    (where measured) the task metric, generation speed, perplexity and an operator profile. Rows are dicts
    whose keys bench/report.py lists."""

    machine: dict
    threads: int
    versions: dict
    method: dict
    primary_baseline: str
    variants: list[dict]
    timings: list[dict] = field(default_factory=list)
    speedups: list[dict] = field(default_factory=list)
    title: str = ""
    accuracy: dict | None = None
    generation: dict | None = None
    perplexity: dict | None = None
    profile: dict | None = None
    texts: dict | None = None  # sentence embeddings timed texts in, beside sentence-transformers' backends
    schema: str = SCHEMA
    output: Path | None = field(default=None, metadata={"saved": False})  # where it was written, if anywhere

    def speedup(
        self, variant: str, baseline: str | None = None, batch: int | None = None, seq: int | None = None
    ) -> float:
        """The median speed-up of `variant` against `baseline` (default: the primary one) at a shape (default:
        the first measured)."""
        baseline = baseline or self.primary_baseline
        rows = [s for s in self.speedups if s["variant"] == variant and s["baseline"] == baseline]
        rows = [
            s for s in rows if (batch is None or s["batch"] == batch) and (seq is None or s["seq"] == seq)
        ]
        if not rows:
            raise DSEEError(f"no speed-up of '{variant}' against '{baseline}' at that shape in these results")
        return rows[0]["median"]

    def metric(self, variant: str) -> dict | None:
        """The variant's task metric and accuracy (with eval_data)."""
        return (self.accuracy or {}).get(variant)

    def to_dict(self) -> dict:
        """results.json: the sections measured (accuracy, generation, perplexity, profile only where run)."""
        saved = (f.name for f in fields(self) if f.metadata.get("saved", True))
        return {name: getattr(self, name) for name in saved if getattr(self, name) is not None}

    @property
    def data(self) -> dict:
        """results.json as a dict (what this class held before it was typed)."""
        return self.to_dict()

    @classmethod
    def from_dict(cls, data: dict, where: str = "results.json") -> BenchResults:
        data = dict(data)
        schema = data.get("schema")
        if schema not in READS:
            raise DSEEError(
                f"{where} has schema {schema!r}; this dsee-deploy reads {', '.join(READS)}: run dsee-bench again"
            )
        if schema == "dsee-bench/1":
            renamed = {"target": "target_speedup", "predicted": "predicted_speedup"}
            data["variants"] = [{renamed.get(k, k): v for k, v in row.items()} for row in data["variants"]]
            data["schema"] = SCHEMA
        known = {f.name for f in fields(cls) if f.metadata.get("saved", True)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise DSEEError(f"{where} has unknown fields {unknown}: was it written by a newer dsee-deploy?")
        try:
            return cls(**data)
        except TypeError as exc:
            raise DSEEError(
                f"{where} is not a complete dsee-bench result ({exc}): run dsee-bench again"
            ) from exc

    @classmethod
    def read(cls, path: str | Path) -> BenchResults:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DSEEError(
                f"'{path}' cannot be read as JSON ({exc}): pass a dsee-bench results.json"
            ) from exc
        if not isinstance(data, dict):
            raise DSEEError(f"'{path}' is not a dsee-bench results.json")
        results = cls.from_dict(data, where=f"'{path}'")
        results.output = path.parent
        return results
