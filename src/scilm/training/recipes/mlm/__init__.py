"""Masked-language-model (continued) pre-training of ESM-2."""
