"""``TensorBatch``: inputs and labels as tensors, samples along dim 0 (``smart_sifting.data_model.tensor_batch``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from scilm.errors import ScilmError
from scilm.sifting.data_model.data_model_interface import SiftingBatch


class TensorBatch(SiftingBatch):
    """``inputs`` (n, ...) and optional ``labels`` (n, ...): row i is sample i.

    Joined batches whose later dimensions differ (sequences padded per batch) are right-padded:
    inputs with ``input_pad`` (default 0), labels with ``label_pad`` (default -100, the value Hugging
    Face losses ignore). Raises ScilmError when the first dimensions disagree.
    """

    def __init__(self, inputs: torch.Tensor, labels: torch.Tensor | None = None, input_pad: float = 0,
                 label_pad: float = -100):
        if not isinstance(inputs, torch.Tensor) or inputs.dim() == 0:
            raise ScilmError(f"TensorBatch: inputs must be a tensor with a sample dimension, got {type(inputs).__name__}")
        if labels is not None and (not isinstance(labels, torch.Tensor) or labels.dim() == 0
                                   or labels.shape[0] != inputs.shape[0]):
            raise ScilmError(f"TensorBatch: labels must be a tensor of {inputs.shape[0]} rows like inputs")
        self.inputs, self.labels = inputs, labels
        self.input_pad, self.label_pad = input_pad, label_pad

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def _like(self, inputs: torch.Tensor, labels: torch.Tensor | None) -> TensorBatch:
        return TensorBatch(inputs, labels, self.input_pad, self.label_pad)

    def select(self, indices: Sequence[int]) -> TensorBatch:
        index = torch.as_tensor(list(indices), dtype=torch.long, device=self.inputs.device)
        labels = None if self.labels is None else self.labels[index.to(self.labels.device)]
        return self._like(self.inputs[index], labels)

    @classmethod
    def accumulate(cls, batches: Sequence[TensorBatch]) -> TensorBatch:
        from scilm.sifting.batching import _pad_cat

        first = batches[0]
        if any((b.labels is None) != (first.labels is None) for b in batches):
            raise ScilmError("TensorBatch: cannot join batches with and without labels")
        labels = None if first.labels is None else _pad_cat([b.labels for b in batches], first.label_pad)
        return first._like(_pad_cat([b.inputs for b in batches], first.input_pad), labels)

    def to(self, device: Any) -> TensorBatch:
        labels = None if self.labels is None else self.labels.to(device)
        return self._like(self.inputs.to(device), labels)

    def __repr__(self) -> str:
        return f"TensorBatch(inputs {tuple(self.inputs.shape)}, labels {None if self.labels is None else tuple(self.labels.shape)})"
