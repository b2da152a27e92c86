"""``scilm bench serve``: a bounded load test of ``scilm serve`` on loopback, batching on vs off.

For each mode a real server process is started on 127.0.0.1; closed-loop clients (1, 8, 32 at
a time, each sending its next request when the last one is answered) send a fixed number of
single-protein requests; throughput, p50/p99 latency, errors and the server's mean micro-batch
size (from /metrics) are recorded, and the server's RSS is sampled over the whole run. Nothing
runs open-ended: every level sends a fixed request count, each request has a timeout.

Without ``--model`` a classifier with the esm2-8m shape (random weights) is saved first: the
per-forward cost of the smallest released ESM-2, so the numbers mean something.

With ``precision`` / ``quantize`` (``scilm serve --precision auto --quantize int8``), a third server,
batching on, runs in the fast path; the mode it chose (its log's ``serving in ...`` line) is in its
rows, and the table gives its throughput and p50/p99 against fp32's at each level.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import statistics
import threading
import time
from pathlib import Path

import httpx
import psutil

from scilm.bench.report import machine_name, markdown_table
from scilm.data.protein import BUNDLED_DEEPLOC1

LEVELS = (1, 8, 32)
MAX_RESIDUES = 512  # the published recipe keeps proteins up to 512 residues
BUNDLED = BUNDLED_DEEPLOC1 / "train.fasta"


def save_random_classifier(out: Path, preset: str = "esm2-8m", labels=("soluble", "membrane"), seed: int = 0) -> Path:
    """An ESM-2 classifier of ``preset``'s shape with random weights, saved like ``scilm train`` does."""
    import torch
    from transformers import EsmForSequenceClassification

    from scilm.models.protein import esm2_config, esm2_tokenizer

    torch.manual_seed(seed)
    config = esm2_config(preset, num_labels=len(labels), id2label=dict(enumerate(labels)),
                         label2id={name: i for i, name in enumerate(labels)})
    model = EsmForSequenceClassification(config)
    from scilm.models.saving import save_model

    save_model(model, out)  # safetensors, hub tensor names
    esm2_tokenizer().save_pretrained(str(out))
    return out


def bench_sequences(n: int, seed: int = 0) -> list[str]:
    """``n`` real proteins (bundled DeepLoc-1), cut to MAX_RESIDUES, in a seeded random order."""
    from scilm.data.protein import read_proteins

    sequences = [r.sequence[:MAX_RESIDUES] for r in read_proteins(BUNDLED, task="membrane")]
    random.Random(seed).shuffle(sequences)
    return (sequences * (n // len(sequences) + 1))[:n]


class RssSampler:
    """The server process's resident memory every ``every`` seconds, in a thread."""

    def __init__(self, pid: int, every: float = 0.25):
        self.process, self.every, self.samples = psutil.Process(pid), every, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                self.samples.append(self.process.memory_info().rss / 2**20)
            except psutil.Error:
                return
            self._stop.wait(self.every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _batch_stats(metrics_text: str) -> tuple[float, float]:
    """(model calls, inputs) so far, from the server's Prometheus text."""
    def value(name: str) -> float:
        match = re.search(rf"^{name} ([0-9.e+]+)$", metrics_text, re.M)
        return float(match.group(1)) if match else 0.0
    return value("scilm_batch_size_count"), value("scilm_batch_size_sum")


async def _load(url: str, clients: int, n_requests: int, sequences: list[str]) -> dict:
    """``clients`` closed-loop clients share ``n_requests`` requests; latencies in ms."""
    latencies: list[float] = []
    errors: list[str] = []
    queue = list(range(n_requests))
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        async def one_client():
            while queue:
                i = queue.pop()
                start = time.perf_counter()
                try:
                    response = await client.post("/predict", json={"inputs": sequences[i % len(sequences)]})
                    if response.status_code != 200:
                        errors.append(f"{response.status_code}: {response.text[:200]}")
                except httpx.HTTPError as exc:
                    errors.append(repr(exc))
                latencies.append((time.perf_counter() - start) * 1000)

        start = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(clients)))
        seconds = time.perf_counter() - start
    latencies.sort()
    return {"requests": n_requests, "errors": len(errors), "error_examples": errors[:3],
            "seconds": round(seconds, 3), "throughput_rps": round(n_requests / seconds, 2),
            "p50_ms": round(statistics.median(latencies), 1),
            "p99_ms": round(latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 1)}


def _requests_at(clients: int, quick: bool) -> int:
    return max(24, clients * 4) if quick else max(64, clients * 16)


def _memory_summary(warm: float, samples: list[float]) -> dict:
    """Flat: the last quarter's peak within 10 % (or 64 MiB) of the peak after warm-up.

    The warm-up runs the largest level once, so the allocator has already grown to the biggest
    batches; growth after that is what a leak would look like.
    """
    last = max(samples[-max(1, len(samples) // 4):])
    return {"rss_start_mb": round(warm, 1), "rss_end_mb": round(last, 1), "rss_peak_mb": round(max(samples), 1),
            "rss_flat": last - warm <= max(0.10 * warm, 64.0), "rss_samples": len(samples)}


FP32 = "fp32"  # the server's mode without --precision/--quantize


def served_mode(log_text: str) -> tuple[str, str]:
    """(mode, the whole choice) from a server log's ``serving in precision <mode> (...)`` line, written
    by :func:`scilm.serving.models.load_served_model` from :meth:`InferencePlan.summary`; fp32 without one.

    >>> served_mode("INFO serving in precision int8-fbgemm (probe s/pass: fp32 0.5, int8-fbgemm 0.3)")
    ('int8-fbgemm', 'precision int8-fbgemm (probe s/pass: fp32 0.5, int8-fbgemm 0.3)')
    """
    found = re.findall(r"serving in (precision (\S+).*)", log_text)
    return (found[-1][1], found[-1][0].strip()) if found else (FP32, FP32)


def _server_label(fast: tuple[str, str] | None, mode: str) -> str:
    """The table's and chart's name of a server: fp32, or its flags and the mode they chose."""
    return FP32 if fast is None else f"{fast[0]}+{fast[1]} -> {mode}"


def _bench_mode(model: Path, batching: bool, quick: bool, sequences: list[str], out: Path,
                fast: tuple[str, str] | None = None) -> list[dict]:
    """Rows of one server: batching on/off; ``fast`` = (precision, quantize) for the fast-path server."""
    from scilm.serving.local import server_process

    mode = "on" if batching else "off"
    args = ("--max-batch-size", "32", "--max-wait-ms", "5") if batching else ("--no-batching",)
    if fast:
        args += ("--precision", fast[0], "--quantize", fast[1])
    log = out / f"server-batching-{mode}{'-fast' if fast else ''}.log"
    rows = []
    with server_process(model, args=args, log=log) as (url, process):
        with RssSampler(process.pid) as warm_up:  # the largest level once, not measured
            asyncio.run(_load(url, LEVELS[-1], _requests_at(LEVELS[-1], True), sequences))
        with RssSampler(process.pid) as sampler:
            for clients in LEVELS:
                calls_before, inputs_before = _batch_stats(httpx.get(f"{url}/metrics").text)
                row = asyncio.run(_load(url, clients, _requests_at(clients, quick), sequences))
                calls, inputs = _batch_stats(httpx.get(f"{url}/metrics").text)
                row.update(batching=mode, clients=clients,
                           mean_batch=round((inputs - inputs_before) / max(1.0, calls - calls_before), 2))
                rows.append(row)
        memory = _memory_summary(max(warm_up.samples), sampler.samples)
    mode_name, detail = FP32, FP32
    if fast:
        text = log.read_text(encoding="utf-8", errors="replace")
        mode_name, detail = served_mode(text) if "serving in precision" in text else (
            "unknown", f"unknown: no 'serving in precision' line in {log}")
    for row in rows:
        row.update(memory, server=_server_label(fast, mode_name), server_mode=mode_name, server_mode_detail=detail,
                   server_args=" ".join(args))
    return rows


def chart_series(rows: list[dict]) -> dict[tuple[str, str], tuple[str, list[dict]]]:
    """One line per server: (batching, server) -> (legend label, its rows in order); fp32 servers first."""
    servers = sorted({(r["batching"], r.get("server", FP32)) for r in rows}, key=lambda s: (s[1] != FP32, s))
    return {s: (f"batching {s[0]}" + ("" if s[1] == FP32 else f", {s[1]}"),
                [r for r in rows if (r["batching"], r.get("server", FP32)) == s]) for s in servers}


def save_chart(path: Path, rows: list[dict]) -> None:
    """A PNG at ``path``: throughput (requests/s) and p99 latency (ms) against concurrent clients, batching on/off.

    ``rows`` are the benchmark's, each with ``batching`` (``"on"``/``"off"``), ``clients``,
    ``throughput_rps`` and ``p99_ms`` (and ``server``, fp32 when absent: one line per server).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    colors = {("on", FP32): "#3b7dd8", ("off", FP32): "#777"}
    for server, (label, picked) in chart_series(rows).items():
        clients = [r["clients"] for r in picked]
        color = colors.get(server, "#d8673b")
        axes[0].plot(clients, [r["throughput_rps"] for r in picked], "o-", color=color, label=label)
        axes[1].plot(clients, [r["p99_ms"] for r in picked], "o-", color=color, label=label)
    for ax, title in zip(axes, ("throughput (requests/s)", "p99 latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(LEVELS), [str(c) for c in LEVELS])
        ax.set_xlabel("concurrent clients")
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def forward_ceiling(model_path: Path, residues: int, batch: int = 16, seconds: float = 3.0) -> dict:
    """Sequences/s of the bare model forward at batch 1 and at ``batch`` (equal lengths, no padding).

    Their ratio is the most any micro-batching can gain on this machine for this model and length,
    whatever the server does: when batch 1 already keeps every core busy it is close to 1.
    """
    import torch

    from scilm.models.protein import load_trained_classifier

    model, _ = load_trained_classifier(str(model_path))
    rates = {}
    for size in (1, batch):
        ids = torch.randint(4, 24, (size, residues + 2))
        with torch.inference_mode():
            model(input_ids=ids)
            started, done = time.perf_counter(), 0
            while time.perf_counter() - started < seconds:
                model(input_ids=ids)
                done += size
        rates[size] = done / (time.perf_counter() - started)
    return {"residues": residues, "batch": batch, "batch1_seq_per_s": round(rates[1], 2),
            f"batch{batch}_seq_per_s": round(rates[batch], 2), "ratio": round(rates[batch] / rates[1], 2)}


def _fast_path_lines(fast_rows: list[dict], fp32: dict, precision: str, quantize: str) -> list[str]:
    """Sentences comparing the fast-path server with the fp32 server (both batching on), level by level."""
    lines = ["", f"Fast path (`scilm serve --precision {precision} --quantize {quantize}`): the server chose "
                 f"{fast_rows[0]['server_mode_detail']}."]
    for row in fast_rows:
        base = fp32[("on", row["clients"])]
        lines.append(f"- {row['clients']} clients: {row['throughput_rps'] / base['throughput_rps']:.2f}x fp32's "
                     f"throughput; p50 {row['p50_ms']:.0f} vs {base['p50_ms']:.0f} ms, "
                     f"p99 {row['p99_ms']:.0f} vs {base['p99_ms']:.0f} ms")
    return lines


def split_servers(rows: list[dict]) -> tuple[dict[tuple[str, int], dict], list[dict]]:
    """(fp32 servers' rows by (batching, clients), the fast-path server's rows): the latter were started
    with ``--precision``."""
    is_fast = ["--precision" in r.get("server_args", "") for r in rows]
    return ({(r["batching"], r["clients"]): r for r, fast in zip(rows, is_fast) if not fast},
            [r for r, fast in zip(rows, is_fast) if fast])


def render(results: dict) -> str:
    """table.md's text from results.json's content (so a table can be re-drawn from saved measurements)."""
    rows = results["rows"]
    by, fast_rows = split_servers(rows)
    fast = results.get("fast_path") or {}
    header = ["server", "batching", "clients", "requests", "errors", "throughput (req/s)", "p50 (ms)", "p99 (ms)",
              "mean batch", "server RSS after warm-up -> end (MiB)"]
    table_rows = [[r.get("server", FP32), r["batching"], r["clients"], r["requests"], r["errors"],
                   f"{r['throughput_rps']:.1f}", f"{r['p50_ms']:.0f}", f"{r['p99_ms']:.0f}", f"{r['mean_batch']:.1f}",
                   f"{r['rss_start_mb']:.0f} -> {r['rss_end_mb']:.0f} ({'flat' if r['rss_flat'] else 'GROWING'})"]
                  for r in rows]
    return "\n".join([
        f"Machine: {results['machine']}; server torch threads: {results['torch_threads']}; "
        f"CPU {results['cpu_busy_before_percent']:.0f}% busy before the run (other work on the machine).",
        f"Model: {results['model']}; one protein per request, real DeepLoc-1 sequences cut to {MAX_RESIDUES} "
        f"residues (median {results['median_residues']:.0f}).",
        "",
        markdown_table(header, table_rows),
        "",
        f"Batching at 32 clients: {results['speedup_at_32_clients']:.2f}x the unbatched throughput; "
        f"{results['errors']} errors in all.",
        *(_fast_path_lines(fast_rows, by, fast.get("precision"), fast.get("quantize")) if fast_rows else []),
        "",
        "The ceiling: the bare model forward (no server) at batch 16 vs batch 1, equal lengths:",
        *[f"- {c['residues']} residues: {c['batch1_seq_per_s']:.1f} -> {c['batch16_seq_per_s']:.1f} sequences/s "
          f"({c['ratio']:.2f}x)" for c in results["forward_ceiling"]],
        "No micro-batcher can beat that ratio on this machine; where it is near 1 the cores are already "
        "busy at batch 1 and batching only adds padding and waiting.",
    ])


def run_serve_bench(out: Path, model: str | None = None, quick: bool = False, precision: str = "fp32",
                    quantize: str = "none") -> str:
    """Run the load test; write results.json, table.md and serve.png into ``out``; return the table.

    ``precision`` / ``quantize`` other than fp32 / none add the fast-path server (batching on).
    """
    import logging

    import torch

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()  # the server process starts with the same environment
    model_path = Path(model) if model else save_random_classifier(out / "model-esm2-8m-random")
    sequences = bench_sequences(256)
    load_cpu = psutil.cpu_percent(interval=1.0)  # how busy the machine was before we started
    rows = _bench_mode(model_path, True, quick, sequences, out) + _bench_mode(model_path, False, quick, sequences, out)
    fast = (precision, quantize) if (precision, quantize) != ("fp32", "none") else None
    if fast:
        rows += _bench_mode(model_path, True, quick, sequences, out, fast=fast)
    median = int(statistics.median(len(s) for s in sequences))
    ceilings = [forward_ceiling(model_path, n) for n in (median, 50)]  # the bench's proteins; a short peptide

    by, fast_rows = split_servers(rows)
    speedup = by[("on", 32)]["throughput_rps"] / by[("off", 32)]["throughput_rps"]
    errors = sum(r["errors"] for r in rows)
    results = {"machine": machine_name(), "model": str(model) if model else "esm2-8m shape, random weights",
               "quick": quick, "cpu_busy_before_percent": load_cpu, "torch_threads": threads,
               "median_residues": statistics.median(len(s) for s in sequences),
               "speedup_at_32_clients": round(speedup, 2), "errors": errors, "rows": rows,
               "forward_ceiling": ceilings,
               "fast_path": {"precision": precision, "quantize": quantize,
                             "chosen": fast_rows[0]["server_mode_detail"] if fast_rows else None}}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    save_chart(out / "serve.png", rows)

    table = render(results)
    (out / "table.md").write_text(table + "\n", encoding="utf-8")
    return table
