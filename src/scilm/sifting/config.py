"""Sifting settings, with the keyword names of SageMaker smart sifting so scripts port unchanged.

``RelativeProbabilisticSiftConfig(beta_value=3, loss_history_length=500,
loss_based_sift_config=LossConfig(sift_config=SiftingBaseConfig(sift_delay=10)))``

As in the original, the nested configs may also be given as plain dicts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from scilm.errors import ScilmError


def _int_at_least(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ScilmError(f"{name} must be an integer >= {low}, got {value!r}")


@dataclass
class SiftingBaseConfig:
    """When sifting starts.

    sift_delay: training steps (yielded batches) passed through unsifted first; a model that has
        learned nothing yet cannot tell easy samples from hard ones. Default 1000, the original's
        documented default, so a ported script that leaves it out behaves the same.
    repeat_delay_per_epoch: count the delay again at the start of every epoch.
    """

    sift_delay: int = 1000
    repeat_delay_per_epoch: bool = False

    def __post_init__(self) -> None:
        _int_at_least("sift_delay", self.sift_delay, 0)
        if not isinstance(self.repeat_delay_per_epoch, bool):
            raise ScilmError(f"repeat_delay_per_epoch must be True or False, got {self.repeat_delay_per_epoch!r}")


@dataclass
class LossConfig:
    """Settings of loss-based sifting (kept as a level of its own for compatibility)."""

    sift_config: SiftingBaseConfig = field(default_factory=SiftingBaseConfig)

    def __post_init__(self) -> None:
        if isinstance(self.sift_config, dict):
            self.sift_config = SiftingBaseConfig(**self.sift_config)
        if not isinstance(self.sift_config, SiftingBaseConfig):
            raise ScilmError(f"sift_config must be a SiftingBaseConfig or dict, got {type(self.sift_config).__name__}")


@dataclass
class RelativeProbabilisticSiftConfig:
    """Keep a sample with probability percentile(its loss among recent losses) ** beta_value.

    beta_value: how hard to sift; expected kept fraction 1/(1+beta) (0.5 -> 2/3, 1 -> 1/2, 3 -> 1/4).
    loss_history_length: how many recent losses form the window for the percentile.
    loss_based_sift_config: a LossConfig (or dict) holding the SiftingBaseConfig.
    """

    beta_value: float = 1
    loss_history_length: int = 500
    loss_based_sift_config: LossConfig = field(default_factory=LossConfig)

    def __post_init__(self) -> None:
        beta = self.beta_value
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta) or beta <= 0:
            raise ScilmError(f"beta_value must be a finite number > 0, got {beta!r}")
        _int_at_least("loss_history_length", self.loss_history_length, 1)
        if isinstance(self.loss_based_sift_config, dict):
            self.loss_based_sift_config = LossConfig(**self.loss_based_sift_config)
        if not isinstance(self.loss_based_sift_config, LossConfig):
            raise ScilmError("loss_based_sift_config must be a LossConfig or dict, "
                             f"got {type(self.loss_based_sift_config).__name__}")

    @property
    def base(self) -> SiftingBaseConfig:
        """The shared sifting settings (``sift_delay`` ...) inside ``loss_based_sift_config``."""
        return self.loss_based_sift_config.sift_config

    @property
    def expected_keep(self) -> float:
        """Expected kept fraction, 1/(1+beta), for losses that are iid and continuous."""
        return 1.0 / (1.0 + float(self.beta_value))
