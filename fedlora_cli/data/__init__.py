"""Data sources, tokenization and client partitioning."""
