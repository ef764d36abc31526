"""Fixtures of the machine-model tests; the helpers live in kho_model_helpers.py."""

from kho_model_helpers import machine, seed

__all__ = ["machine", "seed"]
