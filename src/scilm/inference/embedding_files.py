"""Embedding files written chunk by chunk, so memory does not grow with the number of proteins.

Layouts (N proteins, R residues fed in all, H the hidden size, L the layers asked for; with one
layer the L axis is dropped):

| pooling | ``.npy`` | ``.npz`` / ``.h5`` | ``.parquet`` (one row per protein) |
|---|---|---|---|
| mean, cls | (N, [L,] H) + ``.ids.txt`` | ``ids`` (N,), ``lengths`` (N,), ``layers`` (L,), ``embeddings`` (N, [L,] H) | ``id``, ``embedding`` (list of H) or ``embedding_layer<k>`` per layer |
| per-residue | not possible (ragged) | also ``offsets`` (N+1,) and ``residues`` (R,): row ``offsets[i] + r`` of ``embeddings`` (R, [L,] H) is residue ``residues[offsets[i] + r]`` (= the r-th residue fed of protein i) | ``id``, ``length``, ``residues`` (string), ``embedding`` (length x H) or ``embedding_layer<k>`` |

``lengths`` are the residues fed (after the long-protein policy), ``layers`` the absolute layer
numbers (0 = embedding layer). In ``.npz`` the strings are numpy unicode (``ids`` ``<U``, residues
``<U1``), in ``.h5`` UTF-8 (``ids`` variable-length, ``residues`` ``S1``). Arrays are float32.

Each writer takes the chunks in order (:meth:`EmbeddingWriter.write`), each a dict of numpy arrays
``ids``, ``lengths``, ``embeddings`` (+ ``residues`` per-residue), and writes into a temporary
path; :func:`scilm.io.atomic_output` puts it in place whole or not at all.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from scilm.errors import ScilmError

Chunk = dict[str, np.ndarray]
# chunks(key): the chunks' arrays under ``key`` in order; chunks("*"): the whole chunk dicts
Chunks = Callable[[str], Iterator[Any]]


@dataclass(frozen=True)
class Layout:
    """What one embedding file holds: pooling, absolute layers, hidden size, and the totals that
    fixed-shape formats need before the first chunk (N proteins, R residues, longest id)."""

    pooling: str
    layers: tuple[int, ...]
    hidden: int
    n_records: int
    n_residues: int
    id_width: int

    @property
    def per_residue(self) -> bool:
        """One row per residue (``--pooling per-residue``) rather than one per protein."""
        return self.pooling == "per-residue"

    @property
    def row_shape(self) -> tuple[int, ...]:
        """Shape of one embedding row: (H,) or (L, H)."""
        return (self.hidden,) if len(self.layers) == 1 else (len(self.layers), self.hidden)

    @property
    def n_rows(self) -> int:
        """Rows of the embeddings array: R residues (per-residue) or N proteins."""
        return self.n_residues if self.per_residue else self.n_records


def h5py_module():
    """h5py, or a one-line error naming the extra that installs it (``pip install 'scilm[hdf5]'``)."""
    from scilm._extras import require

    return require("hdf5", "h5py")


def check_embedding_output(out: Path, pooling: str) -> None:
    """Raise ScilmError (naming ``--out``) for a suffix this pooling cannot be written to."""
    from scilm.inference.embed import EMBEDDING_SUFFIXES

    suffix = out.suffix.lower()
    if suffix not in EMBEDDING_SUFFIXES:
        raise ScilmError(f"--out {out}: use one of {', '.join(EMBEDDING_SUFFIXES)}")
    if pooling == "per-residue" and suffix == ".npy":
        raise ScilmError(f"--out {out}: per-residue embeddings are ragged (one row per residue); use .npz, "
                         ".parquet, .h5 or .hdf5")
    if suffix in (".h5", ".hdf5"):
        h5py_module()


def _npy_header(handle: IO[bytes], dtype: np.dtype, shape: tuple[int, ...]) -> None:
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_2_0(handle, header)


def _stream_npy(handle: IO[bytes], dtype: np.dtype, shape: tuple[int, ...], pieces: Iterable[np.ndarray]) -> None:
    """One .npy (header, then C-order data) from ``pieces`` whose rows add up to ``shape``."""
    _npy_header(handle, dtype, shape)
    rows = 0
    for piece in pieces:
        piece = np.ascontiguousarray(piece, dtype=dtype)
        rows += piece.shape[0] if piece.ndim else 1
        handle.write(piece.tobytes())
    if shape and rows != shape[0]:
        raise AssertionError(f"wrote {rows} rows, the header says {shape[0]}")  # an invariant, not user input


def write_npy(tmp: Path, ids_tmp: Path, layout: Layout, chunks: Chunks) -> None:
    """``.npy`` of pooled embeddings (N, [L,] H) and its ``.ids.txt`` (one id per line)."""
    with open(tmp, "wb") as handle:
        _stream_npy(handle, np.float32, (layout.n_records, *layout.row_shape), chunks("embeddings"))
    with open(ids_tmp, "w", encoding="utf-8") as handle:
        for ids in chunks("ids"):
            handle.write("".join(f"{i}\n" for i in ids.tolist()))


def write_npz(tmp: Path, layout: Layout, chunks: Chunks) -> None:
    """``.npz`` (uncompressed, as ``np.savez``), each member streamed from the chunks in one pass."""
    n = layout.n_records

    def offsets() -> Iterator[np.ndarray]:
        yield np.zeros(1, dtype=np.int64)
        total = 0
        for lengths in chunks("lengths"):
            ends = total + np.cumsum(lengths.astype(np.int64))
            total = int(ends[-1]) if len(ends) else total
            yield ends

    members: list[tuple[str, np.dtype, tuple[int, ...], Callable[[], Iterable[np.ndarray]]]] = [
        ("ids", np.dtype(f"<U{max(1, layout.id_width)}"), (n,), lambda: chunks("ids")),
        ("lengths", np.dtype(np.int64), (n,), lambda: chunks("lengths")),
        ("layers", np.dtype(np.int64), (len(layout.layers),), lambda: [np.array(layout.layers, dtype=np.int64)]),
    ]
    if layout.per_residue:
        members += [("offsets", np.dtype(np.int64), (n + 1,), offsets),
                    ("residues", np.dtype("<U1"), (layout.n_residues,), lambda: chunks("residues"))]
    members.append(("embeddings", np.dtype(np.float32), (layout.n_rows, *layout.row_shape),
                    lambda: chunks("embeddings")))
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, dtype, shape, pieces in members:
            with archive.open(f"{name}.npy", "w", force_zip64=True) as handle:
                _stream_npy(handle, dtype, shape, pieces())


def write_h5(tmp: Path, layout: Layout, chunks: Chunks) -> None:
    """HDF5 datasets of the module's table, filled slice by slice."""
    h5py = h5py_module()
    n = layout.n_records
    with h5py.File(tmp, "w") as handle:
        handle.create_dataset("layers", data=np.array(layout.layers, dtype=np.int64))
        ids = handle.create_dataset("ids", shape=(n,), dtype=h5py.string_dtype())
        lengths = handle.create_dataset("lengths", shape=(n,), dtype=np.int64)
        start = 0
        for chunk_ids, chunk_lengths in zip(chunks("ids"), chunks("lengths")):
            ids[start:start + len(chunk_ids)] = chunk_ids.tolist()
            lengths[start:start + len(chunk_lengths)] = chunk_lengths
            start += len(chunk_ids)
        embeddings = handle.create_dataset("embeddings", shape=(layout.n_rows, *layout.row_shape), dtype=np.float32)
        start = 0
        for piece in chunks("embeddings"):
            embeddings[start:start + len(piece)] = piece
            start += len(piece)
        if layout.per_residue:
            all_lengths = lengths[...]  # N int64: small beside the embeddings
            handle.create_dataset("offsets", data=np.concatenate([[0], np.cumsum(all_lengths)]).astype(np.int64))
            residues = handle.create_dataset("residues", shape=(layout.n_residues,), dtype="S1")
            start = 0
            for piece in chunks("residues"):
                residues[start:start + len(piece)] = np.char.encode(piece, "ascii")
                start += len(piece)


def write_parquet(tmp: Path, layout: Layout, chunks: Chunks) -> None:
    """One row per protein; one row group per chunk (pyarrow's ParquetWriter)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = (["embedding"] if len(layout.layers) == 1 else [f"embedding_layer{k}" for k in layout.layers])
    writer = None
    try:
        for chunk in chunks("*"):
            values = chunk["embeddings"].reshape(len(chunk["embeddings"]), len(layout.layers), layout.hidden)
            columns: dict[str, pa.Array] = {"id": pa.array(chunk["ids"].tolist(), pa.string())}
            if layout.per_residue:
                columns["length"] = pa.array(chunk["lengths"], pa.int64())
                starts = np.concatenate([[0], np.cumsum(chunk["lengths"])]).astype(np.int32)
                columns["residues"] = pa.array(["".join(chunk["residues"][a:b]) for a, b in zip(starts[:-1], starts[1:])],
                                               pa.string())
            for j, name in enumerate(names):
                flat = pa.array(np.ascontiguousarray(values[:, j]).reshape(-1), pa.float32())
                if layout.per_residue:  # list<fixed_size_list<float, H>>: one H-vector per residue
                    rows = pa.FixedSizeListArray.from_arrays(flat, type=pa.list_(pa.float32(), layout.hidden))
                    columns[name] = pa.ListArray.from_arrays(pa.array(starts), rows,
                                                             type=pa.list_(pa.list_(pa.float32(), layout.hidden)))
                else:  # list<float>, as pyarrow writes a list of numpy rows (the earlier format)
                    ends = np.arange(0, len(values) * layout.hidden + 1, layout.hidden, dtype=np.int32)
                    columns[name] = pa.ListArray.from_arrays(pa.array(ends), flat, type=pa.list_(pa.float32()))
            table = pa.table(columns)
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema)
            writer.write_table(table)
        if writer is None:  # no proteins: an empty table with the right columns
            raise AssertionError("an embedding file needs at least one protein")  # the readers refuse empty inputs
    finally:
        if writer is not None:
            writer.close()
