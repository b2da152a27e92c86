"""Slice and join batches: tensors, tuples/lists and dicts of them (nested), re-padding sequences.

Any object with ``len``-n first dimension is a "sample axis": tensors are indexed, plain lists are
picked from, everything else (a scalar, a string) is carried through unchanged. A
:class:`~scilm.sifting.data_model.SiftingBatch` (``ListBatch``, ``TensorBatch`` or a user's own)
is sized, sliced and joined by its own methods. Custom batch types go through a
``SiftingBatchTransform`` to one of these forms and back.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from scilm.sifting.data_model.data_model_interface import SiftingBatch, SiftingBatchTransform

# Hugging Face conventions; pad_values given by the user override these, other keys pad with 0.
DEFAULT_PAD_VALUES: dict[Any, float] = {
    "labels": -100,
    "attention_mask": 0,
    "decoder_attention_mask": 0,
    "token_type_ids": 0,
    "input_ids": 0,
}


class BatchTransform(SiftingBatchTransform):
    """The identity transform: the loader's batches are sliced as they are (tensors, tuples, dicts)."""

    def transform(self, batch: Any) -> Any:
        return batch

    def reverse_transform(self, batch: Any) -> Any:
        return batch


class SampleListTransform(SiftingBatchTransform):
    """A list or tuple of per-sample records (``batch[i]`` is sample i), kept as a ListBatch.

    What ``batch_format_index=0`` selects: PyTorch's default collate makes feature-first batches
    (``[inputs, labels]``), but a ``collate_fn=list`` loader yields one record per sample.
    """

    def transform(self, batch: Any) -> Any:
        from scilm.sifting.data_model.list_batch import ListBatch

        if not isinstance(batch, (list, tuple)):
            raise TypeError(f"batch_format_index=0 needs list or tuple batches, got {type(batch).__name__}")
        self._type = type(batch)
        return ListBatch(batch)

    def reverse_transform(self, batch: Any) -> Any:
        return self._type(batch.inputs)


def batch_size(batch: Any) -> int:
    """Number of samples: the first dimension of the first tensor found (a SiftingBatch: its len)."""
    if isinstance(batch, SiftingBatch):
        return len(batch)
    if isinstance(batch, torch.Tensor):
        return batch.shape[0] if batch.dim() else 1
    items = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (list, tuple)) else ()
    for item in items:
        if isinstance(item, (torch.Tensor, Mapping, list, tuple)):
            try:
                return batch_size(item)
            except TypeError:
                continue
    raise TypeError(f"cannot find a sample dimension in a batch of type {type(batch).__name__}; "
                    "pass batch_transforms=")


def _rebuild(batch: Any, items: list) -> Any:
    if hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*items)
    return type(batch)(items)


def _same_mapping(like: Mapping, items: dict) -> Mapping:
    """``items`` as the mapping type of ``like`` (e.g. a BatchEncoding) when it can be rebuilt."""
    if type(like) is dict:
        return items
    try:
        return type(like)(items)
    except TypeError:
        return items


def take(batch: Any, index: torch.Tensor, n: int) -> Any:
    """The samples ``index`` (1-D long tensor) of a batch of ``n`` samples."""
    if isinstance(batch, SiftingBatch):
        return batch.select(index.tolist())
    if isinstance(batch, torch.Tensor):
        return batch[index.to(batch.device)] if batch.dim() and batch.shape[0] == n else batch
    if isinstance(batch, Mapping):
        return _same_mapping(batch, {k: take(v, index, n) for k, v in batch.items()})
    if isinstance(batch, tuple):
        return _rebuild(batch, [take(v, index, n) for v in batch])
    if isinstance(batch, list):
        if len(batch) == n and not any(isinstance(v, (torch.Tensor, Mapping, list, tuple)) for v in batch):
            return [batch[i] for i in index.tolist()]  # per-sample plain values (ids, strings)
        return [take(v, index, n) for v in batch]
    return batch


def _pad_cat(tensors: Sequence[torch.Tensor], pad_value: float) -> torch.Tensor:
    """Concatenate along dim 0, right-padding every other dim to the largest size."""
    if len(tensors) == 1:
        return tensors[0]
    if tensors[0].dim() == 0:
        return tensors[0]
    shape = [max(t.shape[d] for t in tensors) for d in range(1, tensors[0].dim())]
    if all(list(t.shape[1:]) == shape for t in tensors):
        return torch.cat(list(tensors))
    out = tensors[0].new_full((sum(t.shape[0] for t in tensors), *shape), pad_value)
    row = 0
    for t in tensors:  # one copy per joined batch, not per sample
        out[(slice(row, row + t.shape[0]), *(slice(0, s) for s in t.shape[1:]))] = t
        row += t.shape[0]
    return out


def concat(batches: Sequence[Any], pad_values: Mapping[Any, float] | None = None, key: Any = None) -> Any:
    """Join batches of the same structure sample-wise; sequences are right-padded per key."""
    first = batches[0]
    if len(batches) == 1:
        return first
    if isinstance(first, SiftingBatch):
        return type(first).accumulate(batches)
    pads = {**DEFAULT_PAD_VALUES, **(pad_values or {})}
    if isinstance(first, torch.Tensor):
        return _pad_cat(batches, pads.get(key, 0))
    if isinstance(first, Mapping):
        return _same_mapping(first, {k: concat([b[k] for b in batches], pad_values, k) for k in first})
    if isinstance(first, tuple):
        return _rebuild(first, [concat([b[i] for b in batches], pad_values, i) for i in range(len(first))])
    if isinstance(first, list):
        if not any(isinstance(v, (torch.Tensor, Mapping, list, tuple)) for v in first):
            return [v for b in batches for v in b]
        return [concat([b[i] for b in batches], pad_values, i) for i in range(len(first))]
    return first


def to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor of a (nested) batch to ``device``."""
    if isinstance(batch, SiftingBatch):
        return batch.to(device)
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return _same_mapping(batch, {k: to_device(v, device) for k, v in batch.items()})
    if isinstance(batch, tuple):
        return _rebuild(batch, [to_device(v, device) for v in batch])
    if isinstance(batch, list):
        return [to_device(v, device) for v in batch]
    return batch
