"""Mean-pooled per-protein embeddings from an ESM encoder (the most used ESM feature)."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import numpy as np
import torch

from scilm.errors import ScilmError
from scilm.inference.batching import encode_proteins, length_sorted_batches
from scilm.io import atomic_output
from scilm.models.protein import max_residues, truncate_sequences

log = logging.getLogger(__name__)

EMBEDDING_SUFFIXES = (".npy", ".npz", ".parquet")


@torch.inference_mode()
def embed_proteins(
    model, tokenizer, sequences: list[str], batch_size: int = 16, truncate: int | None = None
) -> np.ndarray:
    """(N, hidden) float32: the mean of the last layer over residues (<cls>, <eos>, padding excluded).

    Row i belongs to ``sequences[i]`` whatever ``batch_size`` or the input order. Each sequence is
    cut to ``truncate`` residues, by default the length the model was trained with
    (:func:`scilm.models.protein.max_residues`); the number cut is logged at DEBUG (the CLI reports it).
    """
    limit = truncate if truncate is not None else max_residues(model.config, tokenizer)
    sequences, n_cut = truncate_sequences(sequences, limit)
    if n_cut:
        log.debug("%d of %d sequences cut to %d residues", n_cut, len(sequences), limit)  # the CLI reports it
    device = next(model.parameters()).device
    out = np.zeros((len(sequences), model.config.hidden_size), dtype=np.float32)
    for batch in length_sorted_batches([len(s) for s in sequences], batch_size):
        encoded = encode_proteins(tokenizer, [sequences[i] for i in batch]).to(device)
        hidden = model(**encoded).last_hidden_state.float()  # (B, T, H)
        mask = encoded["attention_mask"].clone()
        mask[:, 0] = 0  # <cls>
        lengths = encoded["attention_mask"].sum(dim=1)
        mask[torch.arange(len(batch)), lengths - 1] = 0  # <eos>
        mask = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
        out[batch] = pooled.cpu().numpy()
    return out


def write_embeddings(ids: list[str], embeddings: np.ndarray, out: Path, inputs: tuple = ()) -> list[Path]:
    """``.npy`` (+ ``.ids.txt`` beside it), ``.npz`` (ids, embeddings) or ``.parquet`` (id, embedding).

    ``embeddings`` is (N, H) float32 with ``ids`` (N,). Each file is written whole or not at all;
    for ``.npy`` both files are complete before either replaces an old one, and the ids go last.
    Raises ScilmError for another suffix, a directory, or an output that is one of ``inputs``.
    """
    suffix = out.suffix.lower()
    if suffix not in EMBEDDING_SUFFIXES:
        raise ScilmError(f"--out {out}: use one of {', '.join(EMBEDDING_SUFFIXES)}")
    written = [out]
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(atomic_output(out, inputs))
        if suffix == ".npy":
            ids_path = out.with_suffix(".ids.txt")
            ids_tmp = stack.enter_context(atomic_output(ids_path, inputs))  # replaced after the .npy
            ids_tmp.write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")
            np.save(tmp, embeddings)
            written.append(ids_path)
        elif suffix == ".npz":
            np.savez(tmp, ids=np.array(ids), embeddings=embeddings)
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.table({"id": ids, "embedding": list(embeddings)}), tmp)
    return written
