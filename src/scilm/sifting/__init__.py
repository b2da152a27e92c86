"""scilm.sifting: loss-based online data selection (smart sifting), framework-agnostic.

Port a SageMaker smart-sifting script by changing its imports: ``from smart_sifting.X import Y``
becomes ``from scilm.sifting.X import Y`` (every module path of the original's guide and SDK
reference exists here: ``sift_config.sift_configs``, ``dataloader.sift_dataloader``,
``loss.abstract_sift_loss_module``, ``data_model.data_model_interface``, ``data_model.list_batch``,
``data_model.tensor_batch``, ``integrations.trainer``, ``metrics.lightning``), or import the names
from ``scilm.sifting`` itself.
"""

from scilm.sifting.batching import (
    DEFAULT_PAD_VALUES,
    BatchTransform,
    batch_size,
    concat,
    take,
)
from scilm.sifting.config import (
    LossConfig,
    RelativeProbabilisticSiftConfig,
    SiftingBaseConfig,
)
from scilm.sifting.cost import CostVerdict, check_cost
from scilm.sifting.data_model import ListBatch, SiftingBatch, SiftingBatchTransform, TensorBatch
from scilm.sifting.dataloader import SiftingDataLoader, SiftingDataloader
from scilm.sifting.loss import (
    Loss,
    RandomLoss,
    Seq2SeqLoss,
    SequenceClassificationLoss,
    per_sample_cross_entropy,
    per_sample_token_mean,
)
from scilm.sifting.reuse import (
    ReuseLossSifter,
    ReuseSampler,
    WithIndex,
    record_losses,
    reuse_keep_probability,
)
from scilm.sifting.selection import (
    LossHistory,
    keep_probability,
    percentile_in,
    push_losses,
    select_by_loss,
)

__all__ = [
    "BatchTransform", "CostVerdict", "DEFAULT_PAD_VALUES", "ListBatch", "Loss", "LossConfig", "LossHistory",
    "RandomLoss", "RelativeProbabilisticSiftConfig", "ReuseLossSifter", "ReuseSampler", "Seq2SeqLoss",
    "SequenceClassificationLoss", "SiftingBaseConfig", "SiftingBatch", "SiftingBatchTransform",
    "SiftingDataLoader", "SiftingDataloader", "TensorBatch", "WithIndex",
    "batch_size", "check_cost", "concat", "keep_probability", "per_sample_cross_entropy",
    "per_sample_token_mean", "percentile_in", "push_losses", "record_losses", "reuse_keep_probability",
    "select_by_loss", "take",
]
