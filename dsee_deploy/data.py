"""Reading training data with `datasets`: local .tsv/.csv/.jsonl/.json/.txt files or a hub dataset name,
GLUE column names recognised, labels mapped to ids, tokenized for the task."""

from __future__ import annotations

import csv
import math
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .errors import DSEEError
from .tasks import Classification, Regression, get_task

# (text, pair) column names of GLUE-style files, tried in order; pairs first so that `question`/`sentence`
# (QNLI) wins over a lone `sentence`.
TEXT_COLUMNS = [
    ("sentence1", "sentence2"),
    ("question1", "question2"),
    ("question", "sentence"),
    ("premise", "hypothesis"),
    ("#1 String", "#2 String"),
    ("sentence_A", "sentence_B"),  # SICK
    ("anchor", "positive"),  # sentence-transformers' pair datasets
    ("sentence", None),
    ("text", None),
]
PAIR = "pair_"  # a text pair's second text, tokenized on its own: pair_input_ids, pair_attention_mask, ...
LABEL_COLUMNS = ["label", "labels", "Quality", "score", "relatedness_score"]
_READERS = {".tsv": "csv", ".csv": "csv", ".jsonl": "json", ".json": "json", ".txt": "text"}


@dataclass
class Task:
    """What the model learns and how its data is laid out; saved in the checkpoint."""

    kind: str = Classification.kind
    text_column: str | None = None
    text_pair_column: str | None = None
    label_column: str | None = None
    label_names: list[str] = field(default_factory=list)
    max_length: int = 128
    # The metric that selected the checkpoint, and for F1 the label it is computed for (binary tasks): what
    # dsee-export --validate-data, the int8/fp16 gate and dsee-bench report beside accuracy.
    metric: str = ""
    positive_label: str = ""
    # Feature extraction: how token states become one sentence embedding.
    pooling: str = "mean"
    normalize: bool = False
    # The label values in the data, in label order, where --label-names gave them other names.
    label_values: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.spec = get_task(self.kind)  # unknown kinds fail here
        if self.spec.metrics:
            self.metric = self.spec.check_metric(self.metric)
        if not self.positive_label and len(self.label_names) == 2:
            self.positive_label = self.label_names[1]

    @property
    def num_labels(self) -> int:
        return len(self.label_names) if self.label_names else 1

    @property
    def label_index(self) -> dict[str, int]:
        """Label id of each label name, and of each value in the data where the labels were renamed."""
        return {
            **{v: i for i, v in enumerate(self.label_values)},
            **{n: i for i, n in enumerate(self.label_names)},
        }

    @property
    def positive(self) -> int:
        """The index of the label binary F1 is computed for."""
        return self.label_names.index(self.positive_label) if self.positive_label in self.label_names else 1

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Task:
        """A task record of any dsee-deploy version (fields added since default as they did then)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def read_table(source: str, flag: str, split: str = "train"):
    """A `datasets.Dataset` from a local file, or from the hub where `source` is not a local path."""
    import datasets

    path = Path(source)
    suffix = path.suffix.lower()
    if path.exists():
        if suffix not in _READERS:
            raise DSEEError(
                f"{flag} '{source}' has an unsupported extension '{suffix}': use .tsv, .csv, .jsonl, .json or .txt"
            )
        kwargs: dict = {}
        reader = _READERS[suffix]
        if suffix == ".txt" and _tab_separated(path):
            print(
                f"{flag} '{source}': a .txt file reads as plain text (language modelling), but its first lines are "
                f"tab-separated columns: reading it as a .tsv table (rename it .tsv to say so)",
                file=sys.stderr,
            )
            suffix, reader = ".tsv", "csv"
        if suffix == ".tsv":
            # GLUE TSVs hold raw quotes inside sentences: read them literally.
            kwargs = {"delimiter": "\t", "quoting": csv.QUOTE_NONE}
        if suffix in (".tsv", ".csv"):
            check_delimited(path, flag, **kwargs)
        try:
            return datasets.load_dataset(reader, data_files=str(path), split="train", **kwargs)
        except Exception as exc:  # datasets raises many types; the user needs the file name and the cause
            raise DSEEError(f"{flag} '{source}' could not be read as {suffix[1:]}: {exc}") from exc
    if suffix in _READERS or "/" in source and not _looks_like_hub_id(source):
        raise DSEEError(f"{flag} file '{source}' does not exist: check the path")
    name, _, config = source.partition(":")
    try:
        return datasets.load_dataset(name, config or None, split=split)
    except Exception as exc:
        raise DSEEError(
            f"{flag} '{source}' is neither a local file nor a hub dataset that could be loaded ({exc}): "
            f"pass a .tsv/.csv/.jsonl/.json/.txt file, or NAME[:CONFIG] of a hub dataset where a network exists"
        ) from exc


def _tab_separated(path: Path) -> bool:
    """Whether a .txt file's first two lines are the same number (> 1) of tab-separated fields."""
    try:
        with path.open(encoding="utf-8", errors="replace") as f:
            first, second = f.readline(), f.readline()
    except OSError:
        return False
    return "\t" in first and first.count("\t") == second.count("\t")


def check_delimited(path: Path, flag: str, delimiter: str = ",", quoting: int = csv.QUOTE_MINIMAL) -> None:
    """Read a .tsv / .csv once with the csv module before datasets does, for the errors datasets reports as
    "An error occurred while generating the dataset": the encoding, an empty or header-only file, and a row
    with another number of fields than the header, each with the file and the line."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = csv.reader(f, delimiter=delimiter, quoting=quoting)
            header = next(rows, None)
            if not header:
                raise DSEEError(f"{flag} '{path}' is empty: it needs a header line and rows")
            count = 0
            for row in rows:
                if not row:
                    continue  # blank lines are skipped, as datasets skips them
                count += 1
                if len(row) != len(header):
                    raise DSEEError(
                        f"{flag} '{path}' line {rows.line_num}: expected {len(header)} fields (as the header "
                        f"{header}), saw {len(row)}: fix the line (a {repr(delimiter)} inside a text?)"
                    )
    except UnicodeDecodeError:
        _not_utf8(path, flag)
    if count == 0:
        raise DSEEError(f"{flag} '{path}' has a header ({', '.join(header)}) and no rows: add the data")


def _not_utf8(path: Path, flag: str) -> None:
    """Name the first line of `path` that is not UTF-8 (the text reader's error knows only a buffer offset)."""
    with path.open("rb") as raw:
        for number, line in enumerate(raw, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DSEEError(
                    f"{flag} '{path}' line {number} is not UTF-8 ({exc.reason} at byte {exc.start}): save the "
                    f"file as UTF-8"
                ) from None
    raise DSEEError(f"{flag} '{path}' is not UTF-8: save the file as UTF-8")


def missing_labels(ds, label: str, source: str) -> None:
    """Refuse rows without a label (empty, NaN), naming them: datasets reads them as None."""
    rows = [
        i
        for i, v in enumerate(ds[label])
        if v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and not v.strip())
    ]
    if rows:
        first = 2 if Path(source).suffix.lower() in (".tsv", ".csv") else 1  # line of data row 0
        lines = ", ".join(str(i + first) for i in rows[:5]) + (", ..." if len(rows) > 5 else "")
        raise DSEEError(
            f"'{source}' has {len(rows)} row(s) without a label in column '{label}' (line {lines}): fill them "
            f"in or remove them"
        )


def _looks_like_hub_id(source: str) -> bool:
    return source.count("/") == 1 and not source.startswith((".", "/", "~"))


def resolve_columns(ds, source: str, text: str | None, pair: str | None, label: str | None) -> tuple:
    """(text, pair, label) column names: the ones given, checked, or the GLUE names found in `ds`."""
    columns = list(ds.column_names)
    for flag, name in (("--text-column", text), ("--text-pair-column", pair), ("--label-column", label)):
        if name is not None and name not in columns:
            raise DSEEError(
                f"{flag} '{name}' is not a column of '{source}' (columns: {', '.join(columns)}): pass one of them"
            )
    if text is None:
        found = next(((t, p) for t, p in TEXT_COLUMNS if t in columns and (p is None or p in columns)), None)
        if found is None:
            raise DSEEError(
                f"'{source}' has no text column this tool recognises (columns: {', '.join(columns)}): "
                f"pass --text-column (and --text-pair-column for sentence pairs)"
            )
        text, found_pair = found
        pair = pair if pair is not None else found_pair
    if label is None:
        label = next((c for c in LABEL_COLUMNS if c in columns), None)
        if label is None:
            raise DSEEError(
                f"'{source}' has no label column this tool recognises (columns: {', '.join(columns)}): "
                f"pass --label-column"
            )
    for flag, name in (("--text-column", text), ("--text-pair-column", pair)):
        values = [v for v in ds[name][:100] if v is not None] if name else []
        if values and not all(isinstance(v, str) for v in values):
            raise DSEEError(
                f"{flag} '{name}' of '{source}' holds {type(values[0]).__name__} values, not text (columns: "
                f"{', '.join(columns)}): pass the column with the sentences"
            )
    return text, pair, label


def infer_kind(ds, label: str) -> str:
    """Regression where labels are non-integer numbers (STS-B scores), classification otherwise."""
    values = ds[label][:1000]
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        if any(isinstance(v, float) and not float(v).is_integer() for v in values):
            return Regression.kind
    return Classification.kind


def label_names_of(ds, label: str) -> list[str]:
    """Sorted label names: numeric labels in numeric order, strings alphabetically."""
    values = set(ds.unique(label))
    if all(isinstance(v, (int, float)) for v in values):
        return [str(int(v)) for v in sorted(values)]
    return sorted(str(v) for v in values)


def encode(ds, tokenizer, task: Task, source: str):
    """Tokenize `ds` for `task` (labels as ids), dropping the raw columns."""
    if task.spec.language_model:
        return _encode_lm(ds, tokenizer, task)
    if task.spec.pair_similarity:
        return _encode_texts(ds, tokenizer, task, source)
    index = task.label_index

    def to_label(value):
        return label_id(value, task, index, source)

    for col in (task.text_column, task.text_pair_column, task.label_column):
        if col is not None and col not in ds.column_names:
            raise DSEEError(
                f"'{source}' has no column '{col}' (columns: {', '.join(ds.column_names)}): "
                f"evaluation data must have the training data's columns"
            )
    ds = ds.filter(lambda row: row[task.label_column] is not None and row[task.text_column] is not None)

    def tokenize(batch):
        pairs = batch[task.text_pair_column] if task.text_pair_column else None
        enc = tokenizer(batch[task.text_column], pairs, truncation=True, max_length=task.max_length)
        enc["labels"] = [to_label(v) for v in batch[task.label_column]]
        return enc

    return ds.map(
        tokenize, batched=True, remove_columns=ds.column_names, desc=f"tokenizing {Path(source).name}"
    )


def _encode_texts(ds, tokenizer, task: Task, source: str):
    """Sentence embeddings: the text, and the pair's second text tokenized on its own (as pair_*: two texts, not
    one input), and the score where the data has one."""
    used = [c for c in (task.text_column, task.text_pair_column, task.label_column) if c]
    for col in used:
        if col not in ds.column_names:
            raise DSEEError(
                f"'{source}' has no column '{col}' (columns: {', '.join(ds.column_names)}): evaluation data "
                f"must have the training data's columns"
            )
    ds = ds.filter(lambda row: all(row[c] is not None for c in used))

    def tokenize(batch):
        enc = dict(tokenizer(batch[task.text_column], truncation=True, max_length=task.max_length))
        if task.text_pair_column:
            pair = tokenizer(batch[task.text_pair_column], truncation=True, max_length=task.max_length)
            enc.update({PAIR + k: v for k, v in pair.items()})
        if task.label_column:
            enc["labels"] = [_score(v, source, task.label_column) for v in batch[task.label_column]]
        return enc

    return ds.map(
        tokenize, batched=True, remove_columns=ds.column_names, desc=f"tokenizing {Path(source).name}"
    )


def _score(value, source: str, column: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise DSEEError(
            f"'{source}' has score {value!r} in column '{column}', which is not a number: fix the file"
        ) from None


def _encode_lm(ds, tokenizer, task: Task):
    """Causal LM: tokenize lines, concatenate, and cut into blocks of max_length tokens."""
    column = task.text_column or ds.column_names[0]
    block = task.max_length

    def tokenize(batch):
        return tokenizer([t + tokenizer.eos_token for t in batch[column] if t.strip()])

    def group(batch):
        ids = [tok for seq in batch["input_ids"] for tok in seq]
        total = len(ids) // block * block
        chunks = [ids[i : i + block] for i in range(0, total, block)]
        return {
            "input_ids": chunks,
            "attention_mask": [[1] * block for _ in chunks],
            "labels": [c[:] for c in chunks],
        }

    tokenized = ds.map(tokenize, batched=True, remove_columns=ds.column_names, desc="tokenizing")
    grouped = tokenized.map(group, batched=True, remove_columns=tokenized.column_names, desc="grouping")
    if len(grouped) == 0:
        raise DSEEError(
            f"text is shorter than one block of {block} tokens: pass more text or a smaller --max-length"
        )
    return grouped


def label_id(value, task: Task, index: dict[str, int], source: str, flag: str = ""):
    """The id of a label value (its class index; the number itself for regression)."""
    if task.spec.continuous_labels:
        return float(value)
    key = str(int(value)) if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)
    if key not in index:
        raise DSEEError(
            f"{flag + ' ' if flag else ''}'{source}' has label '{value}', which the training data does not have "
            f"(labels: {', '.join(task.label_names)}): fix the file, or pass data of the task the model was "
            f"tuned on"
        )
    return index[key]


def labelled_texts(ds, task: Task, source: str, flag: str) -> tuple[list, object]:
    """(texts or (text, pair) tuples, label ids) of `ds` in the task's columns, or the GLUE names found in it
    where the task records none (a plain transformers model)."""
    import numpy as np

    if task.text_column and task.text_column in ds.column_names:
        text, pair, label = task.text_column, task.text_pair_column, task.label_column
        for col in (pair, label):
            if col is not None and col not in ds.column_names:
                raise DSEEError(
                    f"{flag} '{source}' has no column '{col}' (columns: {', '.join(ds.column_names)}): pass "
                    f"data with the training data's columns"
                )
    else:
        text, pair, label = resolve_columns(ds, source, None, None, None)
    if task.spec.pair_similarity and not pair:
        raise DSEEError(
            f"{flag} '{source}' has one text column ('{text}'); {task.kind} is scored on pairs of texts with a "
            f"relatedness score (two text columns and a score column, as SICK or STS-B)"
        )
    ds = ds.filter(lambda row: row[label] is not None and row[text] is not None)
    texts = list(zip(ds[text], ds[pair], strict=True)) if pair else list(ds[text])
    index = task.label_index
    labels = np.asarray([label_id(v, task, index, source, flag) for v in ds[label]])
    return texts, labels
