"""Training: :func:`train` runs the recipe named by the config's ``task`` (see :mod:`scilm.training.recipes`).

From a notebook::

    from scilm.training import TrainConfig, train
    metrics = train(TrainConfig(data="train.fasta", valid="valid.fasta", model="esm2-tiny", out="runs/demo"))

``TrainConfig(**settings)`` builds the config of the recipe those settings name (``task``, else
seq2seq for JSONL data and membrane otherwise); each recipe's config class is also importable as
``scilm.training.recipes.<name>.config.Config``.
"""

from __future__ import annotations

from typing import Any

from scilm.training.config import TrainConfig, load_config
from scilm.training.recipes import RECIPES


def train(config) -> dict[str, Any]:
    """Validate ``config`` and run its recipe; returns the metrics also written to ``OUT/metrics.json``.

    Raises ScilmError for bad settings or input, RunInterrupted when SIGTERM/Ctrl-C stopped the run.
    """
    config.validate()
    return RECIPES[config.task].run(config)


__all__ = ["TrainConfig", "load_config", "train", "RECIPES"]
