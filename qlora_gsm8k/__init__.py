"""Shared library of the QLoRA-on-GSM8K DVC pipeline: configs, data, prompts, models, metrics."""
