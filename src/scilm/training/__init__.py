"""Training: one entry point, :func:`train`, that picks the recipe from the data."""

from __future__ import annotations

from typing import Any

from scilm.training.config import TrainConfig, load_config


def train(config: TrainConfig) -> dict[str, Any]:
    """Run the recipe that fits ``config.data`` and return its metrics.

    JSONL (``source``/``target``) trains a seq2seq model (Text+Chem); FASTA/CSV/TSV a classifier.
    """
    from scilm.data.textio import data_suffix

    config.validate()
    if data_suffix(config.data) == ".jsonl":  # also .jsonl.gz
        from scilm.training.seq2seq import train_seq2seq

        return train_seq2seq(config)
    from scilm.training.classifier import train_classifier

    return train_classifier(config)


__all__ = ["TrainConfig", "load_config", "train"]
