"""Custom batch types for sifting (``smart_sifting.data_model`` of SageMaker smart sifting).

A :class:`~scilm.sifting.data_model.data_model_interface.SiftingBatchTransform` turns the loader's
batch into a :class:`~scilm.sifting.data_model.data_model_interface.SiftingBatch` (for instance a
:class:`~scilm.sifting.data_model.list_batch.ListBatch` or
:class:`~scilm.sifting.data_model.tensor_batch.TensorBatch`), which the sifting loader scores,
selects from and accumulates; ``reverse_transform`` turns each accumulated batch back into the
form the training loop expects.
"""

from scilm.sifting.data_model.data_model_interface import SiftingBatch, SiftingBatchTransform
from scilm.sifting.data_model.list_batch import ListBatch
from scilm.sifting.data_model.tensor_batch import TensorBatch

__all__ = ["ListBatch", "SiftingBatch", "SiftingBatchTransform", "TensorBatch"]
