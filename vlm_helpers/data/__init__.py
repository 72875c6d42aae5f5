"""Datasets: real loaders for Colab (full mode) and synthetic stand-ins (tiny mode)."""
