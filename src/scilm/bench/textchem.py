"""``scilm bench textchem``: the per-task results table papers report, on the bundled slices.

Converts the bundled ChEBI-20 / USPTO-50K / paragraph2actions slices (``src/scilm/data/bundled/
textchem``, canonical SMILES, USPTO reaction classes kept), trains ``t5-tiny`` for a few minutes
(``scilm bench textchem --out docs/bench/textchem`` wrote the committed table), and evaluates the test split the way the papers do:
10-beam top-1/3/5/10 exact match (canonical), retrosynthesis round trip through the same
multi-task model as forward model, coverage (``n_failed``), and the spread of every metric over
random re-spellings of the input SMILES. Writes ``results.json``, ``table.md`` and ``topk.png``.

What it measures is the pipeline on this machine, not the method: a 1M-parameter model trained
for minutes on CPU; the released checkpoints are 60M-220M parameters trained for days on GPUs.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from scilm._extras import optional_extra
from scilm.bench.report import machine_name, markdown_table
from scilm.data.textchem import TASKS, read_jsonl, write_jsonl
from scilm.io import write_json_atomic, write_text_atomic

BUNDLED = Path(__file__).resolve().parents[1] / "data" / "bundled" / "textchem"


@dataclass(frozen=True)
class TextChemBenchSettings:
    """The bench's knobs; ``for_mode(quick)`` gives the two presets."""

    steps: int = 900
    batch_size: int = 16
    lr: float = 2e-3
    vocab_size: int = 1000
    max_source_length: int = 256
    max_target_length: int = 256
    per_task: int = 20  # test examples per task evaluated
    num_beams: int = 10
    top_k: tuple[int, ...] = (1, 3, 5, 10)
    max_length: int = 160  # generated tokens at most
    spellings: int = 3  # --randomize-inputs
    seed: int = 0
    test_fraction: float = 0.1
    valid_fraction: float = 0.05
    threads: int = 1  # intra-op threads (on 2 shared cores one is faster than two)

    @classmethod
    def for_mode(cls, quick: bool, **overrides) -> "TextChemBenchSettings":
        """The settings of a ``quick`` or full run, with ``overrides`` (those not None) applied."""
        base = cls(steps=300, per_task=6, num_beams=5, top_k=(1, 3, 5), max_length=96, spellings=2) if quick else cls()
        return cls(**{**asdict(base), **{k: v for k, v in overrides.items() if v is not None}})


def _pooled(out: Path, kind: str) -> Path:
    """paragraph2actions train+valid+test in one file (each line ends in a newline)."""
    lines = [line for split in ("train", "valid", "test")
             for line in (BUNDLED / f"p2a-{kind}-{split}.txt").read_text(encoding="utf-8").splitlines()]
    path = out / f"p2a-{kind}.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def run_textchem_bench(out: Path, settings: TextChemBenchSettings, command: str) -> str:
    """Convert, train, evaluate; write results.json, table.md and topk.png in ``out``; return the table."""
    import torch

    from scilm.data.textchem import convert_textchem
    from scilm.inference.generate import evaluate_command
    from scilm.training import TrainConfig, train
    from scilm.training.common import library_versions

    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(settings.threads)
    started = time.perf_counter()
    conversion = convert_textchem(
        out / "data", chebi20=BUNDLED / "chebi20-validation-400.txt",
        uspto=(BUNDLED / "uspto50k-valid_sources-600.txt", BUNDLED / "uspto50k-valid_targets-600.txt"),
        paragraph2actions=(_pooled(out, "src"), _pooled(out, "tgt")), canonicalize=True,
        keep_reaction_class=True, valid_fraction=settings.valid_fraction, test_fraction=settings.test_fraction,
        seed=settings.seed)
    test = read_jsonl(out / "data" / "test.jsonl")
    sliced = [e for task in TASKS for e in [e for e in test if e.task == task][:settings.per_task]]
    write_jsonl(out / "test-slice.jsonl", sliced)

    run = out / "run"
    training = train(TrainConfig(
        data=str(out / "data" / "train.jsonl"), valid=str(out / "data" / "valid.jsonl"), model="t5-tiny",
        out=str(run), overwrite=True, max_steps=settings.steps, batch_size=settings.batch_size, lr=settings.lr,
        warmup_ratio=0.05, max_source_length=settings.max_source_length,
        max_target_length=settings.max_target_length, tokenizer_vocab_size=settings.vocab_size,
        seed=settings.seed, progress=False))
    trained = time.perf_counter()
    evaluation = evaluate_command(
        model=str(run / "model"), data=out / "test-slice.jsonl", out=out / "eval" / "metrics.json", predictions=None,
        num_beams=settings.num_beams, max_length=settings.max_length, batch_size=16, top_k=settings.top_k,
        forward_model=str(run / "model"), randomize_inputs=settings.spellings, seed=settings.seed)
    finished = time.perf_counter()
    with optional_extra("chem"):
        from rdkit import __version__ as rdkit_version

    results = {
        "command": command, "machine": machine_name(), "versions": {**library_versions(), "rdkit": rdkit_version},
        "settings": asdict(settings), "conversion": {k: conversion[k] for k in ("examples", "skipped", "splits", "tasks",
                                                                               "reaction_classes")},
        "training": {k: training.get(k) for k in ("eval_loss", "train_runtime_s", "n_train", "n_eval", "vocab_size",
                                                  "peak_memory_mb")},
        "evaluation": evaluation,
        "seconds": {"convert_and_train": trained - started, "evaluate": finished - trained, "total": finished - started},
    }
    write_json_atomic(out / "results.json", results)
    table = report(results)
    write_text_atomic(out / "table.md", table + "\n")
    save_topk_chart(out / "topk.png", evaluation, settings.top_k)
    return table


def _spread(robustness: dict, task: str, name: str) -> str:
    found = robustness.get("tasks", {}).get(task, {}).get(name)
    if not found:
        return ""
    return f"{found['mean']:.3f} ± {found['sd']:.3f} [{found['min']:.3f}, {found['max']:.3f}]"


HEADLINE = {"smiles-to-caption": ("bleu2", "BLEU-2"), "text-to-smiles": ("validity", "validity"),
            "paragraph-to-actions": ("bleu2", "BLEU-2"), "forward-prediction": ("validity", "validity"),
            "retrosynthesis": ("validity", "validity")}


def report(results: dict[str, Any]) -> str:
    """The Markdown: per-task table (top-k, round trip, coverage, spread), the command and the versions."""
    evaluation, settings = results["evaluation"], results["settings"]
    ks = settings["top_k"]
    robustness = evaluation.get("robustness", {})
    header = ["task", "n", *[f"top-{k}" for k in ks], "round trip", "coverage (failed)", "other metric",
              f"top-1 over {settings['spellings']} spellings (mean ± sd [min, max])", "ROUGE-2 / BLEU-2 over spellings"]
    rows = []
    for task in TASKS:
        values = evaluation["tasks"].get(task)
        if values is None:
            continue
        name, label = HEADLINE[task]
        rows.append([
            task, values["n_examples"], *[f"{values[f'top_{k}']:.3f}" if f"top_{k}" in values else "" for k in ks],
            f"{values['round_trip']:.3f}" if "round_trip" in values else "",
            f"{values['coverage']:.3f} ({values['n_failed']})",
            f"{label} {values[name]:.3f}" if isinstance(values.get(name), float) else "",
            _spread(robustness, task, "top_1"),
            _spread(robustness, task, "rouge2" if task == "smiles-to-caption" else "bleu2" if task.startswith("para") else ""),
        ])
    versions = results["versions"]
    shown = ", ".join(f"{k} {versions[k]}" for k in ("python", "torch", "transformers", "rdkit", "scilm") if k in versions)
    training = results["training"]
    seconds = results["seconds"]
    return "\n".join([
        f"`{results['command']}` on {results['machine']} ({shown}).",
        "",
        f"t5-tiny trained {settings['steps']} steps of {settings['batch_size']} ({training['train_runtime_s']:.0f} s, "
        f"validation loss {training['eval_loss']:.3f} on {training['n_eval']} examples), then {settings['num_beams']}-beam "
        f"search on the first {settings['per_task']} test examples of each task; round trip through the same model's "
        f"forward prediction; spread over {settings['spellings']} RDKit random re-spellings of each input SMILES "
        f"(seed {settings['seed']}). Convert + train {seconds['convert_and_train']:.0f} s, evaluate "
        f"{seconds['evaluate']:.0f} s.",
        "",
        markdown_table(header, rows),
        "",
        "Captions have no top-k (no exact answer); text-to-SMILES and paragraph-to-actions inputs are text, so "
        "they have no re-spelling spread.",
    ])


def save_topk_chart(path: Path, evaluation: dict[str, Any], ks: tuple[int, ...]) -> None:
    """Grouped bars: top-k per task (and round trip), error bars = sd of top-1 over re-spellings."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in TASKS if "top_1" in evaluation["tasks"].get(t, {})]
    robustness = evaluation.get("robustness", {}).get("tasks", {})
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / (len(ks) + 1)
    for j, k in enumerate(ks):
        values = [evaluation["tasks"][t][f"top_{k}"] for t in tasks]
        errors = [robustness.get(t, {}).get(f"top_{k}", {}).get("sd") or 0.0 for t in tasks]
        ax.bar([i + j * width for i in range(len(tasks))], values, width, yerr=errors, capsize=2, label=f"top-{k}")
    round_trip = [evaluation["tasks"][t].get("round_trip", 0.0) for t in tasks]
    ax.bar([i + len(ks) * width for i in range(len(tasks))], round_trip, width, label="round trip", color="#555")
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(tasks))], tasks, fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of test examples")
    ax.set_title("Text+Chem top-k exact match (canonical SMILES / exact actions); bars: sd over re-spellings")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
