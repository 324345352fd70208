"""Data sources: CSV/TSV/JSONL, label names or integers, text pairs, HF datasets on disk, and
the error messages for bad files (each names the file, the line or key, and the fix)."""

from __future__ import annotations

import builtins
import json
from pathlib import Path

import pytest

from fedlora_cli.data.sources import load_datasets, load_labeled_file
from fedlora_cli.errors import InputError
from fedlora_cli.recipe import DataConfig
from fedlora_cli.validate import check_recipe


def write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def csv_rows(n: int = 20, labels=("a", "b")) -> str:
    return "text,label\n" + "".join(f"sentence {i},{labels[i % len(labels)]}\n" for i in range(n))


def error_of(cfg: DataConfig) -> str:
    with pytest.raises(InputError) as info:
        load_datasets(cfg)
    return str(info.value)


# ------------------------------------------------------------------------------ good files
def test_csv_label_names_and_split(tmp_path):
    path = write(tmp_path / "d.csv", csv_rows(20))
    train, test = load_datasets(DataConfig(source=str(path), test_fraction=0.25))
    assert train.label_names == ["a", "b"]
    assert len(train) == 15 and len(test) == 5
    assert sorted(train.texts + test.texts) == sorted(f"sentence {i}" for i in range(20))
    again, _ = load_datasets(DataConfig(source=str(path), test_fraction=0.25))
    assert again.texts == train.texts


def test_integer_labels_sort_numerically_and_normalize(tmp_path):
    lines = ["text,label"] + [f"t{i},{[2, 10, 1][i % 3]}" for i in range(12)]
    path = write(tmp_path / "d.csv", "\n".join(lines) + "\n")
    test = write(tmp_path / "t.csv", "text,label\nx,010\ny,2\n")
    train, held = load_datasets(DataConfig(source=str(path), test_path=str(test)))
    assert train.label_names == ["1", "2", "10"]  # numeric order, not string order
    assert held.labels == [2, 1]  # "010" is label 10


def test_text_pairs_tsv_and_jsonl(tmp_path):
    tsv = write(tmp_path / "p.tsv", "premise\thypothesis\tlabel\n" + "".join(f"p{i}\th{i}\t{i % 2}\n" for i in range(10)))
    train, test = load_datasets(DataConfig(source=str(tsv), text_column="premise", text_pair_column="hypothesis", test_fraction=0.2))
    assert all(t.startswith("p") for t in train.texts) and all(h.startswith("h") for h in train.text_pairs)
    assert [t[1:] for t in train.texts] == [h[1:] for h in train.text_pairs]
    jsonl = write(tmp_path / "d.jsonl", "".join(json.dumps({"sentence": f"s{i}", "y": i % 3}) + "\n" for i in range(12)))
    train, _ = load_datasets(DataConfig(source=str(jsonl), text_column="sentence", label_column="y"))
    assert train.label_names == ["0", "1", "2"]


def test_headerless_csv_with_column_names(tmp_path):
    path = write(tmp_path / "d.csv", "".join(f"row {i},{'xy'[i % 2]}\n" for i in range(10)))
    train, test = load_datasets(DataConfig(source=str(path), column_names=["text", "label"]))
    assert len(train) + len(test) == 10 and train.label_names == ["x", "y"]


def test_labeled_file_uses_training_label_names(tmp_path):
    path = write(tmp_path / "other.csv", "text,label\nq,b\nr,a\n")
    data = load_labeled_file(path, DataConfig(), ["a", "b"])
    assert data.labels == [1, 0]
    unknown = write(tmp_path / "unknown.csv", "text,label\nq,c\n")
    with pytest.raises(InputError, match=r"unknown\.csv.*\['c'\]"):
        load_labeled_file(unknown, DataConfig(), ["a", "b"])


# ------------------------------------------------------------------------------ bad files
def test_missing_file(tmp_path):
    text = error_of(DataConfig(source=str(tmp_path / "nope.csv")))
    assert "data file not found" in text and "nope.csv" in text and "fix the path" in text


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_file(tmp_path, content):
    path = write(tmp_path / "empty.csv", content)
    assert f"data file is empty: {path}" in error_of(DataConfig(source=str(path)))


def test_header_without_rows(tmp_path):
    path = write(tmp_path / "h.csv", "text,label\n")
    assert f"header but no rows: {path}" in error_of(DataConfig(source=str(path)))


def test_missing_column_names_the_key_file_and_columns(tmp_path):
    path = write(tmp_path / "d.csv", "txt,label\nhello,a\nbye,b\n")
    text = error_of(DataConfig(source=str(path)))
    assert "data.text_column" in text and "'text'" in text and str(path) in text
    assert "did you mean 'txt'" in text and "columns: txt, label" in text
    text = error_of(DataConfig(source=str(write(tmp_path / "e.csv", csv_rows(4))), text_pair_column="second"))
    assert "data.text_pair_column: column 'second'" in text


def test_empty_cell_names_the_row(tmp_path):
    path = write(tmp_path / "d.csv", "text,label\nhello,a\n,b\nbye,a\n")
    assert f"{path}, row 3: column 'text' is empty" in error_of(DataConfig(source=str(path)))


def test_labels_only_in_test(tmp_path):
    train = write(tmp_path / "train.csv", csv_rows(10))
    test = write(tmp_path / "test.csv", "text,label\nx,a\ny,zebra\n")
    text = error_of(DataConfig(source=str(train), test_path=str(test)))
    assert str(test) in text and "['zebra']" in text and "only in the test data" in text


def test_encoding_error_names_file_and_line(tmp_path):
    path = write(tmp_path / "latin1.csv", "text,label\nfine,a\ncaf\xe9,b\n".encode("latin-1"))
    text = error_of(DataConfig(source=str(path)))
    assert f"{path}, line 3: not valid UTF-8" in text and "re-save the file as UTF-8" in text


def test_utf8_bom_is_accepted(tmp_path):
    path = write(tmp_path / "bom.csv", "\ufeff" + csv_rows(10))
    train, _ = load_datasets(DataConfig(source=str(path)))
    assert train.label_names == ["a", "b"]


def test_bad_jsonl_lines(tmp_path):
    path = write(tmp_path / "d.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", label}\n')
    assert f"{path}, line 2: not valid JSON" in error_of(DataConfig(source=str(path)))
    path = write(tmp_path / "list.jsonl", '{"text": "a", "label": "x"}\n["b", "y"]\n')
    assert f"{path}, line 2: expected a JSON object per line" in error_of(DataConfig(source=str(path)))


def test_unsupported_suffix_and_single_label(tmp_path):
    text = error_of(DataConfig(source=str(write(tmp_path / "d.xlsx", "x"))))
    assert "unsupported type '.xlsx'" in text and ".csv, .tsv or .jsonl" in text
    text = error_of(DataConfig(source=str(write(tmp_path / "one.csv", csv_rows(6, labels=("a",))))))
    assert "only one label" in text


# ------------------------------------------- files read as streams by csv/json, not line by line
def test_jsonl_strings_may_hold_unicode_line_separators_and_form_feeds(tmp_path):
    texts = ["first\u2028second", "para\u2029graph", "next\x85line", "page\x0cbreak", "tab\there"]
    rows = [{"text": t, "label": "ab"[i % 2]} for i, t in enumerate(texts)]
    path = write(tmp_path / "d.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    assert "\u2028" in path.read_text(encoding="utf-8")  # raw in the file, as JSON allows
    data = load_labeled_file(path, DataConfig(), ["a", "b"])
    assert data.texts == texts and data.labels == [0, 1, 0, 1, 0]


def test_csv_quoted_fields_keep_newlines_form_feeds_and_commas(tmp_path):
    path = write(tmp_path / "d.csv", 'text,label\n"two\nlines",a\n"page\x0cbreak",b\n"x, y and ""z""",a\nplain,b\n')
    data = load_labeled_file(path, DataConfig(), ["a", "b"])
    assert data.texts == ["two\nlines", "page\x0cbreak", 'x, y and "z"', "plain"]
    assert data.labels == [0, 1, 0, 1]


def test_rows_after_a_multiline_field_are_numbered_by_their_line(tmp_path):
    path = write(tmp_path / "d.csv", 'text,label\n"two\nlines",a\n,b\n')
    assert f"{path}, row 4: column 'text' is empty" in error_of(DataConfig(source=str(path)))


@pytest.mark.parametrize(
    "row, message",
    [
        ("hello, world,a", "row 3: 3 fields, but the header has 2 (text, label); quote a field that contains a comma"),
        ("lonely", "row 3: 1 field, but the header has 2 (text, label)"),
        ('"never closed,a\nbye,b', "not valid CSV (unexpected end of data)"),
    ],
)
def test_a_csv_row_that_does_not_fit_the_header_is_reported(tmp_path, row, message):
    path = write(tmp_path / "d.csv", f"text,label\nfine,b\n{row}\n")
    assert f"{path}, " in error_of(DataConfig(source=str(path))) and message in error_of(DataConfig(source=str(path)))


def test_a_duplicate_header_is_reported_as_such(tmp_path):
    path = write(tmp_path / "d.csv", "text,label,label\nhello,a,b\nbye,b,a\n")
    assert f"{path}: the header names 'label' more than once" in error_of(DataConfig(source=str(path)))
    headerless = write(tmp_path / "h.csv", "hello,a\nbye,b\n")
    text = error_of(DataConfig(source=str(headerless), column_names=["text", "text"]))
    assert "data.column_names names 'text' more than once" in text


def test_check_recipe_reports_data_problem_with_recipe_source(tmp_path):
    bad = write(tmp_path / "bad.csv", "words,label\nx,a\n")
    recipe = write(tmp_path / "r.yaml", f"data: {{source: {bad}}}\nfederation: {{clients: 2, clients_per_round: 1}}\n")
    with pytest.raises(InputError) as info:
        check_recipe(str(recipe))
    assert info.value.source == str(recipe)
    assert any("data.text_column" in p for p in info.value.problems)


# -------------------------------------------------------------------- HF datasets on disk
@pytest.fixture
def hf(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.disable_progress_bars()
    features = datasets.Features({"sentence": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos", "neutral"])})

    def make(n, offset=0):
        return datasets.Dataset.from_dict(
            {"sentence": [f"s{i + offset}" for i in range(n)], "label": [i % 3 for i in range(n)]}, features=features
        )

    return datasets, make


def test_hf_datasetdict_uses_its_test_split_and_classlabel_order(hf, tmp_path):
    datasets, make = hf
    datasets.DatasetDict(train=make(30), test=make(6, offset=100)).save_to_disk(str(tmp_path / "dd"))
    train, test = load_datasets(DataConfig(source=str(tmp_path / "dd"), text_column="sentence"))
    assert train.label_names == ["neg", "pos", "neutral"]  # declared order, not sorted
    assert len(train) == 30 and len(test) == 6
    assert test.texts[0] == "s100" and test.labels[:3] == [0, 1, 2]


def test_hf_single_dataset_is_split_like_a_file(hf, tmp_path):
    datasets, make = hf
    make(20).save_to_disk(str(tmp_path / "single"))
    train, test = load_datasets(DataConfig(source=str(tmp_path / "single"), text_column="sentence", test_fraction=0.25))
    assert len(train) == 15 and len(test) == 5


def test_hf_validation_split_and_test_path_dir(hf, tmp_path):
    datasets, make = hf
    datasets.DatasetDict(train=make(12), validation=make(3, offset=50)).save_to_disk(str(tmp_path / "dv"))
    _, test = load_datasets(DataConfig(source=str(tmp_path / "dv"), text_column="sentence"))
    assert test.texts == ["s50", "s51", "s52"]
    make(4, offset=70).save_to_disk(str(tmp_path / "other"))
    _, test = load_datasets(DataConfig(source=str(tmp_path / "dv"), text_column="sentence", test_path=str(tmp_path / "other")))
    assert test.texts == ["s70", "s71", "s72", "s73"]


def test_hf_errors(hf, tmp_path):
    datasets, make = hf
    datasets.DatasetDict(validation=make(6)).save_to_disk(str(tmp_path / "notrain"))
    text = error_of(DataConfig(source=str(tmp_path / "notrain"), text_column="sentence"))
    assert "needs a 'train' split" in text and "validation" in text
    (tmp_path / "plain").mkdir()
    text = error_of(DataConfig(source=str(tmp_path / "plain")))
    assert "not a Hugging Face dataset saved with" in text and "plain" in text
    make(6).save_to_disk(str(tmp_path / "ok"))
    text = error_of(DataConfig(source=str(tmp_path / "ok")))
    assert "data.text_column: column 'text'" in text and "columns: sentence, label" in text


def test_hf_without_datasets_package_says_how_to_install(tmp_path, monkeypatch):
    (tmp_path / "saved").mkdir()
    real_import = builtins.__import__

    def no_datasets(name, *args, **kwargs):
        if name == "datasets" or name.startswith("datasets."):
            raise ImportError("No module named 'datasets'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_datasets)
    text = error_of(DataConfig(source=str(tmp_path / "saved")))
    assert "pip install datasets" in text and "saved" in text
