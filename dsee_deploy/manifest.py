"""manifest.json, the record dsee-export writes beside every engine: what it was exported from, for which task and
runtime, its geometry, and how it was checked. The Engine, dsee-bench and the CLIs read engines through it.

A failed export writes it too, with `status: "failed"`, the error and everything known up to the failure, so
that it can be inspected; nothing reads a failed engine as a complete one.

Reading an engine verifies it (`Manifest.read(verify=True)`, the default of Engine.load, dsee-serve and
dsee-bench): every file the manifest lists has its sha256, every path stays inside the directory, and the
manifest's own `digest` matches its content. That catches damaged, swapped or edited files and a manifest of
another engine; it is not a signature (whoever can write the directory can rewrite the hashes too).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .errors import DSEEError
from .tasks import get_task

FILE = "manifest.json"
FORMAT_VERSION = 4
# Version 2 (dsee-deploy before the Manifest class) has the same keys less some added since; it reads as is.
# Version 3 has no digest of its own content (its files are still verified).
READABLE = (2, 3, FORMAT_VERSION)
# Files every engine directory holds besides the engine file (Engine.load reads them).
REQUIRED = ("tokenizer.json", "config.json")


def speed_target_of(speedup: dict | None) -> dict | None:
    """The speed target in a manifest's `speedup` record, None without one. Read here, not from the record:
    manifests of format 4 written before 2026-12-08 name its fields target, predicted and target_precision
    (renaming them on reading would break their digest)."""
    record = speedup or {}
    if "target_speedup" in record:
        return {k: record[k] for k in ("target_speedup", "predicted_speedup", "precision")}
    if "target" in record:
        return {
            "target_speedup": record["target"],
            "predicted_speedup": record["predicted"],
            "precision": record["target_precision"],
        }
    return None


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
    cache: list | None = field(
        default=None,
        metadata={
            "help": "A causal LM's KV cache, per layer: its heads and the shape of its past keys and values."
        },
    )
    speedup: dict | None = field(
        default=None, metadata={"help": "Measured against the dense engine; the speed target, if any."}
    )
    status: str = field(default="complete", metadata={"help": "complete, or failed (with error)."})
    error: str | None = None
    export_seconds: float | None = None
    files: dict = field(default_factory=dict, metadata={"help": "sha256 of every file beside it."})
    digest: str | None = field(default=None, metadata={"help": "sha256 of this manifest's other fields."})
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

    @property
    def speed_target(self) -> dict | None:
        """{"target_speedup", "predicted_speedup", "precision"} of an engine pruned to a speed target, None for
        others (speed_target_of)."""
        return speed_target_of(self.speedup)

    def content_digest(self) -> str:
        # `speedup` and `cache` came within format 4: a manifest without them keeps the digest it was written with.
        data = {
            k: v
            for k, v in self.to_dict().items()
            if k != "digest" and not (k in ("speedup", "cache") and v is None)
        }
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()

    def failures(self) -> list[str]:
        """The checks this engine failed, as recorded (a failed export, or a validation that did not pass)."""
        failed = [self.error or "the export failed"] if self.status != "complete" else []
        checks = (
            ("validation", "fp32 validation against PyTorch"),
            ("validation_reduced", f"{self.precision} validation against PyTorch"),
            ("validate_data", "the --validate-data metric gate"),
        )
        for name, what in checks:
            record = getattr(self, name)
            if isinstance(record, dict) and record.get("passed") is False:
                failed.append(f"{what} did not pass")
        return failed

    @classmethod
    def read(cls, engine_dir: str | Path, verify: bool = True) -> Manifest:
        """The manifest of a dsee-export directory, refused with the fix where it is absent, damaged or failed.
        `verify` checks the files against their recorded sha256 (see the module's notes; it reads every file
        once: about a second per GB here)."""
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
        failures = manifest.failures()
        if failures:
            raise DSEEError(
                f"engine '{path}' failed its export checks ({'; '.join(failures)}): it is not served or "
                f"benchmarked; fix what the export said and export again (dsee-export CKPT --output {path} "
                f"--overwrite)"
            )
        for name in (manifest.engine, *manifest.files):
            inside(path, name, f"'{path / FILE}'")
        if verify:
            manifest.verify(path)
        return manifest

    def verify(self, engine_dir: Path) -> None:
        """Refuse a manifest edited since export, one that does not list the files an engine needs, and listed
        files that are missing or changed."""
        where = f"'{engine_dir / FILE}'"
        fix = f"export the engine again (dsee-export CKPT --output {engine_dir} --overwrite)"
        if self.digest is not None and self.digest != self.content_digest():
            raise DSEEError(f"{where} was edited after export (its digest does not match its content): {fix}")
        if not self.files:
            raise DSEEError(f"{where} lists no file hashes, so the engine cannot be verified: {fix}")
        unlisted = sorted({self.engine, *REQUIRED} - set(self.files))
        if unlisted:
            raise DSEEError(f"{where} does not list {unlisted[0]}, so it belongs to another engine: {fix}")
        for name, expected in sorted(self.files.items()):
            file = engine_dir / name
            if not file.is_file():
                raise DSEEError(f"engine '{engine_dir}' is missing {name}: {fix}")
            if file_sha256(file) != expected:
                raise DSEEError(
                    f"engine '{engine_dir}': {name} is not the file that was exported (its sha256 differs from "
                    f"the manifest's): {fix}, or pass verify=False / --no-verify if you changed it on purpose"
                )

    def write(self, engine_dir: str | Path) -> Path:
        self.digest = self.content_digest()
        path = Path(engine_dir) / FILE
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path


def inside(engine_dir: Path, name: str, where: str) -> Path:
    """`engine_dir`/`name`, refused unless it stays inside the directory (no absolute path, no '..')."""
    root = engine_dir.resolve()
    resolved = (engine_dir / name).resolve()
    if Path(name).is_absolute() or (resolved != root and root not in resolved.parents):
        raise DSEEError(
            f"{where} names '{name}', which is outside the engine directory: an engine reads only its own files; "
            f"export it again"
        )
    return resolved


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
