"""``scilm bench inference``: ESM-2 embedding throughput side by side, same weights and proteins (issue 16).

Rows (each run in its own process, so its peak memory is its own and start-up counts):

- ``hf-eager-fp32``: plain transformers as a user writes it: file order, padded batches of 8, eager
  attention, mean over residues;
- ``hf-sdpa-fp32``: the same with PyTorch's scaled-dot-product attention;
- ``scilm-<mode>``: ``scilm embed``'s code (length-sorted batches) forced into each mode of
  :mod:`scilm.inference.precision` (``fp32``, ``bf16``, ``bf16-weights``, ``int8`` = torchao,
  ``int8-fbgemm`` = PyTorch's FBGEMM kernel), each with its guard cosine to ``scilm-fp32``;
- ``scilm-embed-auto``: the command a user runs, ``scilm embed --precision auto --quantize int8``, as a
  process (the probe included, on an empty cache: the first run on a machine) and
  ``scilm-embed-auto-cached``: the same command again (the cached ranking);
- ``esm.cpp-fp32`` / ``esm.cpp-int8``: esm.cpp 0.2.1 (PyPI ``esm-cpp``) run by an interpreter that has it
  (``esm_cpp_python``; esm-cpp needs numpy < 2, so usually a separate venv: ``scripts/esm_cpp_venv.sh``),
  on the same safetensors file (saved with the hub's names, :mod:`scilm.bench.esm_cpp_row`); skipped,
  said so, when no interpreter has it.

The model is a random-weight ESM-2 masked LM of the chosen preset shape (built offline, saved in the
hub's exact format); proteins are the bundled DeepLoc-1 validation set, cut to ``truncate`` residues.
``residues_per_s`` is residues embedded / the whole process's wall time (Python start-up, imports,
loading, any probe); ``compute_residues_per_s`` counts from the model ready. ``guard_cosine`` is the
smallest per-protein cosine of the row's embeddings to ``scilm-fp32``'s. A row over its time budget
stops after the batch that crosses it and reports the proteins it measured (``n_proteins``); its
speed is then of a prefix of the set (esm.cpp's rows have a shorter budget: on CPUs without AVX-512
its kernels are scalar and would take hours).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from scilm.bench.report import machine_name, markdown_table
from scilm.data.protein import BUNDLED_DEEPLOC1
from scilm.io import write_json_atomic, write_text_atomic

DEEPLOC_VALID = BUNDLED_DEEPLOC1 / "valid.fasta"
MODELS = ("esm2-8m", "esm2-35m", "esm2-150m")
SCILM_MODES = ("fp32", "bf16", "bf16-weights", "int8", "int8-fbgemm")
ESM_CPP_MODES = ("fp32", "int8")
ESM_CPP_GUARD = 4  # proteins whose esm.cpp embeddings are compared with scilm-fp32's
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
        from transformers import AutoTokenizer, EsmModel, logging as hf_logging

        hf_logging.set_verbosity_error()  # the masked LM's unused lm_head is expected here

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
        from scilm.inference.precision import apply_mode
        from scilm.models.protein import load_protein_encoder

        os.environ["SCILM_CACHE_DIR"] = cache
        model, tokenizer = load_protein_encoder(model_dir)
        model = apply_mode(model, engine.removeprefix("scilm-"))
        ready = time.perf_counter()
        out = np.zeros((len(sequences), model.config.hidden_size), dtype=np.float32)
        for batch in length_sorted_batches([len(s) for s in sequences], SCILM_BATCH):  # outer batches for the time budget; embed_proteins splits each as embed does
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


AGREEMENT_GUARD = 99.5  # issue 16: predicted labels identical on >= 99.5 % of DeepLoc validation proteins


def label_agreement(model_dir: str | Path, data: str | Path = DEEPLOC_VALID, batch_size: int = 32
                    ) -> list[dict[str, Any]]:
    """For a trained single-label classifier, each mode's predicted labels against fp32's on ``data``.

    One row per mode of :data:`SCILM_MODES` that runs here: ``labels_identical_percent`` (proteins whose
    argmax label in the bare mode equals fp32's), ``answered_identical_percent`` (the same, as ``predict``
    and ``serve`` answer: the proteins near a decision boundary recomputed in fp32,
    :class:`~scilm.inference.precision.Fp32Fallback`, its delta measured on the probe batch of the first
    ``PROBE_POOL`` proteins, as :func:`~scilm.inference.precision.prepare_for_inference` does for predict), ``recomputed_percent`` (proteins
    recomputed), ``max_probability_change`` (largest absolute change of any class probability, bare mode),
    ``meets_guard`` (answered labels identical on at least :data:`AGREEMENT_GUARD` percent). Proteins are
    fed under the model's own policy and length, as ``scilm predict`` does. Raises ScilmError for a model
    that is not a single-label classifier.
    """
    from importlib.util import find_spec

    from scilm.data.protein import read_proteins
    from scilm.errors import ScilmError
    from scilm.inference import predict as P
    from scilm.inference.policy import model_policy
    from scilm.inference.precision import (PROBE_POOL, apply_mode, fbgemm_available, fp32_near_boundary,
                                           probe_logit_change, with_fp32_fallback)
    from scilm.models.protein import is_per_residue, load_trained_classifier

    net, tokenizer = load_trained_classifier(str(model_dir))
    if P.is_regression(net.config) or P.multilabel_thresholds(net.config) or is_per_residue(net.config):
        raise ScilmError(f"guard model {model_dir}: label agreement needs a single-label classifier")
    sequences = [r.sequence for r in read_proteins(data, task=None, label_column=None, unique_ids=False)]
    policy = model_policy(net.config, tokenizer)

    def logits_of(model, rows=None):  # (N or len(rows), C) float32
        chosen = sequences if rows is None else [sequences[i] for i in rows]
        return P.policy_logits(model, tokenizer, chosen, policy, batch_size)

    reference = logits_of(net)
    labels, probabilities = reference.argmax(1), reference.softmax(1)
    rows = []
    for mode in SCILM_MODES[1:]:
        if (mode == "int8" and not find_spec("torchao")) or (mode == "int8-fbgemm" and not fbgemm_available()):
            continue
        model = apply_mode(net, mode)  # a copy or wrapper: net stays fp32
        bare = logits_of(model)
        delta = probe_logit_change(model, net, tokenizer, [s[: policy.max_residues] for s in sequences[:PROBE_POOL]])
        fallback = with_fp32_fallback(model, net, delta).scilm_fp32_fallback
        answered = fp32_near_boundary(model, bare, lambda reference_model, rows: logits_of(reference_model, rows))
        percent = 100.0 * int((bare.argmax(1) == labels).sum()) / len(sequences)  # exact: 199/200 is 99.5
        answered_percent = 100.0 * int((answered.argmax(1) == labels).sum()) / len(sequences)
        rows.append({"mode": mode, "labels_identical_percent": percent, "n_proteins": len(sequences),
                     "answered_identical_percent": answered_percent, "fallback_delta": delta,
                     "recomputed_percent": 100.0 * fallback.recomputed / max(1, len(sequences)),
                     "max_probability_change": float((bare.softmax(1) - probabilities).abs().max()),
                     "meets_guard": answered_percent >= AGREEMENT_GUARD})
        del model
    return rows


def agreement_table(rows: list[dict[str, Any]], model_dir: str | Path) -> str:
    """Markdown table of :func:`label_agreement` rows."""
    from scilm.inference.precision import FALLBACK_SAFETY

    body = [[r["mode"], f"{r['labels_identical_percent']:.2f}", f"{r['answered_identical_percent']:.2f}",
             f"{r['recomputed_percent']:.1f}", f"{r['max_probability_change']:.4f}",
             "yes" if r["meets_guard"] else "no"] for r in rows]
    return (f"Predicted labels against fp32, {rows[0]['n_proteins'] if rows else 0} DeepLoc-1 validation proteins, "
            f"model {model_dir}. Bare mode: every protein in the mode; as answered: what `predict` and `serve` "
            f"write, the proteins near a decision boundary recomputed in fp32 (margin {FALLBACK_SAFETY:g}x the largest "
            "logit change on the probe batch):\n\n"
            + markdown_table(["mode", "labels identical, bare mode (%)", "labels identical, as answered (%)",
                              "recomputed in fp32 (%)", "largest probability change (bare)",
                              f">= {AGREEMENT_GUARD} % as answered"], body) + "\n")


def esm_cpp_python(given: str | None = None) -> str | None:
    """The interpreter for esm.cpp's rows: ``given``, else ``$SCILM_ESM_CPP_PYTHON``, else this Python when
    it can import ``esm_cpp``; None when none (the rows are then skipped, said so)."""
    from importlib.util import find_spec

    chosen = given or os.environ.get("SCILM_ESM_CPP_PYTHON")
    if chosen:
        return chosen
    return sys.executable if find_spec("esm_cpp") is not None else None


def _run_esm_cpp(mode: str, python: str, model_dir: Path, sequences: list[str], budget_s: float,
                 work: Path) -> dict[str, Any]:
    """One esm.cpp row through :mod:`scilm.bench.esm_cpp_row` in ``python``; its guard embeddings attached."""
    engine = f"esm.cpp-{mode}"
    args = {"mode": mode, "weights": str(model_dir / "model.safetensors"), "sequences": sequences,
            "budget_s": budget_s, "guard_n": min(ESM_CPP_GUARD, len(sequences)),
            "embeddings": str(work / f"{engine}.npy")}
    (work / f"{engine}.args.json").write_text(json.dumps(args))
    started = time.perf_counter()
    proc = subprocess.run([python, str(Path(__file__).with_name("esm_cpp_row.py")), str(work / f"{engine}.args.json")],
                          capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"engine": engine, "residues_per_s": None, "peak_rss_mb": None, "note": f"failed: {tail}"}
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    row["seconds"] = wall - row.pop("guard_s")  # the guard's extra passes ran after the clock
    row["residues_per_s"] = row["residues"] / row["seconds"]
    row["engine"] = engine
    row["note"] = f"esm.cpp {row.pop('version')}, ISA {row.pop('isa')}, {row.pop('threads')} threads"
    if row["n_proteins"] < len(sequences):
        row["note"] += f"; time budget: {row['n_proteins']} of {len(sequences)} proteins"
    guard = list(range(args["guard_n"]))
    row["_embeddings"], row["done"], row["_guard_only"] = np.load(args["embeddings"]), guard, True
    return row


def _run_embed_cli(engine: str, model_dir: Path, sequences: list[str], truncate: int, work: Path) -> dict[str, Any]:
    """``scilm embed --precision auto [--quantize int8]`` as a user runs it; the whole process timed."""
    from importlib.util import find_spec

    fasta = work / "proteins.fasta"
    if not fasta.exists():
        fasta.write_text("".join(f">p{i}\n{s}\n" for i, s in enumerate(sequences)))
    out, rss = work / f"{engine}.npy", work / f"{engine}.rss"
    quantize = ["--quantize", "int8"] if find_spec("torchao") else []
    argv = ["embed", "--model", str(model_dir), "--data", str(fasta), "--out", str(out), "--batch-size",
            str(SCILM_BATCH), "--truncate", str(truncate), "--precision", "auto", *quantize, "--no-progress"]
    wrapper = ("import atexit, resource, sys; rss = sys.argv.pop(1); atexit.register(lambda: open(rss, 'w').write("
               "str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))); "
               "sys.argv[0] = 'scilm'; from scilm.cli import main; main()")
    env = {**os.environ, "SCILM_CACHE_DIR": str(work / "cache")}
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", wrapper, str(rss), *argv], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"engine": engine, "residues_per_s": None, "peak_rss_mb": None, "note": f"failed: {tail}"}
    chosen = next((line for line in proc.stderr.splitlines() if line.startswith("precision ")), "precision fp32")
    residues = sum(len(s) for s in sequences)
    return {"engine": engine, "residues_per_s": residues / wall, "seconds": wall, "residues": residues,
            "n_proteins": len(sequences), "peak_rss_mb": float(rss.read_text()) if rss.exists() else None,
            "note": f"`scilm {' '.join(argv[:1] + argv[7:])}`: {chosen}", "done": list(range(len(sequences))),
            "_embeddings": np.load(out)}


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


def flops_per_residue(hidden: int, intermediate: int, layers: int, tokens: Sequence[int]) -> float:
    """Floating-point operations of one ESM-2 encoder forward per residue, without padding.

    Per token of a protein of T tokens (residues + ``<cls>`` + ``<eos>``), per layer: 2 x the Linear
    weights' multiply-adds (query, key, value, output: 4 H^2; feed-forward: 2 H F) and 2 x attention's two
    products (scores and weighted values: 2 T H), i.e. 2 (4 H^2 + 2 H F + 2 T H). Summed over
    ``tokens`` (one T per protein) and divided by residues (T - 2 each). LayerNorm, softmax, GELU,
    the rotary embedding and the embedding look-up are not counted: a lower bound of the work.
    """
    work = sum(t * 2.0 * layers * (4 * hidden * hidden + 2 * hidden * intermediate + 2 * t * hidden) for t in tokens)
    return work / sum(t - 2 for t in tokens)


def fp32_gemm_gflops(hidden: int, intermediate: int, seconds: float = 3.0) -> float:
    """This machine's fp32 matrix-multiply rate (GFLOP/s) at the model's feed-forward shape,
    (4096, H) @ (H, F), with this process's threads: the best of repeated products over ``seconds``."""
    import torch

    a, b = torch.randn(4096, hidden), torch.randn(hidden, intermediate)
    a @ b  # warm-up: MKL's first call allocates
    best, started = float("inf"), time.perf_counter()
    while time.perf_counter() - started < seconds:
        tick = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - tick)
    return 2.0 * 4096 * hidden * intermediate / best / 1e9


def fp32_ceiling(config, sequences: Sequence[str]) -> dict[str, float]:
    """The fastest any fp32 engine could embed ``sequences`` on this machine if every operation ran at
    the matrix-multiply rate of :func:`fp32_gemm_gflops`: ``gflops`` / :func:`flops_per_residue`
    (residues/s; an upper bound: no padding, no elementwise work, no start-up)."""
    gflops = fp32_gemm_gflops(config.hidden_size, config.intermediate_size)
    per_residue = flops_per_residue(config.hidden_size, config.intermediate_size, config.num_hidden_layers,
                                    [len(s) + 2 for s in sequences])
    return {"gemm_gflops": gflops, "mflop_per_residue": per_residue / 1e6,
            "residues_per_s": gflops * 1e9 / per_residue}


def ceiling_line(ceiling: dict[str, float], base: float | None) -> str:
    """One sentence on :func:`fp32_ceiling` and how it compares with hf-eager-fp32's ``base`` residues/s."""
    line = (f"fp32 ceiling (measured in this run): this CPU multiplies fp32 matrices of the model's feed-forward "
            f"shape at {ceiling['gemm_gflops']:.0f} GFLOP/s; one residue costs {ceiling['mflop_per_residue']:.1f} "
            f"MFLOP (Linear layers and attention products, elementwise work not counted), so no fp32 engine "
            f"embeds these proteins faster than {ceiling['residues_per_s']:,.0f} residues/s here")
    if base:
        line += f" ({ceiling['residues_per_s'] / base:.1f}x hf-eager-fp32, start-up not counted)"
    return line + "."


def write_outputs(out: Path, rows: list[dict[str, Any]], model: str, command: str, proteins: int,
                  residues: int, agreement: list[dict[str, Any]] | None = None, guard_model: str | None = None,
                  ceiling: dict[str, float] | None = None) -> str:
    """``results.json`` (the rows, ``label_agreement`` rows when a guard model was given, the
    :func:`fp32_ceiling` when given), ``table.md`` (machine, command, table(s)) and ``inference.png``;
    returns the table."""
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
    if ceiling is not None:
        table += "\n" + ceiling_line(ceiling, base) + "\n"
    if agreement is not None:
        table += "\n" + agreement_table(agreement, guard_model)
    clean = [{k: v for k, v in r.items() if not k.startswith("_") and k != "done"} for r in rows]
    results = {"machine": machine, "command": command, "model": model, "rows": clean}
    if agreement is not None:
        results["label_agreement"] = {"model": str(guard_model), "rows": agreement}
    if ceiling is not None:
        results["fp32_ceiling"] = ceiling
    write_json_atomic(out / "results.json", results)
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
                        budget_s: float | None = None, esm_cpp_interpreter: str | None = None,
                        guard_model: str | None = None) -> str:
    """Build the model, run every row in its own process, write the outputs; returns the Markdown table.

    ``model``: a preset shape; ``n_proteins`` DeepLoc-1 validation proteins cut to ``truncate`` residues
    (defaults 64 x 512, ``quick`` 16 x 200); ``budget_s``: seconds per row before it stops early;
    ``esm_cpp_interpreter``: a Python with ``esm_cpp`` (:func:`esm_cpp_python`); ``guard_model``: a trained
    classifier whose labels in each mode are compared with fp32's (:func:`label_agreement`). Raises
    ScilmError for an unknown shape or a guard model that is not a single-label classifier.
    """
    import torch
    from transformers import EsmForMaskedLM

    from scilm.errors import ScilmError
    from scilm.models.protein import PROTEIN_PRESETS, esm2_config, esm2_tokenizer
    from scilm.models.saving import save_model

    if model not in PROTEIN_PRESETS:
        raise ScilmError(f"--model must be one of {', '.join(MODELS)} (got {model!r})")
    n_proteins = n_proteins or (16 if quick else 64)
    truncate = truncate or (200 if quick else 512)
    budget_s = budget_s or (90.0 if quick else 150.0)
    work = Path(out) / f".work-{os.getpid()}"  # removed at the end; nothing of the user's is touched
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model_dir = work / "model"
    save_model(EsmForMaskedLM(esm2_config(model)), model_dir)  # the hub's format: every engine reads it
    esm2_tokenizer().save_pretrained(str(model_dir))
    proteins = bench_proteins(n_proteins, truncate)
    sequences = [s for _, s in proteins]
    from importlib.util import find_spec

    from scilm.inference.precision import fbgemm_available

    rows = []
    for engine in ["hf-eager-fp32", "hf-sdpa-fp32", *[f"scilm-{m}" for m in SCILM_MODES]]:
        if engine == "scilm-int8" and not find_spec("torchao"):
            rows.append({"engine": engine, "residues_per_s": None, "note": "skipped: torchao not installed"})
        elif engine == "scilm-int8-fbgemm" and not fbgemm_available():
            rows.append({"engine": engine, "residues_per_s": None, "note": "skipped: no FBGEMM in this torch"})
        else:
            rows.append(_run_child(engine, model_dir, sequences, budget_s, work))
    rows.append({"engine": "scilm-packed", "residues_per_s": None,
                 "note": "not available: this transformers' ESM lets packed proteins attend to one another "
                         "(tests/test_precision.py canary); length-sorted batches instead"})
    # the first run on this machine (empty cache: the probe runs), then the same command again (cached)
    rows += [_run_embed_cli(e, model_dir, sequences, truncate, work) for e in ("scilm-embed-auto", "scilm-embed-auto-cached")]
    python = esm_cpp_python(esm_cpp_interpreter)
    for mode in ESM_CPP_MODES:
        if python is None:
            rows.append({"engine": f"esm.cpp-{mode}", "residues_per_s": None,
                         "note": "skipped: no esm_cpp here (scripts/esm_cpp_venv.sh, then --esm-cpp-python)"})
        else:
            rows.append(_run_esm_cpp(mode, python, model_dir, sequences, min(budget_s, 45.0 if quick else 120.0), work))
    reference = next(r for r in rows if r["engine"] == "scilm-fp32")
    for r in rows:
        if "_embeddings" in r and "_embeddings" in reference:
            common = sorted(set(r["done"]) & set(reference["done"]))
            mine = r["_embeddings"] if r.get("_guard_only") else r["_embeddings"][common]
            if common:
                r["guard_cosine"] = float(cosine_rows(mine[: len(common)], reference["_embeddings"][common]).min())
    agreement = label_agreement(guard_model) if guard_model else None
    ceiling = fp32_ceiling(esm2_config(model), sequences)  # alone: every row's process has ended
    table = write_outputs(Path(out), rows, model, command, len(sequences), sum(map(len, sequences)), agreement,
                          guard_model, ceiling)
    import shutil

    shutil.rmtree(work, ignore_errors=True)  # the bench's own scratch: model, per-row embeddings, cache
    return table


if __name__ == "__main__":
    _child(json.loads(Path(sys.argv[1]).read_text()))
