"""Training: one entry point, :func:`train`, that picks the recipe from the data."""

from __future__ import annotations

from typing import Any

from scilm.training.config import TrainConfig, load_config


def train(config: TrainConfig) -> dict[str, Any]:
    """Run the recipe that fits ``config.data`` and return its metrics."""
    from scilm.training.classifier import train_classifier

    return train_classifier(config.validate())


__all__ = ["TrainConfig", "load_config", "train"]
