"""Model names are recipe input: loading never runs code shipped with a model and never
downloads; a name that is not here fails at once, saying how to get it (issue 17 items 4, 10)."""

from __future__ import annotations

import builtins
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedlora_cli.errors import InputError
from fedlora_cli.models import load_base_model, load_tokenizer

MARKER = "ran-shipped-code"


def custom_code_dir(tiny_model_dir: str, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the tiny model whose config and tokenizer name Python files of the directory
    (a model type transformers does not know), which leave a marker file when they run."""
    path = tmp_path / "custom"
    shutil.copytree(tiny_model_dir, path)
    marker = tmp_path / MARKER
    code = f"open({str(marker)!r}, 'w').close()\n"
    (path / "configuration_evil.py").write_text(code + "from transformers import BertConfig\nclass EvilConfig(BertConfig):\n    model_type = 'evil'\n")
    (path / "tokenization_evil.py").write_text(code + "from transformers import BertTokenizerFast\nclass EvilTokenizer(BertTokenizerFast):\n    pass\n")
    config = json.loads((path / "config.json").read_text())
    config.update(model_type="evil", auto_map={"AutoConfig": "configuration_evil.EvilConfig"})
    (path / "config.json").write_text(json.dumps(config))
    tokenizer = json.loads((path / "tokenizer_config.json").read_text())
    tokenizer.update(tokenizer_class="EvilTokenizer", auto_map={"AutoTokenizer": [None, "tokenization_evil.EvilTokenizer"]})
    (path / "tokenizer_config.json").write_text(json.dumps(tokenizer))
    return path, marker


@pytest.mark.parametrize("part", ["model", "tokenizer"])
def test_code_shipped_with_a_model_never_runs_even_if_the_user_says_yes(tiny_model_dir, tmp_path, monkeypatch, part):
    path, marker = custom_code_dir(tiny_model_dir, tmp_path)
    monkeypatch.setattr(builtins, "input", lambda prompt="": "y")  # a user answering transformers' prompt
    with pytest.raises(InputError, match=f"needs Python code shipped with it .* to load its {part}; fedlora never runs"):
        load_base_model(str(path), 3, 0) if part == "model" else load_tokenizer(str(path))
    assert not marker.exists()


SCRIPT = """
import sys, time
from fedlora_cli.errors import InputError
from fedlora_cli.models import load_base_model
start = time.perf_counter()
try:
    load_base_model("fedlora-nowhere/no-such-model", 2, 0)
except InputError as exc:
    print("missing", round(time.perf_counter() - start, 1), exc, flush=True)
model = load_base_model("fedlora-test/tiny-bert", 3, 0)
print("cached", type(model).__name__)
"""


def test_a_missing_model_fails_at_once_and_a_cached_id_loads_without_network(tiny_model_dir, tmp_path):
    # a Hugging Face cache holding one model, laid out as huggingface_hub writes it
    revision = "0" * 40
    repo = tmp_path / "hub" / "models--fedlora-test--tiny-bert"
    shutil.copytree(tiny_model_dir, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env["HF_HUB_CACHE"] = str(tmp_path / "hub")
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    missing, cached = result.stdout.strip().splitlines()[-2:]
    assert missing.startswith("missing ") and float(missing.split()[1]) < 5  # no retries against the Hub
    assert "'fedlora-nowhere/no-such-model' is not a builtin alias" in missing and "hf download" in missing
    assert cached == "cached BertForSequenceClassification"
    assert time.perf_counter() - start < 60
