"""manifest.json, the record dsee-export writes beside every engine: what it was exported from, for which task and
runtime, its geometry, and how it was checked. The Engine, dsee-bench and the CLIs read engines through it.

A failed export writes it too, with `status: "failed"`, the error and everything known up to the failure, so
that it can be inspected; nothing reads a failed engine as a complete one.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .errors import DSEEError
from .tasks import get_task

FILE = "manifest.json"
FORMAT_VERSION = 3
# Version 2 (dsee-deploy before the Manifest class) has the same keys less some added since; it reads as is.
READABLE = (2, FORMAT_VERSION)


@dataclass
class Manifest:
    source: str = field(metadata={"help": "The checkpoint or model directory exported, absolute."})
    task: str = field(metadata={"help": "The task kind (dsee_deploy.tasks)."})
    architecture: str = field(metadata={"help": "The model_type (dsee_deploy.architectures)."})
    max_length: int = field(
        metadata={"help": "Tokens the model was tuned with: serving and evaluation truncate there."}
    )
    format: str = "onnx"
    engine: str = field(default="model.onnx", metadata={"help": "The engine file, relative."})
    precision: str = "fp32"
    opset: int = 18
    hidden_size: int | None = None
    head_size: int | None = None
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    layers: list[dict] = field(default_factory=list, metadata={"help": "Per layer: heads, ffn, sparsity."})
    parameters: dict = field(default_factory=dict, metadata={"help": "torch, onnx."})
    flops: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    metric: str = field(default="", metadata={"help": "The metric that selected the checkpoint."})
    positive_label: str = field(default="", metadata={"help": "The label binary F1 is computed for."})
    pooling: str | None = None
    normalize: bool | None = None
    optimization: dict = field(default_factory=lambda: {"applied": False})
    validation: dict = field(default_factory=lambda: {"skipped": True})
    validation_reduced: dict | None = field(
        default=None, metadata={"help": "The int8 or fp16 graph against PyTorch: names, shapes, agreement."}
    )
    quantization: dict | None = None
    validate_data: dict | None = None
    tensorrt: dict | None = None
    triton: dict | None = None
    status: str = field(default="complete", metadata={"help": "complete, or failed (with error)."})
    error: str | None = None
    export_seconds: float | None = None
    files: dict = field(default_factory=dict, metadata={"help": "sha256 of every file beside it."})
    format_version: int = FORMAT_VERSION

    @property
    def spec(self):
        return get_task(self.task)

    @property
    def heads(self) -> list[int]:
        return [layer["heads"] for layer in self.layers]

    @property
    def ffn(self) -> list[int]:
        return [layer["ffn"] for layer in self.layers]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, where: str = "manifest") -> Manifest:
        data = dict(data)
        version = data.get("format_version")
        if version not in READABLE:
            raise DSEEError(
                f"{where} has format version {version}; this dsee-deploy reads versions "
                f"{', '.join(map(str, READABLE))}: export the engine again with this version's dsee-export"
            )
        if (
            version == 2 and "files" not in data
        ):  # version 2 wrote the file hashes only when the export passed
            data.setdefault("status", "failed")
            data.setdefault("error", "an export by an earlier dsee-deploy that did not pass its checks")
        data["format_version"] = FORMAT_VERSION
        # Version 2 kept the int8 / fp16 check under validation_<precision>.
        reduced = data.pop(f"validation_{data.get('precision')}", None)
        data.setdefault("validation_reduced", reduced)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise DSEEError(f"{where} has unknown fields {unknown}: was it written by a newer dsee-deploy?")
        missing = [f.name for f in fields(cls)[:4] if f.name not in data]
        if missing:
            raise DSEEError(f"{where} lacks {', '.join(missing)}: export the engine again with dsee-export")
        return cls(**data)

    @classmethod
    def read(cls, engine_dir: str | Path) -> Manifest:
        """The manifest of a dsee-export directory, refused with the fix where it is absent, damaged or failed."""
        path = Path(engine_dir)
        if not path.is_dir():
            raise DSEEError(
                f"engine directory '{path}' does not exist: pass a directory written by dsee-export"
            )
        if not (path / FILE).is_file():
            raise DSEEError(
                f"'{path}' has no {FILE}, so it was not written by dsee-export: export the model with "
                f"dsee-export CKPT --output {path}"
            )
        try:
            data = json.loads((path / FILE).read_text())
        except (OSError, ValueError) as exc:
            raise DSEEError(f"'{path / FILE}' is not readable JSON ({exc}): export the engine again") from exc
        if not isinstance(data, dict):
            raise DSEEError(f"'{path / FILE}' is not a manifest: export the engine again")
        manifest = cls.from_dict(data, f"'{path / FILE}'")
        get_task(manifest.task)  # an unknown task is refused here
        if manifest.status != "complete":
            raise DSEEError(
                f"engine '{path}' is the output of a failed export ({manifest.error or 'no reason recorded'}): "
                f"fix what it says and export again"
            )
        return manifest

    def write(self, engine_dir: str | Path) -> Path:
        path = Path(engine_dir) / FILE
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path
