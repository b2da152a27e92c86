"""``ListBatch``: a batch kept as Python lists, one item per sample (``smart_sifting.data_model.list_batch``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from scilm.errors import ScilmError
from scilm.sifting.data_model.data_model_interface import SiftingBatch


class ListBatch(SiftingBatch):
    """``inputs[i]`` and (optionally) ``labels[i]`` are sample i; items may be anything (lists, tensors, tuples).

    Raises ScilmError when ``labels`` is given with a length other than ``len(inputs)``.
    """

    def __init__(self, inputs: Sequence[Any], labels: Sequence[Any] | None = None):
        self.inputs = list(inputs)
        self.labels = None if labels is None else list(labels)
        if self.labels is not None and len(self.labels) != len(self.inputs):
            raise ScilmError(f"ListBatch: {len(self.inputs)} inputs but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.inputs)

    def select(self, indices: Sequence[int]) -> ListBatch:
        labels = None if self.labels is None else [self.labels[i] for i in indices]
        return ListBatch([self.inputs[i] for i in indices], labels)

    @classmethod
    def accumulate(cls, batches: Sequence[ListBatch]) -> ListBatch:
        if any((b.labels is None) != (batches[0].labels is None) for b in batches):
            raise ScilmError("ListBatch: cannot join batches with and without labels")
        labels = None if batches[0].labels is None else [y for b in batches for y in b.labels]
        return ListBatch([x for b in batches for x in b.inputs], labels)

    def to(self, device: Any) -> ListBatch:
        from scilm.sifting.batching import to_device

        labels = None if self.labels is None else to_device(self.labels, device)
        return ListBatch(to_device(self.inputs, device), labels)

    def __repr__(self) -> str:
        return f"ListBatch({len(self)} samples, labels={'yes' if self.labels is not None else 'no'})"
