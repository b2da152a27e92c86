"""``scilm bench efficiency``: the five configurations of the published ESM-2 table, side by side.

Two measurements per configuration, because no single model here is both realistic and learnable
in minutes on a CPU:

* **cost** (time per sample, peak memory) on a realistic shape (ESM-2 35M by default, random
  weights): what the switch does to speed and memory;
* **accuracy** from ``esm2-tiny-mlm`` (esm2-tiny that ``scilm pretrain`` pre-trained with masked
  LM on the unlabelled training sequences: the published recipe fine-tunes a pretrained model),
  fine-tuned on the bundled membrane task with each configuration.

Every row is a ``scilm train --config`` run in its own process (a clean peak-memory figure); its
YAML is kept next to the results, so any row can be re-run alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scilm.bench.report import machine_name, markdown_table, save_bar_chart
from scilm.bench.runner import BUNDLED, run_train, write_fasta
from scilm.data.protein import filter_by_length, read_proteins
from scilm.training.common import write_json_atomic

# row name -> switches (TrainConfig fields). "all methods" is every switch at once. Gradient
# accumulation is used the way it saves memory: micro-batches of batch/N, N of them per optimizer
# step, so the effective batch, the number of steps and the learning rate stay those of the base.
METHODS: dict[str, dict[str, Any]] = {
    "base": {},
    "+ gradient accumulation": {"grad_accum": 4},
    "+ gradient checkpointing": {"grad_checkpointing": True},
    "+ LoRA": {"lora": True},
    "all methods": {"class_weights": True, "grad_accum": 4, "grad_checkpointing": True, "lora": True},
}


@dataclass(frozen=True)
class EfficiencySettings:
    """Sizes of the two measurements; ``quick`` trades precision of the figures for time."""

    cost_samples: int  # training samples timed per configuration
    cost_truncate: int  # residues per sequence in the cost runs
    epochs: float  # fine-tuning epochs per accuracy run
    truncate: int  # residues per sequence in the accuracy runs
    lr_full: float = 5e-4  # full fine-tuning
    lr_lora: float = 2e-3  # LoRA wants a larger rate: far fewer, zero-initialised parameters
    # The published r=8 adapts a 1280-wide model; the 128-wide esm2-tiny needs a larger share of its
    # width (measured at truncation 256, 2 epochs: r=8 -> 0.747, r=32 -> 0.780, full fine-tune 0.767).
    lora_r: int = 32
    lora_alpha: int = 64
    batch_size: int = 16
    warm_model: str = "esm2-tiny-mlm"  # the pretrained model the accuracy rows fine-tune

    @classmethod
    def for_mode(cls, quick: bool) -> "EfficiencySettings":
        """The settings of a ``quick`` (a few minutes) or full run."""
        if quick:
            return cls(cost_samples=48, cost_truncate=256, epochs=2, truncate=256)
        return cls(cost_samples=256, cost_truncate=512, epochs=4, truncate=512)


def _optimisation(switches: dict[str, Any], settings: EfficiencySettings) -> dict[str, Any]:
    """Learning rate (and LoRA shape) for a row's switches."""
    if switches.get("lora"):
        return {"lr": settings.lr_lora, "lora_r": settings.lora_r, "lora_alpha": settings.lora_alpha}
    return {"lr": settings.lr_full}


def run_efficiency_bench(
    out: Path,
    quick: bool = False,
    cost_model: str = "esm2-35m",
    settings: EfficiencySettings | None = None,
    train_fasta: Path = BUNDLED / "train.fasta",
    valid_fasta: Path = BUNDLED / "valid.fasta",
    isolate: bool = True,
) -> str:
    """Run every configuration twice (cost, accuracy); write results.json, table.md, chart.png."""
    settings = settings or EfficiencySettings.for_mode(quick)
    out.mkdir(parents=True, exist_ok=True)
    n_train = len(read_proteins(train_fasta))
    n_valid = len(read_proteins(valid_fasta))

    # Cost: the published length window (100-512), enough samples for a stable per-sample time.
    cost_pool = filter_by_length(read_proteins(train_fasta), 100, 512)
    membrane = [r for r in cost_pool if r.label == "membrane"]
    soluble = [r for r in cost_pool if r.label == "soluble"]
    half = settings.cost_samples // 2
    cost_data = write_fasta(out / "cost_train.fasta", membrane[:half] + soluble[: settings.cost_samples - half])
    cost_valid = write_fasta(out / "cost_valid.fasta", membrane[-8:] + soluble[-8:])


    rows = []
    for name, switches in METHODS.items():
        slug = name.strip("+ ").replace(" ", "-").lower()
        accum = switches.get("grad_accum", 1)
        cost = run_train(
            {"data": str(cost_data), "valid": str(cost_valid), "model": cost_model, "out": str(out / "runs" / f"cost-{slug}"),
             "overwrite": True, "batch_size": max(1, 8 // accum), "truncate": settings.cost_truncate,
             "max_steps": max(1, settings.cost_samples // 8),
             "progress": False, **_optimisation(switches, settings), **switches},
            out / "runs" / f"cost-{slug}", isolate,
        )
        accuracy = run_train(
            {"data": str(train_fasta), "valid": str(valid_fasta), "model": settings.warm_model,
             "out": str(out / "runs" / f"acc-{slug}"), "overwrite": True, "batch_size": max(1, settings.batch_size // accum),
             "truncate": settings.truncate, "epochs": settings.epochs, "progress": False,
             **_optimisation(switches, settings), **switches},
            out / "runs" / f"acc-{slug}", isolate,
        )
        rows.append({
            "configuration": name,
            "switches": switches,
            "cost_model": cost_model,
            "cost_samples_per_second": cost["train_samples_per_second"],
            "cost_epoch_time_s": n_train / cost["train_samples_per_second"],  # one epoch of the training file
            "cost_peak_memory_mb": cost["peak_memory_mb"],
            "trainable_parameters": cost["trainable_parameters"],
            "eval_accuracy": accuracy["eval_accuracy"],
            "eval_mcc": accuracy["eval_mcc"],
            "accuracy_run_time_s": accuracy["train_runtime_s"],
            "accuracy_lr": accuracy["config"]["lr"],
        })

    base = rows[0]
    for row in rows:
        row["time_vs_base"] = row["cost_epoch_time_s"] / base["cost_epoch_time_s"]
        row["memory_vs_base"] = row["cost_peak_memory_mb"] / base["cost_peak_memory_mb"]
        row["accuracy_vs_base_points"] = 100 * (row["eval_accuracy"] - base["eval_accuracy"])

    results = {
        "machine": machine_name(),
        "quick": quick,
        "settings": settings.__dict__,
        "warm_model": settings.warm_model,
        "peak_memory_method": cost["peak_memory_method"],
        "rows": rows,
        "command": f"scilm bench efficiency --out {out}" + (" --quick" if quick else ""),
    }
    write_json_atomic(out / "results.json", results)
    table = markdown_table(
        ["configuration", f"time/epoch {cost_model} (s)", "samples/s", "peak memory (MB)",
         "eval accuracy (esm2-tiny)", "Δ accuracy (points)"],
        [[r["configuration"], f"{r['cost_epoch_time_s']:.0f}", f"{r['cost_samples_per_second']:.2f}",
          f"{r['cost_peak_memory_mb']:.0f}", f"{r['eval_accuracy']:.3f}", f"{r['accuracy_vs_base_points']:+.1f}"]
         for r in rows],
    )
    header = (f"Machine: {results['machine']}. Gradient accumulation = micro-batches of batch/4, 4 per step "
              f"(same effective batch, steps and learning rate); LoRA r={settings.lora_r}, alpha={settings.lora_alpha}, "
              f"lr {settings.lr_lora:g} (full fine-tuning: lr {settings.lr_full:g}). Cost columns: {cost_model} shape, random weights, batch 8, "
              f"{settings.cost_samples} samples of 100-512 residues truncated at {settings.cost_truncate}; "
              f"time/epoch projected for the {n_train:,} training proteins; peak memory = "
              f"{cost['peak_memory_method'].replace('_', ' ')}. Accuracy: {settings.warm_model} (esm2-tiny pre-trained by "
              f"masked LM on the training sequences) fine-tuned {settings.epochs:g} epochs, truncation {settings.truncate}, "
              f"validated on {n_valid:,} proteins. Command: `{results['command']}`.\n\n")
    (out / "table.md").write_text(header + table + "\n", encoding="utf-8")
    save_bar_chart(out / "chart.png", rows, cost_model)
    return header + table
