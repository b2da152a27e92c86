"""``scilm bench inference``: ESM-2 embedding throughput side by side, same weights and proteins (issue 16).

Rows (each run in its own Python process, so its peak memory is its own and start-up counts):

- ``hf-eager-fp32``: plain transformers as a user writes it: file order, padded batches of 8, eager
  attention, mean over residues;
- ``hf-sdpa-fp32``: the same with PyTorch's scaled-dot-product attention;
- ``scilm-<mode>``: ``scilm embed``'s code (length-sorted batches) forced into each mode of
  :mod:`scilm.inference.precision` (``fp32``, ``bf16``, ``bf16-weights``, ``int8`` when torchao is
  installed), and ``scilm-auto``: what ``--precision auto --quantize int8`` chooses, its probe included
  (an empty cache: the first run on a machine);
- ``esm.cpp``: skipped unless the ``esm_cpp`` package is importable (said so in the table).

The model is a random-weight ESM-2 of the chosen preset shape (built offline, saved with hub tensor
names); proteins are the bundled DeepLoc-1 validation set, cut to ``truncate`` residues. Each row's
time runs from loading the model to the last embedding (start-up included); ``residues_per_s`` is
residues embedded / that time. ``guard_cosine`` is the smallest per-protein cosine of the row's
embeddings to ``scilm-fp32``'s. A row over its time budget stops after the batch that crosses it and
reports the proteins it measured (``n_proteins``); its speed is then of a prefix of the set.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from scilm.bench.report import machine_name, markdown_table
from scilm.io import write_json_atomic, write_text_atomic

DEEPLOC_VALID = Path(__file__).resolve().parents[1] / "data" / "bundled" / "deeploc1" / "valid.fasta"
MODELS = ("esm2-8m", "esm2-35m", "esm2-150m")
SCILM_MODES = ("fp32", "bf16", "bf16-weights", "int8")
HF_BATCH = 8
SCILM_BATCH = 16


def bench_proteins(n: int, truncate: int) -> list[tuple[str, str]]:
    """The first ``n`` DeepLoc-1 validation proteins (file order), each cut to ``truncate`` residues."""
    from scilm.data.protein import read_proteins

    records = read_proteins(DEEPLOC_VALID, task=None, label_column=None, unique_ids=False)[:n]
    return [(r.id, r.sequence[:truncate]) for r in records]


def _pool(hidden, mask):
    """(B, H) mean over residues (<cls>, <eos>, padding excluded), as a user of plain transformers writes it."""
    import torch

    residues = mask.clone()
    residues[:, 0] = 0
    residues[torch.arange(len(mask)), mask.sum(1) - 1] = 0
    weights = residues.unsqueeze(-1).float()
    return ((hidden.float() * weights).sum(1) / weights.sum(1).clamp(min=1)).numpy()


def run_row(engine: str, model_dir: str, sequences: list[str], budget_s: float, cache: str) -> dict[str, Any]:
    """One row in this process: (N', H) embeddings written beside, speed and peak memory returned."""
    import torch

    start = time.perf_counter()
    note = ""
    out = np.zeros((len(sequences), 0), dtype=np.float32)
    done: list[int] = []
    if engine.startswith("hf-"):
        from transformers import AutoTokenizer, EsmModel

        attn = "eager" if engine.startswith("hf-eager") else "sdpa"
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = EsmModel.from_pretrained(model_dir, attn_implementation=attn, add_pooling_layer=False).eval()
        ready = time.perf_counter()
        out = np.zeros((len(sequences), model.config.hidden_size), dtype=np.float32)
        with torch.inference_mode():
            for at in range(0, len(sequences), HF_BATCH):
                batch = list(range(at, min(at + HF_BATCH, len(sequences))))
                enc = tokenizer([sequences[i] for i in batch], padding=True, return_tensors="pt")
                out[batch] = _pool(model(**enc).last_hidden_state, enc["attention_mask"])
                done += batch
                if time.perf_counter() - start > budget_s:
                    break
    else:
        from scilm.inference import embed_proteins
        from scilm.inference.batching import length_sorted_batches
        from scilm.inference.precision import apply_mode, prepare_for_inference
        from scilm.models.protein import load_protein_encoder

        os.environ["SCILM_CACHE_DIR"] = cache
        model, tokenizer = load_protein_encoder(model_dir)
        mode = engine.removeprefix("scilm-").removesuffix("-cached")
        if mode == "auto":
            from importlib.util import find_spec

            quantize = "int8" if find_spec("torchao") else "none"
            model, plan = prepare_for_inference(model, tokenizer, sequences, "auto", quantize)
            note = f"chose {plan.mode}" + (" (cached ranking)" if plan.cached else " (probe run)")
        else:
            model = apply_mode(model, mode)
        ready = time.perf_counter()
        out = np.zeros((len(sequences), model.config.hidden_size), dtype=np.float32)
        for batch in length_sorted_batches([len(s) for s in sequences], SCILM_BATCH):  # embed's own order
            out[batch] = embed_proteins(model, tokenizer, [sequences[i] for i in batch], len(batch))
            done += batch
            if time.perf_counter() - start > budget_s:
                break
    end = time.perf_counter()
    residues = sum(len(sequences[i]) for i in done)
    if len(done) < len(sequences):
        note = (note + "; " if note else "") + f"time budget: {len(done)} of {len(sequences)} proteins"
    return {"engine": engine, "compute_residues_per_s": residues / (end - ready), "prepare_s": ready - start,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "n_proteins": len(done), "residues": residues, "note": note, "done": sorted(done), "_out": out}


def _child(args: dict[str, Any]) -> None:
    row = run_row(args["engine"], args["model_dir"], args["sequences"], args["budget_s"], args["cache"])
    np.save(args["embeddings"], row.pop("_out"))
    print(json.dumps(row))


def _run_child(engine: str, model_dir: Path, sequences: list[str], budget_s: float, work: Path) -> dict[str, Any]:
    args = {"engine": engine, "model_dir": str(model_dir), "sequences": sequences, "budget_s": budget_s,
            "cache": str(work / "cache"), "embeddings": str(work / f"{engine}.npy")}
    (work / f"{engine}.args.json").write_text(json.dumps(args))
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "scilm.bench.inference", str(work / f"{engine}.args.json")],
                          capture_output=True, text=True, env=os.environ.copy())
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"engine": engine, "residues_per_s": None, "peak_rss_mb": None, "note": f"failed: {tail}"}
    wall = time.perf_counter() - started
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    row["seconds"] = wall  # the whole process: Python, imports, load, probe, embedding
    row["residues_per_s"] = row["residues"] / wall
    row["_embeddings"] = np.load(work / f"{engine}.npy")
    return row


def esm_cpp_available() -> bool:
    """Whether the esm.cpp engine (PyPI ``esm-cpp``) is importable here; its bench row is skipped otherwise."""
    from importlib.util import find_spec

    return find_spec("esm_cpp") is not None


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N,) cosine of row i of ``a`` to row i of ``b``."""
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def machine_line() -> str:
    """CPU model, ISA flags that matter for bf16/int8, cores, RAM, torch."""
    from scilm.inference.precision import cpu_description

    cpu = cpu_description()
    name = machine_name()
    if cpu["cpu"] not in name:
        name = f"{cpu['cpu']}; {name}"
    return f"{name}; ISA flags: {', '.join(cpu['isa']) or 'none of those listed'}"


def write_outputs(out: Path, rows: list[dict[str, Any]], model: str, command: str, proteins: int,
                  residues: int) -> str:
    """``results.json`` (the rows), ``table.md`` (machine, command, table) and ``inference.png``; returns the table."""
    out.mkdir(parents=True, exist_ok=True)
    base = next((r["residues_per_s"] for r in rows if r["engine"] == "hf-eager-fp32" and r.get("residues_per_s")), None)
    header = ["engine", "residues/s", "x hf-eager-fp32", "residues/s after load", "load + prepare (s)",
              "peak RSS (MB)", "guard cosine (min)", "proteins", "note"]
    table_rows = []
    for r in rows:
        speed = r.get("residues_per_s")
        table_rows.append([
            r["engine"], "-" if speed is None else f"{speed:,.0f}",
            "-" if speed is None or not base else f"{speed / base:.2f}",
            "-" if r.get("compute_residues_per_s") is None else f"{r['compute_residues_per_s']:,.0f}",
            "-" if r.get("prepare_s") is None else f"{r['prepare_s']:.1f}",
            "-" if r.get("peak_rss_mb") is None else f"{r['peak_rss_mb']:,.0f}",
            "-" if r.get("guard_cosine") is None else f"{r['guard_cosine']:.5f}",
            r.get("n_proteins", "-"), r.get("note", "")])
    machine = machine_line()
    table = "\n".join([f"Machine: {machine}.", f"Command: `{command}`.",
                       f"Model: {model} shape, random weights; {proteins} DeepLoc-1 validation proteins, "
                       f"{residues:,} residues. residues/s: the whole process (Python start-up, imports, "
                       "loading, any probe); after load: from the model ready to the last embedding.", "", markdown_table(header, table_rows), ""])
    clean = [{k: v for k, v in r.items() if not k.startswith("_") and k != "done"} for r in rows]
    write_json_atomic(out / "results.json", {"machine": machine, "command": command, "model": model, "rows": clean})
    write_text_atomic(out / "table.md", table)
    _chart(out / "inference.png", rows, model)
    return table


def _chart(path: Path, rows: list[dict[str, Any]], model: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in rows if r.get("residues_per_s")]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(shown) + 1.2))
    ax.barh(range(len(shown)), [r["residues_per_s"] for r in shown],
            color=["#3b7dd8" if r["engine"].startswith("scilm") else "#777" for r in shown])
    ax.set_yticks(range(len(shown)), [r["engine"] for r in shown])
    ax.invert_yaxis()
    ax.set_xlabel("residues / s (start-up included)")
    ax.set_title(f"ESM-2 embedding, {model} shape")
    for i, r in enumerate(shown):
        ax.text(r["residues_per_s"], i, f" {r['residues_per_s']:,.0f}", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_inference_bench(out: Path, model: str = "esm2-35m", quick: bool = False, command: str = "",
                        n_proteins: int | None = None, truncate: int | None = None,
                        budget_s: float | None = None) -> str:
    """Build the model, run every row in its own process, write the outputs; returns the Markdown table."""
    import torch
    from transformers import EsmModel

    from scilm.errors import ScilmError
    from scilm.models.protein import PROTEIN_PRESETS, esm2_config, esm2_tokenizer
    from scilm.models.saving import save_model

    if model not in PROTEIN_PRESETS:
        raise ScilmError(f"--model must be one of {', '.join(MODELS)} (got {model!r})")
    n_proteins = n_proteins or (16 if quick else 64)
    truncate = truncate or (200 if quick else 512)
    budget_s = budget_s or (90.0 if quick else 600.0)
    work = Path(out) / f".work-{os.getpid()}"  # removed at the end; nothing of the user's is touched
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model_dir = work / "model"
    save_model(EsmModel(esm2_config(model), add_pooling_layer=False), model_dir)
    esm2_tokenizer().save_pretrained(str(model_dir))
    proteins = bench_proteins(n_proteins, truncate)
    sequences = [s for _, s in proteins]
    # scilm-auto: first run on this machine (empty cache, probe included); scilm-auto-cached: the next run
    engines = ["hf-eager-fp32", "hf-sdpa-fp32", *[f"scilm-{m}" for m in SCILM_MODES], "scilm-auto", "scilm-auto-cached"]
    from importlib.util import find_spec

    rows = []
    for engine in engines:
        if engine == "scilm-int8" and not find_spec("torchao"):
            rows.append({"engine": engine, "residues_per_s": None, "note": "skipped: torchao not installed"})
            continue
        rows.append(_run_child(engine, model_dir, sequences, budget_s, work))
    rows.append({"engine": "esm.cpp", "residues_per_s": None,
                 "note": "not run: esm.cpp rows are not wired yet" if esm_cpp_available()
                 else "skipped: esm_cpp not importable (esm-cpp 0.2.1 needs numpy<2)"})
    reference = next(r for r in rows if r["engine"] == "scilm-fp32")
    for r in rows:
        if "_embeddings" in r and "_embeddings" in reference:
            common = sorted(set(r["done"]) & set(reference["done"]))
            if common:
                r["guard_cosine"] = float(cosine_rows(r["_embeddings"][common], reference["_embeddings"][common]).min())
    table = write_outputs(Path(out), rows, model, command, len(sequences), sum(map(len, sequences)))
    import shutil

    shutil.rmtree(work, ignore_errors=True)  # the bench's own scratch: model, per-row embeddings, cache
    return table


if __name__ == "__main__":
    _child(json.loads(Path(sys.argv[1]).read_text()))
