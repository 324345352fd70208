"""fedlora: private federated fine-tuning with LoRA, orchestrated from YAML recipes."""

__version__ = "0.1.0"
