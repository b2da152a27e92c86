"""``scilm embed`` on a file of any size: streamed in chunks, resumable after a kill, multi-process.

How a run goes (:func:`embed_file`):

1. :func:`scan_input` reads the whole input once, one record at a time, checking every record
   (a bad residue on line 9,000,000 is found before any work) and counting them.
2. The records are read again in chunks of ``chunk_size``; each chunk is embedded (batched by
   length inside the chunk) and saved as one part file in ``.<out name>.parts/`` beside ``--out``.
   A part records a digest of its records, so a rerun of the same command after a kill skips the
   parts already written for the same records, model and settings (the directory's
   ``manifest.json``); parts of another model or other settings are discarded.
3. The parts are merged, in input order, into ``--out`` (:mod:`scilm.inference.embedding_files`),
   which appears whole or not at all (:func:`scilm.io.atomic_output`); then the parts are removed.

Memory holds the model, one chunk and its outputs: it does not grow with the number of proteins.
With ``torchrun`` (``scilm embed --nproc N``) process ``r`` of ``N`` embeds chunks ``r, r+N, ...``
and process 0 merges after all are done, so the file is the same as from one process.
"""

from __future__ import annotations

import array
import hashlib
import itertools
import json
import logging
import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from scilm.data.protein import ProteinRecord, iter_proteins
from scilm.errors import ScilmError
from scilm.inference.batching import chunked
from scilm.inference.embed import check_pooling, embed_with_policy, resolve_layers
from scilm.inference.embedding_files import Layout, check_embedding_output, write_h5, write_npy, write_npz, write_parquet
from scilm.inference.policy import ResiduePolicy, WindowPolicy, cuts
from scilm.inference.progress import progress_bar
from scilm.io import atomic_output, check_output, write_json_atomic

log = logging.getLogger(__name__)

PARTS_VERSION = 2  # 2: int8 embeddings run one protein at a time (other numbers than batched int8)
CHUNK_BUDGET_BYTES = 256 * 2**20  # embeddings held per chunk, at most (about)
MAX_CHUNK = 1024


@dataclass(frozen=True)
class InputScan:
    """What the first pass over an input found: how many records, the longest id and sequence, and each
    record's length in residues (``lengths``, input order; 4 bytes a record)."""

    n_records: int
    id_width: int
    max_length: int = 0
    lengths: Sequence[int] = field(default=(), compare=False, repr=False)


def scan_input(data: str | Path, sequence_column: str = "Sequence", id_column: str | None = None) -> InputScan:
    """Check every record of ``data`` (FASTA or table) and count them, one record in memory at a time.

    Raises ScilmError naming the file and line of the first bad record, or for an empty file.
    """
    n, width, longest = 0, 0, 0
    lengths = array.array("I")
    for record in iter_proteins(data, sequence_column, id_column):
        n += 1
        width, longest = max(width, len(record.id)), max(longest, len(record.sequence))
        lengths.append(len(record.sequence))
    return InputScan(n, width, longest, lengths)


def default_chunk_size(hidden: int, n_layers: int, pooling: str, max_residues: int) -> int:
    """Proteins per chunk: up to :data:`MAX_CHUNK`, fewer when per-residue outputs of the longest
    proteins would pass :data:`CHUNK_BUDGET_BYTES` (e.g. 49 for ESM-2 650M at 1,022 residues)."""
    per_protein = 4 * hidden * n_layers * (max_residues if pooling == "per-residue" else 1)
    return int(max(1, min(MAX_CHUNK, CHUNK_BUDGET_BYTES // per_protein)))


def chunk_digest(index: int, records: Sequence[ProteinRecord]) -> str:
    """sha256 of a chunk's position, ids and sequences: a part is reused only for the same records."""
    digest = hashlib.sha256(f"{index}\n".encode())
    for record in records:
        digest.update(f"{record.id}\0{record.sequence}\n".encode())
    return digest.hexdigest()


def model_fingerprint(model, tokenizer) -> str:
    """blake2b of every parameter and buffer (names, shapes, values) and the vocabulary: parts of
    another model (other weights, even with the same path) are never reused."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(type(model).__name__.encode())
    for name, tensor in itertools.chain(model.named_parameters(), model.named_buffers()):
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{data.dtype}:{tuple(data.shape)}".encode())
        if data.numel():
            digest.update(memoryview(data.view(-1).view(torch.uint8).numpy()))
    digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    mode = getattr(model, "scilm_inference_mode", "fp32")  # bf16 autocast: same weights, other numbers
    if mode != "fp32":
        digest.update(f"mode:{mode}".encode())
    return digest.hexdigest()


class PartStore:
    """The finished chunks of one output, in ``.<out name>.parts/`` beside it, until the merge.

    ``manifest.json`` names the model fingerprint and every setting that changes the numbers; a
    store of other settings is emptied when opened (its parts could not be reused).
    """

    def __init__(self, out: Path, settings: dict):
        self.dir = out.with_name(f".{out.name}.parts")
        self.settings = {"version": PARTS_VERSION, **settings}

    def part(self, index: int) -> Path:
        """The file of chunk ``index`` (0-based, input order)."""
        return self.dir / f"part-{index:07d}.npz"

    def open(self) -> int:
        """Create the directory or check its manifest; returns how many parts it already holds."""
        manifest = self.dir / "manifest.json"
        if self.dir.is_dir():
            try:
                same = json.loads(manifest.read_text(encoding="utf-8")) == self.settings
            except (OSError, ValueError):
                same = False
            if not same:
                n_old = len(list(self.dir.glob("part-*.npz")))
                log.info("%s: %d part(s) of an earlier run with another model or settings discarded", self.dir, n_old)
                shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        if not manifest.is_file():
            write_json_atomic(manifest, self.settings)
        return len(list(self.dir.glob("part-*.npz")))

    def has(self, index: int, digest: str) -> bool:
        """True when part ``index`` exists, is readable, and holds exactly these records."""
        try:
            with np.load(self.part(index), allow_pickle=False) as part:
                return str(part["digest"]) == digest
        except (OSError, ValueError, KeyError, EOFError):
            return False

    def write(self, index: int, digest: str, chunk: dict[str, np.ndarray]) -> None:
        """Write part ``index`` whole or not at all (a kill mid-write leaves no part)."""
        with atomic_output(self.part(index), option="--out") as tmp:
            np.savez(tmp, digest=np.array(digest), **chunk)

    def chunks(self, n_chunks: int):
        """``chunks(key)``: the parts' arrays under ``key`` in order (``"*"``: whole dicts)."""

        def read(key: str) -> Iterator:
            for index in range(n_chunks):
                with np.load(self.part(index), allow_pickle=False) as part:
                    yield {k: part[k] for k in part.files} if key == "*" else part[key]

        return read

    def remove(self) -> None:
        """Delete the parts directory (after the merge wrote ``--out``)."""
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass
class EmbedResult:
    """What :func:`embed_file` did: files written, shape, proteins cut by the policy, chunks reused."""

    written: list[Path]
    n_records: int
    n_residues: int
    hidden: int
    layers: list[int]
    n_cut: int
    n_chunks: int
    n_reused: int
    cut_rows: list[int] = field(default_factory=list)  # 0-based input positions the policy did not feed whole
    cut_ids: list[str] = field(default_factory=list)  # their ids


def _embed_chunk(model, tokenizer, records: list[ProteinRecord], policy: ResiduePolicy, layers: list[int],
                 pooling: str, batch_size: int) -> dict[str, np.ndarray]:
    values, fed = embed_with_policy(model, tokenizer, [r.sequence for r in records], policy, layers, pooling,
                                    batch_size)
    chunk = {"ids": np.array([r.id for r in records], dtype=str),
             "lengths": np.array([len(s) for s in fed], dtype=np.int64)}
    if pooling == "per-residue":
        chunk["embeddings"] = np.concatenate(values).astype(np.float32)
        chunk["residues"] = np.array(list("".join(fed)), dtype="<U1")
    else:
        chunk["embeddings"] = np.stack(values).astype(np.float32)
    return chunk


def _distributed() -> tuple[int, int]:
    """(rank, world size); under torchrun a gloo process group is started for the barriers."""
    from scilm.training.distributed import launched_by_torchrun

    if not launched_by_torchrun():
        return 0, 1
    import datetime

    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=datetime.timedelta(hours=12))
    return dist.get_rank(), dist.get_world_size()


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def embed_file(
    model, tokenizer, data: str | Path, out: str | Path, *, policy: ResiduePolicy, layers: Sequence[int] = (-1,),
    pooling: str = "mean", batch_size: int = 16, chunk_size: int | None = None, sequence_column: str = "Sequence",
    id_column: str | None = None, progress: bool = True, scan: InputScan | None = None,
) -> EmbedResult | None:
    """Embed every record of ``data`` into ``out`` (one row per record, input order), streaming.

    ``policy`` chooses the residues fed (e.g. ``head_policy(max_residues(config, tokenizer))``);
    ``layers``/``pooling`` as :func:`scilm.inference.embed.embed_proteins`; ``out``'s suffix picks
    the format (:mod:`scilm.inference.embedding_files`). ``chunk_size`` (default
    :func:`default_chunk_size`) changes memory, never the numbers beyond float rounding; it is part
    of the resume manifest. ``scan``: a first pass already made (:func:`scan_input`). Under torchrun
    every process calls this; process 0 returns the result, the others None. Raises ScilmError for
    bad input (before any work), a bad layer, pooling or output path.
    """
    out = Path(out)
    check_pooling(pooling)
    check_embedding_output(out, pooling)
    check_output(out, [data])
    if out.suffix.lower() == ".npy":
        check_output(out.with_suffix(".ids.txt"), [data])
    absolute = resolve_layers(model.config, layers)
    scan = scan or scan_input(data, sequence_column, id_column)
    hidden = int(model.config.hidden_size)
    if chunk_size is None:
        limit = getattr(policy, "max_residues", 1022)
        if isinstance(policy, WindowPolicy):  # per-residue rows cover whole proteins
            limit = max(limit, scan.max_length)
        chunk_size = default_chunk_size(hidden, len(absolute), pooling, limit)
    if chunk_size < 1:
        raise ScilmError(f"--chunk-size must be at least 1 (got {chunk_size})")
    n_chunks = -(-scan.n_records // chunk_size)
    rank, world = _distributed()
    store = PartStore(out, {"model": model_fingerprint(model, tokenizer), "layers": absolute, "pooling": pooling,
                            "policy": str(policy), "chunk_size": chunk_size})
    if rank == 0:
        store.open()
    _barrier(world)

    mine = [i for i in range(n_chunks) if i % world == rank]
    bar = progress_bar(sum(min(chunk_size, scan.n_records - i * chunk_size) for i in mine),
                       "embed" if world == 1 else f"embed (process {rank} of {world})", progress and rank == 0)
    n_reused = 0
    cut_rows: list[int] = []
    cut_ids: list[str] = []
    with bar:
        records = iter_proteins(data, sequence_column, id_column)
        for index, chunk in enumerate(chunked(records, chunk_size)):
            for row, record in enumerate(chunk, start=index * chunk_size):
                if cuts(policy, record.sequence):
                    cut_rows.append(row)
                    cut_ids.append(record.id)
            if index % world != rank:
                continue
            digest = chunk_digest(index, chunk)
            if store.has(index, digest):
                n_reused += 1
                bar.total -= len(chunk)  # the bar and its rate count the work of this run
                bar.refresh()
                continue
            store.write(index, digest, _embed_chunk(model, tokenizer, chunk, policy, absolute, pooling, batch_size))
            bar.update(len(chunk))
    if world > 1:
        import torch.distributed as dist

        reused = torch.tensor([n_reused])
        dist.all_reduce(reused)  # also the barrier: every part is written before process 0 merges
        n_reused = int(reused.item())
    if rank != 0:
        return None
    result = _merge(store, out, data, n_chunks, scan, pooling, absolute, hidden)
    store.remove()
    return EmbedResult(written=result[0], n_records=scan.n_records, n_residues=result[1], hidden=hidden,
                       layers=absolute, n_cut=len(cut_rows), n_chunks=n_chunks, n_reused=n_reused,
                       cut_rows=cut_rows, cut_ids=cut_ids)


def _merge(store: PartStore, out: Path, data, n_chunks: int, scan: InputScan, pooling: str, layers: list[int],
           hidden: int) -> tuple[list[Path], int]:
    chunks = store.chunks(n_chunks)
    n_residues = int(sum(int(lengths.sum()) for lengths in chunks("lengths")))
    n_records = sum(len(ids) for ids in chunks("ids"))
    if n_records != scan.n_records:  # the input changed under us between the passes
        raise ScilmError(f"{data}: the file changed while it was being embedded ({scan.n_records} records, "
                         f"then {n_records}); run the command again")
    layout = Layout(pooling, tuple(layers), hidden, scan.n_records, n_residues, scan.id_width)
    suffix = out.suffix.lower()
    written = [out]
    if suffix == ".npy":
        ids_path = out.with_suffix(".ids.txt")
        with atomic_output(out, [data]) as tmp, atomic_output(ids_path, [data]) as ids_tmp:
            write_npy(tmp, ids_tmp, layout, chunks)
        written.append(ids_path)
    else:
        writer = {".npz": write_npz, ".parquet": write_parquet, ".h5": write_h5, ".hdf5": write_h5}[suffix]
        with atomic_output(out, [data]) as tmp:
            writer(tmp, layout, chunks)
    return written, n_residues


def launch_embed_workers(nproc: int, argv: list[str]) -> int:
    """Run ``scilm embed ARGV`` in ``nproc`` processes with torchrun's launcher (``--standalone``);
    returns the exit code. A failed process prints its own message; this adds one line."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    if nproc < 1:
        raise ScilmError(f"--nproc must be at least 1 (got {nproc})")
    from scilm.distributed import threads_per_process

    os.environ.setdefault("OMP_NUM_THREADS", str(threads_per_process(nproc)))  # physical cores shared out
    args = parse_args(["--standalone", f"--nproc_per_node={nproc}", "-m", "scilm", "embed", *argv])
    print(f"scilm: embedding in {nproc} processes (torchrun --standalone --nproc_per_node {nproc})",
          file=sys.stderr, flush=True)
    try:
        run(args)
    except ChildFailedError as exc:
        codes = sorted({failure.exitcode for failure in exc.failures.values()})
        print(f"error: {len(exc.failures)} of {nproc} embedding processes failed (exit code "
              f"{', '.join(map(str, codes))}); their messages are above; run the same command again to "
              "continue from the chunks already written", file=sys.stderr)
        return next((c for c in codes if c and c > 0), 1)
    return 0
