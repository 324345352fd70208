"""``task: classification``: an encoder with a classifier head (AutoModelForSequenceClassification)."""

from __future__ import annotations

import torch

from fedlora_cli.data.batching import TokenizedDataset, tokenize
from fedlora_cli.data.sources import TextDataset
from fedlora_cli.federation.evaluate import baseline_and_collapse, evaluate, predict_logits
from fedlora_cli.models import load_base_model
from fedlora_cli.recipe import Recipe


class ClassificationTask:
    name = "classification"

    def __init__(self, recipe: Recipe, tokenizer):
        self.recipe = recipe
        self.tokenizer = tokenizer

    def base_model(self, num_labels: int) -> torch.nn.Module:
        model = self.recipe.model
        return load_base_model(model.name, num_labels, self.recipe.federation.seed, model.pooling)

    def tokenize(self, dataset: TextDataset) -> TokenizedDataset:
        return tokenize(dataset, self.tokenizer, self.recipe.data.max_length)

    def evaluate(self, model: torch.nn.Module, dataset: TextDataset, data: TokenizedDataset) -> dict:
        """Accuracy, macro-F1, balanced accuracy, ROC-AUC, loss and predicted-class counts."""
        return evaluate(model, data, len(dataset.label_names), self.recipe.federation.eval_batch_size)

    @staticmethod
    def round_metrics(scores: dict) -> dict:
        return {"eval_accuracy": scores["accuracy"], "eval_macro_f1": scores["macro_f1"], "eval_loss": scores["loss"]}

    @staticmethod
    def summary(final: dict, train: TextDataset, test: TextDataset) -> dict:
        """The final scores beside the majority-class baseline, and whether the model collapsed."""
        return {
            "final_accuracy": final["accuracy"],
            "final_macro_f1": final["macro_f1"],
            "final_balanced_accuracy": final["balanced_accuracy"],
            "final_auc": final["auc"],
            "final_loss": final["loss"],
            "predicted_counts": final["predicted_counts"],
            "classes_in_test": final["classes_in_test"],
            **baseline_and_collapse(final, train.labels, test.labels, len(train.label_names)),
        }

    @staticmethod
    def outputs(model: torch.nn.Module, data: TokenizedDataset) -> torch.Tensor:
        """What a reloaded adapter must reproduce exactly: the logits."""
        return predict_logits(model, data)
