"""The sifting configuration classes under SageMaker smart sifting's module path (``smart_sifting.sift_config``)."""

from scilm.sifting.config import LossConfig, RelativeProbabilisticSiftConfig, SiftingBaseConfig

__all__ = ["LossConfig", "RelativeProbabilisticSiftConfig", "SiftingBaseConfig"]
