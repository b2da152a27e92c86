"""Per-protein and per-residue embeddings from an ESM encoder (the most used ESM feature).

Any layer (0 = the embedding layer, ``n`` = the last, negative counts from the end as in fair-esm's
``extract.py --repr_layers``; several at once) and three poolings: ``mean`` over the residues
(<cls>, <eos> and padding excluded), ``cls`` (the <cls> token) and ``per-residue`` (one vector per
residue fed). Which residues are fed is the long-protein policy (:mod:`scilm.inference.policy`: the
first N residues, both ends, or overlapping windows averaged), by default the model's.

:func:`embed_proteins` works in memory; :func:`scilm.inference.embed_stream.embed_file` streams a
file of any size through the same :func:`embed_batch` in resumable chunks.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from scilm.errors import ScilmError
from scilm.inference.batching import encode_proteins, inference_batches
from scilm.inference.policy import ResiduePolicy, average_pieces, model_policy, split
from scilm.io import atomic_output

log = logging.getLogger(__name__)

EMBEDDING_SUFFIXES = (".npy", ".npz", ".parquet", ".h5", ".hdf5")
POOLINGS = ("mean", "cls", "per-residue")


def resolve_layers(config, layers: Sequence[int]) -> list[int]:
    """``layers`` as absolute indices into the ``num_hidden_layers + 1`` representations.

    0 is the embedding layer's output, ``n = num_hidden_layers`` the last layer (after ESM-2's final
    layer norm, the same as ``last_hidden_state``); ``-1`` is ``n``, ``-2`` is ``n - 1`` (fair-esm's
    convention). Raises ScilmError for a layer the model does not have, a layer named twice, or none.
    """
    n = int(config.num_hidden_layers)
    if not layers:
        raise ScilmError("--layer: give at least one layer")
    resolved: list[int] = []
    for layer in layers:
        if not -(n + 1) <= layer <= n:
            raise ScilmError(f"--layer {layer}: this model has layers 0..{n} (0 = the embedding layer, "
                             f"{n} = the last; negative counts from the end, -1 = {n}, -{n + 1} = 0)")
        absolute = layer % (n + 1)
        if absolute in resolved:
            raise ScilmError(f"--layer {layer}: layer {absolute} is named twice")
        resolved.append(absolute)
    return resolved


def check_pooling(pooling: str) -> str:
    """``pooling`` if it is one of :data:`POOLINGS`; else ScilmError naming ``--pooling``."""
    if pooling not in POOLINGS:
        raise ScilmError(f"--pooling must be one of {', '.join(POOLINGS)} (got {pooling!r})")
    return pooling


@torch.inference_mode()
def embed_batch(model, tokenizer, residues: list[str], layers: list[int], pooling: str) -> list[np.ndarray]:
    """Embeddings of one batch of already chosen residues (one ESM token per residue), one array each.

    ``layers`` are absolute (:func:`resolve_layers`). Per sequence: ``mean``/``cls`` give (H,) for
    one layer, (n_layers, H) for several; ``per-residue`` gives (len, H) or (len, n_layers, H),
    row r belonging to ``residues[i][r]``. float32. Padding is masked, so a sequence's result does
    not depend on its batch beyond float rounding.
    """
    device = next(model.parameters()).device
    encoded = encode_proteins(tokenizer, residues).to(device)
    n_layers = int(model.config.num_hidden_layers)
    if layers == [n_layers]:  # the last layer only: no need to keep every layer's states
        states = model(**encoded).last_hidden_state.unsqueeze(2)  # (B, T, 1, H)
    else:
        hidden = model(**encoded, output_hidden_states=True).hidden_states  # n+1 of (B, T, H)
        states = torch.stack([hidden[k] for k in layers], dim=2)  # (B, T, L, H)
    states = states.float()
    lengths = encoded["attention_mask"].sum(dim=1) - 2  # residues between <cls> and <eos>
    if pooling == "cls":
        pooled = states[:, 0].cpu().numpy()  # (B, L, H)
        return [row[0] if len(layers) == 1 else row for row in pooled]
    if pooling == "mean":
        mask = encoded["attention_mask"].clone()
        mask[:, 0] = 0  # <cls>
        mask[torch.arange(len(residues)), lengths + 1] = 0  # <eos>
        mask = mask.to(states.dtype)[:, :, None, None]  # (B, T, 1, 1)
        pooled = ((states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)).cpu().numpy()  # (B, L, H)
        return [row[0] if len(layers) == 1 else row for row in pooled]
    out = []
    for i, n in enumerate(lengths.tolist()):
        per_residue = states[i, 1 : 1 + n].cpu().numpy()  # (len, L, H)
        out.append(per_residue[:, 0] if len(layers) == 1 else per_residue)
    return out


def embed_with_policy(model, tokenizer, sequences: list[str], policy, layers: list[int], pooling: str,
                      batch_size: int) -> tuple[list[np.ndarray], list[str]]:
    """Embeddings of ``sequences`` under a long-protein ``policy`` (:mod:`scilm.inference.policy`), and
    for each the residues its per-residue rows belong to.

    A sequence fed in one piece (head, ends, or any sequence of at most N residues) is embedded as
    :func:`embed_batch` does. A sequence fed in several windows (``window``): every window is run; its
    per-residue rows are the mean, over the windows covering each residue, of their rows for it (rows
    cover the whole sequence, in order); ``mean`` is the mean of those per-residue rows; ``cls`` the mean
    of the windows' <cls> vectors. ``layers`` absolute (:func:`resolve_layers`); shapes as
    :func:`embed_batch`.
    """
    whole: list[tuple[int, str]] = []  # (sequence, residues fed) of one-piece sequences
    windows: list[tuple[int, str]] = []  # (sequence, window residues) of several-piece sequences
    split_pieces: dict[int, list[np.ndarray]] = {}
    covered: list[str] = []
    for i, sequence in enumerate(sequences):
        strings, pieces = split(policy, sequence)
        if len(strings) == 1:
            whole.append((i, strings[0]))
            covered.append(strings[0])
        else:
            split_pieces[i] = pieces
            windows.extend((i, piece) for piece in strings)
            covered.append(sequence)  # every residue is in some window
    results: list[np.ndarray | None] = [None] * len(sequences)
    for i, value in zip([i for i, _ in whole], _embed_all(model, tokenizer, [f for _, f in whole], layers, pooling,
                                                          batch_size)):
        results[i] = value
    window_values = _embed_all(model, tokenizer, [w for _, w in windows], layers,
                               "cls" if pooling == "cls" else "per-residue", batch_size)
    by_owner: dict[int, list[np.ndarray]] = {i: [] for i in split_pieces}
    for (owner, _), value in zip(windows, window_values, strict=True):
        by_owner[owner].append(value)
    for i, pieces in split_pieces.items():
        mine = by_owner[i]
        if pooling == "cls":
            results[i] = np.mean(np.stack(mine).astype(np.float64), axis=0).astype(np.float32)
            continue
        per_residue = average_pieces(mine, pieces, len(sequences[i]))
        results[i] = per_residue if pooling == "per-residue" else per_residue.astype(np.float64).mean(0).astype(np.float32)
    return results, covered


def _embed_all(model, tokenizer, fed: list[str], layers: list[int], pooling: str, batch_size: int) -> list[np.ndarray]:
    results: list[np.ndarray | None] = [None] * len(fed)
    for batch in inference_batches([len(s) for s in fed], batch_size, next(model.parameters()).device):
        for i, value in zip(batch, embed_batch(model, tokenizer, [fed[i] for i in batch], layers, pooling)):
            results[i] = value
    return results


def embed_proteins(
    model, tokenizer, sequences: list[str], batch_size: int = 16, truncate: int | None = None, *,
    layers: Sequence[int] = (-1,), pooling: str = "mean", policy: ResiduePolicy | None = None,
) -> np.ndarray | list[np.ndarray]:
    """Embeddings of ``sequences`` in memory, row i for ``sequences[i]`` whatever ``batch_size`` or order.

    Pooled (``mean``, ``cls``): an (N, H) float32 array for one layer, (N, n_layers, H) for several.
    ``per-residue``: a list of N arrays (len_i, H) / (len_i, n_layers, H) over the residues fed (a
    ``window`` policy: every residue). ``policy`` chooses the residues fed (:func:`embed_with_policy`;
    default: the model's training policy, ``head`` when none is recorded, at ``truncate`` residues,
    by default the length the model was trained with, :func:`scilm.models.protein.max_residues`). ``layers``: see
    :func:`resolve_layers` (default: the last). Raises ScilmError for a bad layer or pooling.
    For files of any size use :func:`scilm.inference.embed_stream.embed_file`.
    """
    check_pooling(pooling)
    absolute = resolve_layers(model.config, layers)
    if policy is None:
        policy = model_policy(model.config, tokenizer, truncate=truncate)  # the model's policy, else head
    results, _ = embed_with_policy(model, tokenizer, sequences, policy, absolute, pooling, batch_size)
    if pooling == "per-residue":
        return results
    width = (model.config.hidden_size,) if len(absolute) == 1 else (len(absolute), model.config.hidden_size)
    return np.stack(results).astype(np.float32) if results else np.zeros((0, *width), dtype=np.float32)


def write_embeddings(ids: list[str], embeddings: np.ndarray, out: Path, inputs: tuple = ()) -> list[Path]:
    """Pooled embeddings held in memory: ``.npy`` (+ ``.ids.txt`` beside it), ``.npz`` (ids,
    embeddings), ``.parquet`` (id, embedding) or ``.h5``/``.hdf5`` (ids, embeddings).

    ``embeddings`` is (N, H) (or (N, n_layers, H)) float32 with ``ids`` (N,). Each file is written
    whole or not at all; for ``.npy`` both files are complete before either replaces an old one, and
    the ids go last. Raises ScilmError for another suffix, a directory, or an output that is one of
    ``inputs``. Files of any size: :func:`scilm.inference.embed_stream.embed_file`.
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
            np.savez(tmp, ids=np.array(ids, dtype=str), embeddings=embeddings)
        elif suffix in (".h5", ".hdf5"):
            from scilm.inference.embedding_files import h5py_module

            with h5py_module().File(tmp, "w") as handle:
                handle.create_dataset("ids", data=list(ids), dtype=h5py_module().string_dtype())
                handle.create_dataset("embeddings", data=embeddings)
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.table({"id": ids, "embedding": list(embeddings)}), tmp)
    return written
