"""``smart_sifting.sift_config.sift_configs``: the configuration classes (defined in :mod:`scilm.sifting.config`)."""

from scilm.sifting.config import LossConfig, RelativeProbabilisticSiftConfig, SiftingBaseConfig

__all__ = ["LossConfig", "RelativeProbabilisticSiftConfig", "SiftingBaseConfig"]
