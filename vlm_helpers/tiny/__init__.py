"""Tiny random models built from configs, so every notebook runs offline on a CPU."""
