"""Length-sorted batching (similar lengths together means little padding) and the one protein encoding."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from typing import TypeVar

T = TypeVar("T")


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    """Indices in batches of similar length (longest first, so memory peaks early).

    Ties keep input order (a stable sort); results are written back by index, so outputs are in
    input order whatever the batch size or the order of the input.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def encode_proteins(tokenizer, sequences: list[str]):
    """Token ids of already validated and truncated sequences, padded: ``input_ids`` and
    ``attention_mask`` of shape (B, T), T = longest + 2 (<cls> ... <eos>). The one encoding used by
    ``predict``, ``embed`` and the server, so the same protein gets the same tokens everywhere."""
    return tokenizer(list(sequences), padding=True, return_tensors="pt")


def chunked(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of ``size`` items (the last may be shorter), reading ``items`` lazily: the
    unit in which ``embed`` and ``predict`` stream a file of any size."""
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk
