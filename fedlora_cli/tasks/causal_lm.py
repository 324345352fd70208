"""``task: causal_lm``: supervised fine-tuning of a decoder (AutoModelForCausalLM, peft CAUSAL_LM).

Evaluation (:mod:`fedlora_cli.tasks.lm_scoring`): held-out per-token response loss and
perplexity on the whole test set; for multiple choice (``causal_lm.choices`` or
``choices_column``), accuracy of the option with the
highest per-token log-likelihood; otherwise exact match of greedily decoded answers on the first
``causal_lm.generate_samples`` test examples. The headline ``accuracy`` is the choice accuracy or
the exact match (None when neither is computed).
"""

from __future__ import annotations

import torch

from fedlora_cli.data.batching import TokenizedDataset
from fedlora_cli.data.sft import SFTDataset, tokenize_sft
from fedlora_cli.models import load_causal_lm
from fedlora_cli.recipe import Recipe
from fedlora_cli.tasks.lm_scoring import choice_accuracy, example_nll, exact_match, heldout_loss


class CausalLMTask:
    name = "causal_lm"

    def __init__(self, recipe: Recipe, tokenizer):
        self.recipe = recipe
        self.tokenizer = tokenizer

    def base_model(self, num_labels: int) -> torch.nn.Module:
        return load_causal_lm(self.recipe.model.name)

    def tokenize(self, dataset: SFTDataset) -> TokenizedDataset:
        return tokenize_sft(dataset, self.tokenizer, self.recipe.data.max_length)

    def evaluate(self, model: torch.nn.Module, dataset: SFTDataset, data: TokenizedDataset) -> dict:
        """Loss, perplexity, and choice accuracy or exact match (see the module docstring)."""
        cfg, batch_size = self.recipe.causal_lm, self.recipe.federation.eval_batch_size
        was_training = model.training
        model.eval()
        try:
            scores = heldout_loss(model, data, batch_size)
            if cfg.multiple_choice:
                scores.update(choice_accuracy(model, dataset, self.tokenizer, batch_size))
                scores["accuracy"] = scores["choice_accuracy"]
            elif cfg.generate_samples:
                sample = dataset.subset(range(min(len(dataset), cfg.generate_samples)))
                scores.update(exact_match(model, sample, self.tokenizer, cfg.answer, cfg.max_new_tokens, batch_size))
                scores["accuracy"] = scores["exact_match"]
            else:
                scores["accuracy"] = None
        finally:
            model.train(was_training)
        return scores

    @staticmethod
    def round_metrics(scores: dict) -> dict:
        return {
            "eval_accuracy": scores["accuracy"],
            "eval_macro_f1": None,
            "eval_loss": scores["loss"],
            "eval_perplexity": scores["perplexity"],
        }

    @staticmethod
    def summary(final: dict, train: SFTDataset, test: SFTDataset) -> dict:
        optional = ("exact_match", "generated", "choice_accuracy", "predicted_counts")
        return {
            "final_accuracy": final["accuracy"],
            "final_macro_f1": None,
            "final_loss": final["loss"],
            "final_perplexity": final["perplexity"],
            **{f"final_{key}" if key != "predicted_counts" else key: final[key] for key in optional if key in final},
        }

    @staticmethod
    def outputs(model: torch.nn.Module, data: TokenizedDataset) -> torch.Tensor:
        """What a reloaded adapter must reproduce exactly: each example's summed response NLL."""
        was_training = model.training
        model.eval()
        sums = example_nll(model, data, batch_size=64)[0]
        model.train(was_training)
        return sums
