"""``SiftingBatch`` and ``SiftingBatchTransform``: the interface of a custom batch type.

Same names and module path as SageMaker smart sifting's
``smart_sifting.data_model.data_model_interface``. The original publishes what these classes are
for ("a batch data type that can be sifted and accumulated"; a transform "that converts the data
format of your training data to SiftingBatch format") but not the abstract methods of
``SiftingBatch``; here they are :meth:`SiftingBatch.__len__`, :meth:`SiftingBatch.select` and
:meth:`SiftingBatch.accumulate`. Scripts that use the shipped ``ListBatch`` / ``TensorBatch`` (as the
guide's do) need nothing more.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any


class SiftingBatch(abc.ABC):
    """A batch of n samples that the sifting loader can score, select from and accumulate.

    The loader calls ``len(batch)`` for n, ``batch.select(indices)`` for the kept samples (in the
    order given), ``type(batch).accumulate(batches)`` to join kept samples into a batch of the
    loader's batch size, and ``batch.to(device)`` before handing it to the loss for scoring.
    """

    @abc.abstractmethod
    def __len__(self) -> int:
        """Number of samples n."""

    @abc.abstractmethod
    def select(self, indices: Sequence[int]) -> SiftingBatch:
        """A batch of the samples at ``indices`` (0-based, in that order)."""

    @classmethod
    @abc.abstractmethod
    def accumulate(cls, batches: Sequence[SiftingBatch]) -> SiftingBatch:
        """One batch holding the samples of ``batches``, in order."""

    def to(self, device: Any) -> SiftingBatch:
        """This batch with its tensors on ``device`` (default: unchanged)."""
        return self


class SiftingBatchTransform(abc.ABC):
    """Turns the loader's batch into a sift-able form and back.

    ``transform(batch)`` maps a batch of the wrapped DataLoader to a :class:`SiftingBatch` (or to a
    tensor / tuple / list / dict of tensors, which the loader can slice itself);
    ``reverse_transform(sifting_batch)`` maps an accumulated batch of kept samples back to what the
    training loop consumes. The loss sees the transformed batch as ``transformed_batch`` and the
    loader's own batch as ``original_batch``.
    """

    @abc.abstractmethod
    def transform(self, batch: Any) -> Any:
        """The loader's batch -> a SiftingBatch (or a batch of tensors)."""

    @abc.abstractmethod
    def reverse_transform(self, sifting_batch: Any) -> Any:
        """A SiftingBatch of kept samples -> a batch for the training loop."""
