"""model.base_dropout: the pretrained model's own dropout while training (0 by default: off)."""

from __future__ import annotations

import pytest
import torch

from fedlora_cli.federation.experiment import build_model
from fedlora_cli.recipe import load_recipe


def train_mode_outputs(model, repeats=2):
    model.train()
    ids = torch.tensor([[101, 2000, 2001, 2002, 2003, 102]])
    with torch.no_grad():
        return [model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits for _ in range(repeats)]


@pytest.mark.parametrize("base_dropout", [0.0, None, 0.3])
def test_the_training_model_has_the_recipes_dropout(tiny_recipe, base_dropout):
    recipe = load_recipe(str(tiny_recipe), [f"model.base_dropout={'null' if base_dropout is None else base_dropout}"])
    model, _ = build_model(recipe, num_labels=3)
    rates = {m.p for name, m in model.named_modules() if isinstance(m, torch.nn.Dropout) and "lora_dropout" not in name}
    assert rates == ({0.1} if base_dropout is None else {base_dropout})  # None: the tiny BERT config's own 0.1
    first, second = train_mode_outputs(model)
    if base_dropout == 0.0:  # off: a training forward pass is deterministic and equals evaluation's
        torch.testing.assert_close(first, second)
        with torch.no_grad():
            ids = torch.tensor([[101, 2000, 2001, 2002, 2003, 102]])
            torch.testing.assert_close(model.eval()(input_ids=ids, attention_mask=torch.ones_like(ids)).logits, first)
    else:
        assert not torch.equal(first, second)


def test_base_dropout_is_a_probability(tiny_recipe):
    from fedlora_cli.errors import InputError

    with pytest.raises(InputError, match="model.base_dropout"):
        load_recipe(str(tiny_recipe), ["model.base_dropout=1.5"])
