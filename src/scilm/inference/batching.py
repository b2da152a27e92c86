"""Length-sorted batching (similar lengths together means little padding) and the one protein encoding."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from typing import TypeVar

import torch

T = TypeVar("T")


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    """Indices in batches of similar length (longest first, so memory peaks early).

    Ties keep input order (a stable sort); results are written back by index, so outputs are in
    input order whatever the batch size or the order of the input.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


# Tokens per forward on a CPU. Measured on the 2-core CPU: esm2-8m shape, sequences/s peak at ~1-2k
# tokens per batch and fall beyond (441 residues: 9.8 at batch 1, 11.4 at 2-4, 8.0 at 16; 50 residues:
# 81 at batch 1, 147 at 16, 119 at 64); esm2-35m shape, 64 DeepLoc proteins (median ~500 residues),
# residues/s 680-900 in batches of 16 and 1,070-1,180 at 2,048 tokens: large (B, T, 4H) tensors
# outgrow the caches. A GPU wants far larger batches.
FORWARD_TOKENS = 16384 if torch.cuda.is_available() else 2048


def forward_tokens(device) -> int:
    """Padded residues per forward for inference on ``device`` (a ``torch.device`` or its type name): 2,048
    on a CPU, 16,384 on a GPU (:data:`FORWARD_TOKENS` says why; <cls> and <eos> are not counted)."""
    return 2048 if torch.device(device).type == "cpu" else 16384


def tight_batches(lengths: Sequence[int], max_padding: float = 0.1, max_tokens: int = FORWARD_TOKENS,
                  max_size: int | None = None) -> list[list[int]]:
    """Length-sorted batches (longest first) with padding under ``max_padding`` of the real residues,
    ``max_tokens`` padded residues at most and ``max_size`` sequences at most; a sequence longer than
    ``max_tokens`` is a batch alone.

    On a CPU the forward is compute-bound, so padded positions are pure loss (a 1000-residue protein
    padding 31 short ones would cost more than running them apart) and batches past ``max_tokens``
    are slower per sequence, not faster. Outputs written back by index are in input order whatever the
    batches (:func:`length_sorted_batches`).
    """
    batches: list[list[int]] = []
    for index in (i for batch in length_sorted_batches(lengths, len(lengths) or 1) for i in batch):
        batch = batches[-1] if batches else None
        if batch and (max_size is None or len(batch) < max_size):
            longest, real = lengths[batch[0]], sum(lengths[i] for i in batch) + lengths[index]
            padded = longest * (len(batch) + 1)
            if padded <= max_tokens and padded <= (1 + max_padding) * real:
                batch.append(index)
                continue
        batches.append([index])
    return batches


def inference_batches(lengths: Sequence[int], batch_size: int | None, device) -> list[list[int]]:
    """The batches ``embed``, ``predict`` and the server run: :func:`tight_batches` of at most ``batch_size``
    sequences (None: no count bound) and :func:`forward_tokens` of ``device``; on a GPU without the padding bound (padding there
    costs idle lanes, not the whole step, and the CPU's measurement says nothing about it)."""
    cpu = torch.device(device).type == "cpu"
    return tight_batches(lengths, max_padding=0.1 if cpu else float("inf"), max_tokens=forward_tokens(device),
                         max_size=batch_size)


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
